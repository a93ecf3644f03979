"""A Dispatch stream that stays open: reconnects with backoff, notices a
dead peer through the server's heartbeats, and stops on request."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional, Sequence

import grpc

from .client import RetryClient, Task
from .errors import RPCError

__all__ = ["DispatchStream"]

log = logging.getLogger("retryd.stream")

# Codes that reconnecting cannot fix: the request or the credentials are wrong.
_FATAL = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


class DispatchStream:
    """Holds one Dispatch stream open until :meth:`stop`.

    ``run(on_task)`` blocks: it calls ``on_task(task)`` for each task, in
    order, on the calling thread (``on_task`` should hand work off quickly:
    while it runs, the stream is not read). A stream that ends or fails is
    reopened after a backoff that starts at ``backoff_initial`` seconds,
    doubles up to ``backoff_max`` and is jittered; it resets once a message
    arrives. A stream silent for ``idle_timeout`` seconds (no task, no
    heartbeat) is presumed dead and reopened. Status codes that a retry
    cannot fix (INVALID_ARGUMENT, UNIMPLEMENTED, UNAUTHENTICATED,
    PERMISSION_DENIED) end ``run`` with :class:`RPCError`.
    """

    def __init__(
        self,
        client: RetryClient,
        phases: Sequence[str],
        *,
        worker_id: str,
        max_in_flight: int = 1,
        lease_duration: Optional[float] = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        idle_timeout: float = 60.0,
        rng: Optional[random.Random] = None,
    ):
        if not phases:
            raise ValueError("at least one phase is required")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._client = client
        self._phases = list(phases)
        self._worker_id = worker_id
        self._max_in_flight = max_in_flight
        self._lease_duration = lease_duration
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._last_message = time.monotonic()
        #: Counts of what happened, for logs and tests.
        self.connects = 0
        self.tasks = 0
        self.heartbeats = 0
        #: Set whenever a stream is open and has delivered its first message.
        self.connected = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop reading: the open stream is canceled and ``run`` returns.
        Tasks the server sent that were not read yet stay leased and lapse."""
        self._stopping.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _watchdog(self, call, done: threading.Event) -> None:
        # Cancels a stream that has been silent too long: a half-open TCP
        # connection (a proxy that dropped it) would otherwise block forever.
        while not done.wait(min(1.0, self._idle_timeout / 4)):
            if time.monotonic() - self._last_message > self._idle_timeout:
                log.warning("dispatch stream silent for %.1fs; reconnecting", self._idle_timeout)
                call.cancel()
                return

    def run(self, on_task: Callable[[Task], None]) -> None:
        delay = self._backoff_initial
        while not self._stopping.is_set():
            call = self._client.dispatch(
                self._phases,
                worker_id=self._worker_id,
                max_in_flight=self._max_in_flight,
                lease_duration=self._lease_duration,
            )
            with self._lock:
                self._call = call
            if self._stopping.is_set():  # stop() ran before the call was visible
                call.cancel()
            self.connects += 1
            self._last_message = time.monotonic()
            done = threading.Event()
            watchdog = threading.Thread(target=self._watchdog, args=(call, done), name="retryd-dispatch-watchdog", daemon=True)
            watchdog.start()
            try:
                for resp in call:
                    self._last_message = time.monotonic()
                    delay = self._backoff_initial
                    self.connected.set()
                    if resp.HasField("task"):
                        self.tasks += 1
                        on_task(Task.from_proto(resp.task))
                    else:
                        self.heartbeats += 1
                log.info("dispatch stream ended by the server; reconnecting")
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if self._stopping.is_set():
                    break
                if code in _FATAL:
                    raise RPCError.from_rpc_error("Dispatch", err) from None
                log.warning(
                    "dispatch stream failed (%s: %s); reconnecting in %.2fs",
                    code.name if code else "?", err.details() if hasattr(err, "details") else err, delay,
                )
            finally:
                done.set()
                self.connected.clear()
                with self._lock:
                    self._call = None
            if self._stopping.wait(self._rng.uniform(delay / 2, delay)):
                break
            delay = min(delay * 2, self._backoff_max)

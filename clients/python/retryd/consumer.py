"""Consumer: run a handler for every due retry retryd dispatches.

The consumer holds a Dispatch stream for its phases (reconnecting with
backoff), runs the handler for each task on a thread pool of
``max_in_flight`` threads, keeps each task's lease alive while the handler
runs, and reports the outcome with the task's lease — the report is the
acknowledgement. On SIGTERM (or :meth:`Consumer.stop`) it stops taking
tasks, lets running handlers finish for up to ``shutdown_timeout`` seconds,
and closes; a handler still running then keeps running until the process
exits, and its lease lapses (retryd counts the attempt as failed and
retries it) — nothing is lost.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import logging
import os
import signal
import socket
import threading
from typing import Any, Callable, Optional, Sequence, Union

from .client import DEFAULT_TARGET, RetryClient, Task
from .leases import LeaseKeeper
from .stream import DispatchStream
from .decorator import Handoff, _output_of

__all__ = ["Consumer"]

log = logging.getLogger("retryd.consumer")

Handler = Callable[[Task], Any]


def default_worker_id() -> str:
    """``host:pid``: what GetJob shows as the worker of an attempt."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Consumer:
    """Run ``handler(task)`` for each due retry of ``phases``.

    The handler's return value decides the report: an exception reports a
    failure (error type, message, HTTP status, Retry-After from the
    exception); a :class:`retryd.Handoff` reports success moving the job to
    another phase; anything else reports success (a dict return value is
    kept as the attempt's output), completing the job unless
    ``next_phase`` is set.

    ``client`` is a :class:`RetryClient` or a target string (default
    ``RETRYD_TARGET`` or ``127.0.0.1:50051``); ``token`` is the bearer token
    of the client made from a target (default ``RETRYD_TOKEN`` or
    ``RETRYD_TOKEN_FILE``, see :class:`RetryClient`). ``max_in_flight`` bounds the
    tasks held at once (the stream's limit and the pool's size).
    ``lease_duration`` (seconds) asks for that lease length (None: the
    server's default); leases are extended halfway through their remaining
    time while the handler runs.
    """

    def __init__(
        self,
        phases: Union[str, Sequence[str]],
        handler: Handler,
        *,
        client: Union[None, str, RetryClient] = None,
        token: Optional[str] = None,
        worker_id: Optional[str] = None,
        max_in_flight: int = 1,
        lease_duration: Optional[float] = None,
        next_phase: Optional[str] = None,
        shutdown_timeout: float = 30.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        idle_timeout: float = 60.0,
    ):
        self.phases = [phases] if isinstance(phases, str) else list(phases)
        if not self.phases:
            raise ValueError("at least one phase is required")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._owns_client = not isinstance(client, RetryClient)
        if self._owns_client:
            self.client = RetryClient(client or os.environ.get("RETRYD_TARGET", DEFAULT_TARGET), token=token)
        elif token is not None:
            raise ValueError("token= is for a client made from a target; give the RetryClient its token instead")
        else:
            self.client = client
        self.handler = handler
        self.worker_id = worker_id or default_worker_id()
        self.max_in_flight = max_in_flight
        self.lease_duration = lease_duration
        self.next_phase = next_phase
        self.shutdown_timeout = shutdown_timeout
        self._stream = DispatchStream(
            self.client,
            self.phases,
            worker_id=self.worker_id,
            max_in_flight=max_in_flight,
            lease_duration=lease_duration,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            idle_timeout=idle_timeout,
        )
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._futures: dict = {}
        self._futures_lock = threading.Lock()
        self._stopped = threading.Event()
        #: Outcome counters: reported successes, failures, and reports that
        #: could not be made (their leases lapse).
        self.succeeded = 0
        self.failed = 0
        self.report_errors = 0

    @property
    def stream(self) -> DispatchStream:
        return self._stream

    def stop(self) -> None:
        """Stop taking tasks; :meth:`run` then drains and returns. Safe from
        any thread and from a signal handler; idempotent."""
        self._stream.stop()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Consume until :meth:`stop` or SIGTERM/SIGINT (handlers are
        installed when called from the main thread and restored on return)."""
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda signum, frame: self.stop())
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="retryd-handler")
        try:
            self._stream.run(self._submit)
        finally:
            self._drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._owns_client:
                self.client.close()
            self._stopped.set()

    def _submit(self, task: Task) -> None:
        # The lease keeper starts now, not when a pool thread frees up: after
        # a reconnect the server may hand out tasks while old ones still run,
        # and a queued task's lease must not lapse while it waits.
        keeper = LeaseKeeper(self.client, task.job_id, task.lease_id, expires_at=task.lease_expires_at, extend_by=self.lease_duration).start()
        future = self._pool.submit(self._handle, task, keeper)
        with self._futures_lock:
            self._futures[future] = keeper
        future.add_done_callback(self._forget)

    def _forget(self, future) -> None:
        # Also runs for a queued task canceled at shutdown: its keeper stops
        # and its lease lapses, so retryd retries it.
        with self._futures_lock:
            keeper = self._futures.pop(future, None)
        if keeper is not None:
            keeper.stop()

    def _handle(self, task: Task, keeper: LeaseKeeper) -> None:
        started_at = _dt.datetime.now(_dt.timezone.utc)
        try:
            result = self.handler(task)
        except Exception as exc:
            keeper.stop()
            try:
                decision = self.client.report_failure(
                    task.job_id, task.phase, task.retry_count, exc,
                    payload=task.payload, lease_id=task.lease_id, started_at=started_at,
                )
                self.failed += 1
                log.info(
                    "job %s %s retry %d failed: %s → %s (%s)",
                    task.job_id, task.phase, task.retry_count, type(exc).__name__, decision.decision, decision.reason,
                )
            except Exception as err:  # the lease lapses and retryd retries it
                self.report_errors += 1
                log.error("reporting the failure of job %s %s retry %d failed: %s", task.job_id, task.phase, task.retry_count, err)
            return
        finally:
            keeper.stop()
        handoff = result if isinstance(result, Handoff) else None
        try:
            self.client.report_success(
                task.job_id, task.phase, task.retry_count,
                payload=task.payload, lease_id=task.lease_id, started_at=started_at,
                next_phase=handoff.next_phase if handoff else self.next_phase,
                next_payload=handoff.next_payload if handoff else None,
                output=handoff.output if handoff else _output_of(result),
            )
            self.succeeded += 1
        except Exception as err:
            self.report_errors += 1
            log.error("reporting the success of job %s %s retry %d failed: %s", task.job_id, task.phase, task.retry_count, err)

    def _drain(self) -> None:
        pool = self._pool
        if pool is None:
            return
        with self._futures_lock:
            pending = set(self._futures)
        if pending:
            log.info("waiting up to %.1fs for %d running task(s)", self.shutdown_timeout, len(pending))
            _, not_done = concurrent.futures.wait(pending, timeout=self.shutdown_timeout)
            if not_done:
                log.warning("%d task(s) still running after %.1fs; their leases will lapse", len(not_done), self.shutdown_timeout)
                with self._futures_lock:
                    keepers = [self._futures.get(f) for f in not_done]
                for keeper in keepers:
                    if keeper is not None:
                        keeper.stop()
        pool.shutdown(wait=False, cancel_futures=True)

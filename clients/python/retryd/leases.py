"""Keeping a dispatched task's lease alive while it runs.

A lease that expires makes retryd record the attempt as failed
(``LeaseExpired``) and schedule the next retry, so a handler that runs
longer than the lease would be run twice. The keeper extends the lease in
the background, halfway through whatever time it has left, until stopped.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from typing import Optional

from .errors import RPCError

__all__ = ["LeaseKeeper"]

log = logging.getLogger("retryd.leases")


class LeaseKeeper:
    """Extends one lease in a daemon thread until :meth:`stop`.

    ``expires_at`` is the lease's current expiry when known (a Dispatch task
    carries it); ``extend_by`` is passed to ExtendLease (None: the server's
    default lease duration). ``min_interval`` bounds how often it calls, in
    seconds. ``lost`` is set once the server says the lease is gone.
    """

    def __init__(
        self,
        client,
        job_id: str,
        lease_id: str,
        *,
        expires_at: Optional[_dt.datetime] = None,
        extend_by: Optional[float] = None,
        min_interval: float = 0.2,
        now=None,
    ):
        self._client = client
        self.job_id = job_id
        self.lease_id = lease_id
        self.expires_at = expires_at
        self._extend_by = extend_by
        self._min_interval = min_interval
        self._now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost = threading.Event()
        self.extensions = 0

    def extend_now(self) -> Optional[_dt.datetime]:
        """Extend once, synchronously; returns the new expiry. Raises
        :class:`RPCError` (``lease_lost`` when the lease is gone)."""
        try:
            expires = self._client.extend_lease(self.job_id, self.lease_id, self._extend_by)
        except RPCError as err:
            if err.lease_lost:
                self.lost.set()
            raise
        self.extensions += 1
        self.expires_at = expires
        return expires

    def _next_wait(self) -> float:
        if self.expires_at is None:
            return max(self._min_interval, 1.0)
        left = (self.expires_at - self._now()).total_seconds()
        return max(self._min_interval, left / 2)

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait()):
            try:
                self.extend_now()
            except RPCError as err:
                if err.lease_lost:
                    log.warning(
                        "lease %s of job %s is no longer held (%s); the attempt's report will be refused",
                        self.lease_id,
                        self.job_id,
                        err.details,
                    )
                    return
                # Transient (retryd unreachable): try again sooner.
                log.warning("extending lease %s of job %s failed: %s", self.lease_id, self.job_id, err)
                self.expires_at = None
            except Exception:  # never let the keeper die silently
                log.exception("extending lease %s of job %s failed", self.lease_id, self.job_id)
                self.expires_at = None

    def start(self) -> "LeaseKeeper":
        self._thread = threading.Thread(target=self._run, name=f"retryd-lease-{self.lease_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop extending (idempotent); the lease then ends with the report or lapses."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> "LeaseKeeper":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

"""RetryClient: the worker's side of ``retryd.v1.RetryService``.

Design points, each for a reason:

* The gRPC channel is opened lazily, on the first call, in the process that
  makes it, and is never used across a ``fork()``. RQ's default worker forks
  a work horse per job; a channel (and its background threads and sockets)
  copied into a child is undefined behaviour in gRPC. The client remembers
  the pid that opened the channel and an ``os.register_at_fork`` hook drops
  the inherited channel in the child, which then opens its own.
* Every unary call carries a deadline (``timeout``); the channel retries
  ``UNAVAILABLE`` through the gRPC service config (``retryPolicy``), which is
  safe because retryd's reports are idempotent per attempt.
* Errors surface as :class:`retryd.errors.RPCError` with the status code.
* A bearer token (``token=``, or ``RETRYD_TOKEN`` / ``RETRYD_TOKEN_FILE``)
  travels as ``authorization: Bearer <token>`` metadata on every call —
  call metadata rather than gRPC call credentials, which grpcio refuses on
  a plaintext channel (a sidecar on localhost). A token file is re-read
  when it changes, so a rotated Kubernetes Secret is picked up without a
  restart. The token is never part of a repr, a log line or an error.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import threading
import time
import unicodedata
import weakref
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from . import describe as _describe
from . import payload as _payload
from .errors import RPCError
from .v1 import admin_pb2, admin_pb2_grpc, retry_pb2, retry_pb2_grpc, types_pb2

__all__ = ["RetryClient", "FailureDecision", "Task", "DEFAULT_TARGET"]

log = logging.getLogger("retryd.client")

#: Where retryd listens when run with no flags.
DEFAULT_TARGET = "127.0.0.1:50051"

#: How often a token file is checked for a new token (seconds): retryd
#: re-reads its own token files as often.
TOKEN_FILE_CHECK_INTERVAL = 5.0


#: The longest worker id retryd accepts, in UTF-8 bytes (server/validate.go).
MAX_WORKER_ID_BYTES = 256


def _check_worker_id(worker_id: str) -> None:
    """Refuse a worker id retryd would refuse (INVALID_ARGUMENT on a stream
    that the consumer would reopen, and be refused again, in a loop)."""
    if not isinstance(worker_id, str):
        raise TypeError(f"worker_id must be a str, not {type(worker_id).__name__}")
    size = len(worker_id.encode("utf-8", "surrogatepass"))
    if size > MAX_WORKER_ID_BYTES:
        raise ValueError(f"worker_id is {size} bytes in UTF-8; retryd accepts at most {MAX_WORKER_ID_BYTES}")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in worker_id):
        raise ValueError("worker_id must be valid UTF-8 without control characters")


def _check_token(token: str, where: str) -> str:
    """The token, stripped; ValueError (never quoting it) when it cannot be
    sent as a header value."""
    token = token.strip()
    if not token:
        raise ValueError(f"{where}: the token is empty")
    if any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise ValueError(f"{where}: a token is printable ASCII without spaces")
    return token


class _TokenFile:
    """A token read from a file and re-read at most every
    ``TOKEN_FILE_CHECK_INTERVAL`` seconds (a small file: reading it is
    cheaper and surer than comparing timestamps). A file that cannot be read
    or holds no token keeps the previous token, so that a half-done rotation
    does not break calls that still work."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._token = self._read()
        self._next_check = time.monotonic() + TOKEN_FILE_CHECK_INTERVAL

    def _read(self) -> str:
        with open(self.path, encoding="ascii", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    return _check_token(line, f"token file {self.path}")
        raise ValueError(f"token file {self.path} holds no token")

    def get(self) -> str:
        now = time.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + TOKEN_FILE_CHECK_INTERVAL
                token = self._read()
                if token != self._token:
                    self._token = token
                    log.info("read a new retryd token from %s", self.path)
            except (OSError, ValueError) as err:
                log.error("cannot re-read the retryd token (%s); the previous one stays in use", err)
            finally:
                self._lock.release()
        return self._token


_UNARY_METHODS = (
    ("retryd.v1.RetryService", "ReportFailure"),
    ("retryd.v1.RetryService", "ReportSuccess"),
    ("retryd.v1.RetryService", "ExtendLease"),
)


def service_config(max_attempts: int = 5, initial_backoff: float = 0.1, max_backoff: float = 2.0) -> str:
    """The gRPC service config JSON: unary calls are retried on UNAVAILABLE
    (retryd restarting, a connection refused) with exponential backoff.
    Dispatch is left out: a stream that broke after its first message cannot
    be retried by gRPC, and the Consumer reconnects it with its own backoff."""
    if not 2 <= max_attempts <= 5:
        raise ValueError("max_attempts must be between 2 and 5 (gRPC caps it at 5)")
    names = [{"service": s, "method": m} for s, m in _UNARY_METHODS]
    names.append({"service": "retryd.v1.AdminService"})
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": max_attempts,
                        "initialBackoff": f"{initial_backoff:.3f}s",
                        "maxBackoff": f"{max_backoff:.3f}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def _duration(seconds: Optional[float]) -> Optional[duration_pb2.Duration]:
    if seconds is None:
        return None
    if isinstance(seconds, _dt.timedelta):
        seconds = seconds.total_seconds()
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(float(seconds) * 1e9)))
    return d


def _timestamp(when: Optional[_dt.datetime]) -> Optional[timestamp_pb2.Timestamp]:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("started_at must be timezone-aware (datetime.now(timezone.utc))")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(_dt.timezone.utc).replace(tzinfo=None))
    return ts


def to_datetime(ts: timestamp_pb2.Timestamp) -> Optional[_dt.datetime]:
    """A protobuf Timestamp as an aware UTC datetime; None when unset (zero)."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return _dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class FailureDecision:
    """retryd's answer to a failure report."""

    #: ``"retry"`` or ``"give_up"``.
    decision: str
    #: Whether the error was classified retryable (it may still be given up
    #: when the retries are used up).
    retryable: bool
    #: The rule that decided, in one sentence.
    reason: str
    #: The retry_count the retry will run with (retry decisions only).
    next_retry_count: int
    #: The delay before the retry in seconds (retry decisions only).
    delay: float
    #: When the retry is due (retry decisions only).
    next_attempt_at: Optional[_dt.datetime]

    @property
    def will_retry(self) -> bool:
        return self.decision == "retry"

    @classmethod
    def from_proto(cls, resp: retry_pb2.ReportFailureResponse) -> "FailureDecision":
        name = {
            types_pb2.DECISION_RETRY: "retry",
            types_pb2.DECISION_GIVE_UP: "give_up",
        }.get(resp.decision, "unspecified")
        return cls(
            decision=name,
            retryable=resp.retryable,
            reason=resp.reason,
            next_retry_count=resp.next_retry_count,
            delay=resp.delay.ToNanoseconds() / 1e9 if resp.HasField("delay") else 0.0,
            next_attempt_at=to_datetime(resp.next_attempt_at) if resp.HasField("next_attempt_at") else None,
        )


@dataclasses.dataclass(frozen=True)
class Task:
    """A due retry handed out by ``Dispatch``. Report it (success or failure)
    with its ``lease_id``: the report is the acknowledgement."""

    job_id: str
    phase: str
    retry_count: int
    payload: Mapping[str, Any]
    labels: Mapping[str, str]
    lease_id: str
    lease_expires_at: Optional[_dt.datetime]
    due_at: Optional[_dt.datetime]
    cycle: int

    @classmethod
    def from_proto(cls, t: types_pb2.Task) -> "Task":
        return cls(
            job_id=t.job_id,
            phase=t.phase,
            retry_count=t.retry_count,
            payload=_payload.from_struct(t.payload),
            labels=dict(t.labels),
            lease_id=t.lease_id,
            lease_expires_at=to_datetime(t.lease_expires_at),
            due_at=to_datetime(t.due_at),
            cycle=t.cycle,
        )


# Clients alive in this process, so that the fork hook can reset them.
_clients: "weakref.WeakSet[RetryClient]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_parent_channel()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RetryClient:
    """A client of retryd's RetryService (and the read side of AdminService).

    ``target`` is a gRPC target (``"127.0.0.1:50051"``, ``"dns:///retryd:50051"``,
    ``"unix:///run/retryd.sock"``). ``timeout`` is the deadline of each call
    in seconds, the channel's retries included. ``credentials`` selects TLS
    (default: plaintext, for a sidecar on localhost). ``max_attempts`` is the
    number of tries of a call that fails with UNAVAILABLE (2–5).
    ``metadata`` is sent with every call. ``token`` is a bearer token sent
    as ``authorization: Bearer <token>`` with every call, or ``token_file``
    a file whose first line that is not blank or a ``#`` comment holds it
    (re-read every few seconds, so a rotated Secret is picked up); by
    default ``RETRYD_TOKEN``, else ``RETRYD_TOKEN_FILE``; ``token=""`` sends none.
    A worker token suffices for everything here but :meth:`get_job`, which
    is an AdminService call and needs an admin token.

    A client may be shared by threads. It is safe to create before a fork:
    each process opens its own channel on first use.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        max_attempts: int = 5,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        options: Sequence[Tuple[str, Any]] = (),
        metadata: Sequence[Tuple[str, str]] = (),
        token: Optional[str] = None,
        token_file: Optional[str] = None,
    ):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.timeout = float(timeout)
        self._credentials = credentials
        self._options = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(max_attempts, initial_backoff, max_backoff)),
            *options,
        ]
        self._metadata = tuple(metadata)
        self._token: Optional[str] = None
        self._token_file: Optional[_TokenFile] = None
        if token is not None and token_file is not None:
            raise ValueError("give token= or token_file=, not both")
        if token_file is not None:
            self._token_file = _TokenFile(token_file)
        elif token is None:
            if os.environ.get("RETRYD_TOKEN"):
                self._token = _check_token(os.environ["RETRYD_TOKEN"], "RETRYD_TOKEN")
            elif os.environ.get("RETRYD_TOKEN_FILE"):
                self._token_file = _TokenFile(os.environ["RETRYD_TOKEN_FILE"])
        elif token:
            self._token = _check_token(token, "token")
        if (self._token or self._token_file) and any(k.lower() == "authorization" for k, _ in self._metadata):
            raise ValueError("give the token either as token= (or RETRYD_TOKEN) or as authorization metadata, not both")
        self._lock = threading.Lock()
        self._pid: Optional[int] = None
        self._channel: Optional[grpc.Channel] = None
        self._retry: Optional[retry_pb2_grpc.RetryServiceStub] = None
        self._admin: Optional[admin_pb2_grpc.AdminServiceStub] = None
        # Channels inherited through fork are kept referenced, never closed
        # or collected in the child: their threads and sockets belong to the
        # parent.
        self._inherited: list = []
        _clients.add(self)

    # -- channel management -------------------------------------------------

    def _forget_parent_channel(self) -> None:
        # Runs in the child right after fork, single-threaded: the lock may
        # have been held by a parent thread at fork time, so it is replaced.
        self._lock = threading.Lock()
        if self._token_file is not None:
            self._token_file._lock = threading.Lock()
        if self._channel is not None:
            self._inherited.append(self._channel)
        self._channel = self._retry = self._admin = None
        self._pid = None

    def _ensure(self) -> None:
        pid = os.getpid()
        if self._channel is not None and self._pid == pid:
            return
        with self._lock:
            if self._channel is not None and self._pid != pid:
                # Forked without the hook (exotic fork paths): same rule.
                self._inherited.append(self._channel)
                self._channel = None
            if self._channel is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(self.target, options=self._options)
                else:
                    channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
                self._retry = retry_pb2_grpc.RetryServiceStub(channel)
                self._admin = admin_pb2_grpc.AdminServiceStub(channel)
                self._pid = pid
                self._channel = channel

    @property
    def retry_stub(self) -> retry_pb2_grpc.RetryServiceStub:
        """The generated RetryService stub on this process's channel."""
        self._ensure()
        return self._retry  # type: ignore[return-value]

    @property
    def admin_stub(self) -> admin_pb2_grpc.AdminServiceStub:
        """The generated AdminService stub on this process's channel."""
        self._ensure()
        return self._admin  # type: ignore[return-value]

    def call_metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The metadata every call carries (the token's authorization header
        included): pass it to calls made on :attr:`retry_stub` or
        :attr:`admin_stub` directly."""
        token = self._token_file.get() if self._token_file is not None else self._token
        if not token:
            return self._metadata
        return self._metadata + (("authorization", "Bearer " + token),)

    @property
    def has_token(self) -> bool:
        """Whether calls carry a bearer token."""
        return bool(self._token or self._token_file)

    def close(self) -> None:
        """Close this process's channel (a later call opens a new one)."""
        with self._lock:
            channel, self._channel = self._channel, None
            self._retry = self._admin = None
            if channel is not None and self._pid == os.getpid():
                channel.close()
            self._pid = None

    def __enter__(self) -> "RetryClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _call(self, method: str, stub_method, request, timeout: Optional[float]):
        try:
            return stub_method(request, timeout=self.timeout if timeout is None else timeout, metadata=self.call_metadata())
        except grpc.RpcError as err:
            raise RPCError.from_rpc_error(method, err) from None

    # -- RetryService -------------------------------------------------------

    def report_failure(
        self,
        job_id: str,
        phase: str,
        retry_count: int,
        exc: BaseException,
        payload: Optional[Mapping[str, Any]] = None,
        labels: Optional[Mapping[str, str]] = None,
        lease_id: Optional[str] = None,
        *,
        started_at: Optional[_dt.datetime] = None,
        retry_after: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> FailureDecision:
        """Report a failed attempt and return retryd's decision.

        The error type (``module.QualName``), message, HTTP status
        (``exc.response.status_code`` or ``exc.status_code``) and Retry-After
        hint are read from ``exc`` (see :mod:`retryd.describe`);
        ``retry_after`` (seconds) overrides the hint. ``payload`` is what the
        retry is dispatched with (None keeps the one retryd stored);
        ``lease_id`` is required when the attempt came from ``Dispatch``.
        Reporting the same attempt again returns the first decision.
        """
        info = _describe.describe_exception(exc)
        hint = info.retry_after if retry_after is None else retry_after
        req = retry_pb2.ReportFailureRequest(
            job_id=job_id,
            phase=phase,
            retry_count=int(retry_count),
            error_type=info.error_type,
            error_message=info.error_message,
            http_status=info.http_status,
            labels=dict(labels or {}),
            lease_id=lease_id or "",
        )
        struct = _payload.to_struct(payload)
        if struct is not None:
            req.payload.CopyFrom(struct)
        if hint is not None:
            req.retry_after.CopyFrom(_duration(hint))
        if started_at is not None:
            req.started_at.CopyFrom(_timestamp(started_at))
        resp = self._call("ReportFailure", self.retry_stub.ReportFailure, req, timeout)
        return FailureDecision.from_proto(resp)

    def report_success(
        self,
        job_id: str,
        phase: str,
        retry_count: int,
        payload: Optional[Mapping[str, Any]] = None,
        labels: Optional[Mapping[str, str]] = None,
        lease_id: Optional[str] = None,
        *,
        next_phase: Optional[str] = None,
        next_payload: Optional[Mapping[str, Any]] = None,
        output: Optional[Mapping[str, Any]] = None,
        started_at: Optional[_dt.datetime] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """Report a successful attempt. With ``next_phase`` the job moves on
        to that phase (``next_payload`` is kept so an operator can re-drive
        it); without it the job is completed. Returns the job's state name
        afterwards (``"JOB_STATE_COMPLETED"``, ``"JOB_STATE_PROCESSING"``)."""
        req = retry_pb2.ReportSuccessRequest(
            job_id=job_id,
            phase=phase,
            retry_count=int(retry_count),
            lease_id=lease_id or "",
            next_phase=next_phase or "",
            labels=dict(labels or {}),
        )
        for field, value in (("payload", payload), ("next_payload", next_payload), ("output", output)):
            struct = _payload.to_struct(value)
            if struct is not None:
                getattr(req, field).CopyFrom(struct)
        if started_at is not None:
            req.started_at.CopyFrom(_timestamp(started_at))
        resp = self._call("ReportSuccess", self.retry_stub.ReportSuccess, req, timeout)
        return types_pb2.JobState.Name(resp.state)

    def extend_lease(
        self,
        job_id: str,
        lease_id: str,
        extend_by: Optional[float] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Optional[_dt.datetime]:
        """Push a held lease's expiry to ``extend_by`` seconds from now (None:
        the server's default lease duration). Returns the new expiry. Raises
        :class:`RPCError` with ``lease_lost`` set when the lease is gone."""
        req = retry_pb2.ExtendLeaseRequest(job_id=job_id, lease_id=lease_id)
        if extend_by is not None:
            req.extend_by.CopyFrom(_duration(extend_by))
        resp = self._call("ExtendLease", self.retry_stub.ExtendLease, req, timeout)
        return to_datetime(resp.lease_expires_at)

    def dispatch(
        self,
        phases: Sequence[str],
        *,
        worker_id: str,
        max_in_flight: int = 1,
        lease_duration: Optional[float] = None,
    ) -> Iterator[retry_pb2.DispatchResponse]:
        """Open a Dispatch stream (the raw call: iterate it, ``cancel()`` it).

        It has no deadline — it is meant to stay open — and is not retried by
        the channel; :class:`retryd.Consumer` watches it with the server's
        heartbeats and reconnects with backoff."""
        _check_worker_id(worker_id)
        req = retry_pb2.DispatchRequest(phases=list(phases), worker_id=worker_id, max_in_flight=int(max_in_flight))
        if lease_duration is not None:
            req.lease_duration.CopyFrom(_duration(lease_duration))
        return self.retry_stub.Dispatch(req, metadata=self.call_metadata())

    # -- AdminService (read side, for workers and tests) ----------------------

    def get_job(self, job_id: str, *, timeout: Optional[float] = None) -> types_pb2.Job:
        """The job with every attempt (``AdminService.GetJob``)."""
        resp = self._call("GetJob", self.admin_stub.GetJob, admin_pb2.GetJobRequest(job_id=job_id), timeout)
        return resp.job

    def __repr__(self) -> str:
        return f"RetryClient({self.target!r}, timeout={self.timeout})"

"""``@retryd.task``: report every attempt of a task function to retryd.

The decorated function runs as before (in an RQ work horse, a Celery
worker, a thread); when it returns, the decorator reports success, and when
it raises, it reports the failure — retryd then decides whether and when to
retry, and hands the retry back through ``Dispatch`` (the RQ bridge
re-enqueues it). The function's keyword arguments are the payload the retry
is dispatched with, so a task must be callable again from its kwargs alone.

Two keyword arguments are control, not payload:

``retry_count``
    0 for the original attempt (the default when absent), otherwise the
    retry_count retryd dispatched. Passed to the function only if it
    declares a ``retry_count`` parameter.
``lease_id``
    Set when the attempt came from ``Dispatch`` (the bridge passes it); the
    reports name it. Passed to the function only if it declares a
    ``lease_id`` parameter — never through ``**kwargs``, so that a task
    which forwards its kwargs to the next phase does not forward a lease.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import functools
import inspect
import logging
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import payload as _payload
from .client import DEFAULT_TARGET, FailureDecision, RetryClient
from .errors import RPCError
from .leases import LeaseKeeper

__all__ = ["task", "Handoff", "default_client", "CONTROL_KWARGS"]

log = logging.getLogger("retryd.task")

#: Keyword arguments the decorator consumes (not part of the payload).
CONTROL_KWARGS = ("retry_count", "lease_id")

_default_lock = threading.Lock()
_default: Optional[RetryClient] = None


def default_client() -> RetryClient:
    """The process-wide client used when a task names none: target from
    ``RETRYD_TARGET`` (default ``127.0.0.1:50051``, the sidecar), deadline
    from ``RETRYD_TIMEOUT`` seconds (default 10). Created on first use; the
    client itself re-opens its channel after a fork."""
    global _default
    with _default_lock:
        if _default is None:
            _default = RetryClient(
                os.environ.get("RETRYD_TARGET", DEFAULT_TARGET),
                timeout=float(os.environ.get("RETRYD_TIMEOUT", "10")),
            )
        return _default


@dataclasses.dataclass(frozen=True)
class Handoff:
    """Return this from a task to move the job on to another phase.

    ``next_payload`` is kept by retryd so that an operator can re-drive that
    phase; ``output`` is kept in the attempt's history; the decorated call
    returns ``result``.
    """

    next_phase: str
    next_payload: Optional[Mapping[str, Any]] = None
    output: Optional[Mapping[str, Any]] = None
    result: Any = None


ClientSpec = Union[None, str, RetryClient, Callable[[], RetryClient]]


def _resolve_client(spec: ClientSpec) -> RetryClient:
    if spec is None:
        return default_client()
    if isinstance(spec, RetryClient):
        return spec
    if isinstance(spec, str):
        return _client_for_target(spec)
    return spec()


_by_target: dict = {}


def _client_for_target(target: str) -> RetryClient:
    with _default_lock:
        client = _by_target.get(target)
        if client is None:
            client = _by_target[target] = RetryClient(target)
        return client


def task(
    phase: str,
    *,
    client: ClientSpec = None,
    job_id_arg: str = "job_id",
    labels: Union[Iterable[str], Callable[[Mapping[str, Any]], Mapping[str, str]]] = (),
    next_phase: Optional[str] = None,
    reraise: bool = False,
    extend_lease: bool = True,
    lease_extension: Optional[float] = None,
    on_give_up: Optional[Callable[[BaseException, "FailureDecision", Mapping[str, Any]], Any]] = None,
):
    """Decorate a task function of ``phase`` (a plain or an ``async`` function).

    ``client``: a :class:`RetryClient`, a target string, a zero-argument
    callable returning a client, or None for :func:`default_client`.

    ``job_id_arg``: the keyword argument that holds retryd's job id (the
    specification's tasks use ``pipeline_job_id``).

    ``labels``: names of keyword arguments kept as the job's labels
    (``("document_id", "source_name")``), or a callable from the payload to
    a label dict.

    ``next_phase``: report success as a hand-off to this phase instead of
    completing the job (a returned :class:`Handoff` overrides it).

    ``reraise``: what to do with the task's exception once the failure was
    reported. ``False`` (default) swallows it and returns None: retryd now
    owns the retry, and re-raising would make RQ count a handled attempt as
    its own failure (and run RQ's retry, if configured, on top of retryd's).
    ``True`` re-raises it after reporting, for runners that must see the
    failure. Either way, an exception *while reporting* (retryd unreachable
    after the channel's retries, the report refused) always propagates,
    chained to the task's error, so that the outcome is never lost silently.

    ``extend_lease``: for a dispatched attempt (``lease_id`` given), extend
    the lease once before running — if retryd says the lease is gone (it
    expired while the task waited in the queue and the attempt was already
    recorded as failed and rescheduled), the function is not run at all,
    since running it now would run that attempt twice — and then keep
    extending it in the background while the function runs.
    ``lease_extension`` is the seconds each extension grants (None: the
    server's default lease duration).

    ``on_give_up(exc, decision, payload)``: called after retryd decided to
    give up (a non-retryable error, or the retries are used up), for the
    application's own bookkeeping (marking its job row failed). retryd
    itself keeps the final error, its type and the retry count (GetJob).
    """
    if not phase:
        raise ValueError("phase is required")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        params = sig.parameters
        declared = {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        opts = _Options(phase, client, job_id_arg, labels, next_phase, reraise, extend_lease, lease_extension, on_give_up)

        if inspect.iscoroutinefunction(fn):
            # RQ (1.10+) runs coroutine functions in an event loop; the
            # blocking gRPC reports go to a thread so the loop keeps running.
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                attempt = _Attempt(fn, sig, params, declared, opts, args, kwargs)
                if not await asyncio.to_thread(attempt.begin):
                    return None
                try:
                    result = await fn(**attempt.call_kwargs)
                except Exception as exc:
                    await asyncio.to_thread(attempt.failed, exc)
                    if reraise:
                        raise
                    return None
                except BaseException:  # cancelled: no report, the lease lapses
                    await asyncio.to_thread(attempt.stop_keeper)
                    raise
                return await asyncio.to_thread(attempt.succeeded, result)

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                attempt = _Attempt(fn, sig, params, declared, opts, args, kwargs)
                if not attempt.begin():
                    return None
                try:
                    result = fn(**attempt.call_kwargs)
                except Exception as exc:
                    attempt.failed(exc)
                    if reraise:
                        raise
                    return None
                finally:
                    attempt.stop_keeper()
                return attempt.succeeded(result)

            wrapper = sync_wrapper
        wrapper.retryd_phase = phase  # type: ignore[attr-defined]
        wrapper.retryd_job_id_arg = job_id_arg  # type: ignore[attr-defined]
        return wrapper

    return decorate


@dataclasses.dataclass(frozen=True)
class _Options:
    phase: str
    client: ClientSpec
    job_id_arg: str
    labels: Any
    next_phase: Optional[str]
    reraise: bool
    extend_lease: bool
    lease_extension: Optional[float]
    on_give_up: Optional[Callable[..., Any]]


class _Attempt:
    """One call of a decorated task: its payload, its lease, its report."""

    def __init__(self, fn, sig, params, declared, opts: _Options, args, kwargs):
        self.fn = fn
        self.opts = opts
        kwargs = dict(kwargs)
        self.retry_count = int(kwargs.pop("retry_count", 0) or 0)
        self.lease_id = kwargs.pop("lease_id", None) or None
        # Positional arguments are bound to their names: the payload is
        # keyword arguments only, so that a retry can be called with it.
        bound = sig.bind_partial(*args, **kwargs)
        call_kwargs: dict = {}
        for name, value in bound.arguments.items():
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{fn.__qualname__}: retryd tasks take keyword arguments only, not *{name}")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                call_kwargs.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{fn.__qualname__}: positional-only parameter {name} cannot be a payload key")
            else:
                call_kwargs[name] = value
        self.payload = _payload.check_payload(call_kwargs)
        job_id = self.payload.get(opts.job_id_arg)
        if job_id is None or job_id == "":
            raise TypeError(f"{fn.__qualname__}: the job id keyword argument {opts.job_id_arg!r} is missing")
        self.job_id = str(job_id)
        self.labels = _labels(opts.labels, self.payload)
        if "retry_count" in declared:
            call_kwargs["retry_count"] = self.retry_count
        if "lease_id" in declared:
            call_kwargs["lease_id"] = self.lease_id
        self.call_kwargs = call_kwargs
        self.client = _resolve_client(opts.client)
        self.keeper: Optional[LeaseKeeper] = None
        self.started_at: Optional[_dt.datetime] = None

    def begin(self) -> bool:
        """Take hold of the lease; False means: do not run."""
        if self.lease_id and self.opts.extend_lease:
            keeper = LeaseKeeper(self.client, self.job_id, self.lease_id, extend_by=self.opts.lease_extension)
            try:
                keeper.extend_now()
            except RPCError as err:
                if err.lease_lost:
                    log.warning(
                        "not running %s for job %s (%s retry %d): its lease %s is no longer held (%s)",
                        self.fn.__qualname__, self.job_id, self.opts.phase, self.retry_count, self.lease_id, err.details,
                    )
                    return False
                log.warning("could not extend lease %s before running: %s", self.lease_id, err)
            self.keeper = keeper.start()
        self.started_at = _dt.datetime.now(_dt.timezone.utc)
        return True

    def stop_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()

    def failed(self, exc: BaseException) -> None:
        self.stop_keeper()
        try:
            decision = self.client.report_failure(
                self.job_id, self.opts.phase, self.retry_count, exc,
                payload=self.payload, labels=self.labels, lease_id=self.lease_id, started_at=self.started_at,
            )
        except RPCError as report_err:
            raise report_err from exc  # both stay visible in RQ's failed job
        log.info(
            "%s failed for job %s (%s retry %d): %s: %s -> %s (%s)",
            self.fn.__qualname__, self.job_id, self.opts.phase, self.retry_count, type(exc).__name__, exc,
            decision.decision, decision.reason,
        )
        if not decision.will_retry and self.opts.on_give_up is not None:
            self.opts.on_give_up(exc, decision, self.payload)

    def succeeded(self, result: Any) -> Any:
        self.stop_keeper()
        handoff = result if isinstance(result, Handoff) else None
        self.client.report_success(
            self.job_id, self.opts.phase, self.retry_count,
            payload=self.payload, labels=self.labels, lease_id=self.lease_id, started_at=self.started_at,
            next_phase=handoff.next_phase if handoff else self.opts.next_phase,
            next_payload=handoff.next_payload if handoff else None,
            output=handoff.output if handoff else _output_of(result),
        )
        return handoff.result if handoff else result


def _labels(spec, payload: Mapping[str, Any]) -> Optional[dict]:
    if callable(spec):
        return {str(k): str(v) for k, v in dict(spec(payload)).items()}
    names = list(spec)
    if not names:
        return None
    return {name: str(payload[name]) for name in names if payload.get(name) is not None}


def _output_of(result: Any) -> Optional[Mapping[str, Any]]:
    """A task's return value is kept as the attempt's output when it is a
    JSON-like dict; anything else is returned to the caller but not sent."""
    if not isinstance(result, Mapping):
        return None
    try:
        return _payload.check_payload(result)
    except _payload.PayloadError as err:
        log.debug("task result not kept as output: %s", err)
        return None

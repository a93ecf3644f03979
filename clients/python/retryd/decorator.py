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

import dataclasses
import datetime as _dt
import functools
import inspect
import logging
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from . import payload as _payload
from .client import DEFAULT_TARGET, RetryClient
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
):
    """Decorate a task function of ``phase``.

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
    """
    if not phase:
        raise ValueError("phase is required")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        params = sig.parameters
        declared = {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            retry_count = int(kwargs.pop("retry_count", 0) or 0)
            lease_id = kwargs.pop("lease_id", None) or None
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
            payload = _payload.check_payload(call_kwargs)
            if job_id_arg not in payload or payload[job_id_arg] in (None, ""):
                raise TypeError(f"{fn.__qualname__}: the job id keyword argument {job_id_arg!r} is missing")
            job_id = str(payload[job_id_arg])
            job_labels = _labels(labels, payload)
            if "retry_count" in declared:
                call_kwargs["retry_count"] = retry_count
            if "lease_id" in declared:
                call_kwargs["lease_id"] = lease_id

            retryd = _resolve_client(client)
            keeper = None
            if lease_id and extend_lease:
                keeper = LeaseKeeper(retryd, job_id, lease_id, extend_by=lease_extension)
                try:
                    keeper.extend_now()
                except RPCError as err:
                    if err.lease_lost:
                        log.warning(
                            "not running %s for job %s (%s retry %d): its lease %s is no longer held (%s)",
                            fn.__qualname__, job_id, phase, retry_count, lease_id, err.details,
                        )
                        return None
                    log.warning("could not extend lease %s before running: %s", lease_id, err)
                keeper.start()
            started_at = _dt.datetime.now(_dt.timezone.utc)
            try:
                result = fn(**call_kwargs)
            except Exception as exc:
                if keeper is not None:
                    keeper.stop()
                decision = retryd.report_failure(
                    job_id, phase, retry_count, exc,
                    payload=payload, labels=job_labels, lease_id=lease_id, started_at=started_at,
                )
                log.info(
                    "%s failed for job %s (%s retry %d): %s: %s → %s (%s)",
                    fn.__qualname__, job_id, phase, retry_count, type(exc).__name__, exc,
                    decision.decision, decision.reason,
                )
                if reraise:
                    raise
                return None
            finally:
                if keeper is not None:
                    keeper.stop()
            handoff = result if isinstance(result, Handoff) else None
            retryd.report_success(
                job_id, phase, retry_count,
                payload=payload, labels=job_labels, lease_id=lease_id, started_at=started_at,
                next_phase=handoff.next_phase if handoff else next_phase,
                next_payload=handoff.next_payload if handoff else None,
                output=handoff.output if handoff else _output_of(result),
            )
            return handoff.result if handoff else result

        wrapper.retryd_phase = phase  # type: ignore[attr-defined]
        wrapper.retryd_job_id_arg = job_id_arg  # type: ignore[attr-defined]
        return wrapper

    return decorate


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

"""Turn a Python exception into the fields of a ``ReportFailure`` request.

retryd classifies a failure by its error type name and HTTP status (the
specification's rules: a non-retryable type gives up, an HTTP 4xx other than
429 gives up, a 5xx or a retryable type retries, anything else retries), so
what this module extracts decides whether a job is retried.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import time
from typing import Any, Optional

__all__ = ["ErrorInfo", "describe_exception", "error_type_name", "http_status_of", "retry_after_of"]

# retryd's limits on these fields (server/validate.go, README "Limits"): a
# report beyond them is refused with INVALID_ARGUMENT, which would lose the
# failure, so the client trims instead.
MAX_ERROR_TYPE_BYTES = 256
MAX_ERROR_MESSAGE_BYTES = 64 << 10
MAX_RETRY_AFTER_SECONDS = 7 * 24 * 3600.0

# How far down __cause__ / __context__ the HTTP status and Retry-After are
# looked for: a task that wraps an HTTP error in its own exception
# (`raise ExtractionError(...) from err`) still reports the status.
_MAX_CHAIN = 8


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    """What a failed attempt reports about its exception."""

    #: ``module.QualName`` of the exception class; builtins unqualified.
    error_type: str
    #: ``str(exc)``, or ``repr(exc)`` when that is empty.
    error_message: str
    #: The HTTP status the exception carried; 0 when none.
    http_status: int = 0
    #: The server's Retry-After hint in seconds, or None.
    retry_after: Optional[float] = None


def error_type_name(exc: BaseException) -> str:
    """The exception's qualified class name, e.g.
    ``requests.exceptions.ConnectionError``; builtins such as ``ValueError``
    stay unqualified. retryd matches a qualified name on its last dotted
    component as well as whole, so both forms hit the specification's lists."""
    cls = type(exc)
    module = getattr(cls, "__module__", None) or ""
    qualname = getattr(cls, "__qualname__", None) or cls.__name__
    if module in ("builtins", "__builtin__", ""):
        return qualname
    return f"{module}.{qualname}"


def _status_from(obj: Any) -> int:
    """An HTTP status from one object: ``.response.status_code`` (requests,
    httpx), ``.status_code`` (httpx responses, many SDK errors) or
    ``.status`` (aiohttp, urllib3). Values outside 100–599 are ignored."""
    candidates = []
    response = getattr(obj, "response", None)
    if response is not None:
        candidates.append(getattr(response, "status_code", None))
        candidates.append(getattr(response, "status", None))
    candidates.append(getattr(obj, "status_code", None))
    candidates.append(getattr(obj, "status", None))
    candidates.append(getattr(obj, "code", None) if _looks_like_urllib_http_error(obj) else None)
    for value in candidates:
        if isinstance(value, bool):
            continue
        try:
            status = int(value)  # http.HTTPStatus and str digits too
        except (TypeError, ValueError):
            continue
        if 100 <= status <= 599:
            return status
    return 0


def _looks_like_urllib_http_error(obj: Any) -> bool:
    # urllib.error.HTTPError keeps its status in .code (and .status since 3.9);
    # other exceptions' .code is often an errno or an application code.
    try:
        import urllib.error

        return isinstance(obj, urllib.error.HTTPError)
    except ImportError:  # pragma: no cover - urllib is always there
        return False


def _chain(exc: BaseException):
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def http_status_of(exc: BaseException) -> int:
    """The HTTP status carried by the exception or, failing that, by the
    exception it was raised from; 0 when none."""
    for link in _chain(exc):
        status = _status_from(link)
        if status:
            return status
    return 0


def _headers_of(obj: Any):
    response = getattr(obj, "response", None)
    for holder in (response, obj):
        headers = getattr(holder, "headers", None) if holder is not None else None
        if headers is not None and hasattr(headers, "get"):
            yield headers


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
    """Parse a Retry-After header value: delay-seconds (``"120"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``). Returns seconds from
    ``now`` (never negative), or None when the value is neither."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # Not RFC 9110, but some servers send fractional seconds.
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 850/asctime forms: HTTP dates are GMT
        import datetime as _dt

        when = when.replace(tzinfo=_dt.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def retry_after_of(exc: BaseException, now: Optional[float] = None) -> Optional[float]:
    """The Retry-After hint of the response the exception carries (or the
    exception it was raised from), in seconds; None when there is none."""
    for link in _chain(exc):
        for headers in _headers_of(link):
            try:
                value = headers.get("Retry-After")
                if value is None:
                    value = headers.get("retry-after")
            except Exception:  # a headers object we do not understand
                continue
            seconds = parse_retry_after(value, now)
            if seconds is not None:
                return seconds
    return None


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character
    boundary), saying how much was cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    marker = f" ... [{len(raw)} bytes, truncated]"
    head = raw[: max(0, limit - len(marker.encode()))].decode("utf-8", "ignore")
    return head + marker


def describe_exception(exc: BaseException, now: Optional[float] = None) -> ErrorInfo:
    """Extract the ``ReportFailure`` fields from an exception, within
    retryd's field limits (a 64 KiB message, a 256-byte type name, a
    Retry-After of at most 7 days)."""
    message = str(exc)
    if not message:
        message = repr(exc)
    error_type = error_type_name(exc)
    if len(error_type.encode("utf-8")) > MAX_ERROR_TYPE_BYTES:
        # Keep the end: retryd matches the last dotted component.
        error_type = error_type.encode("utf-8")[-MAX_ERROR_TYPE_BYTES:].decode("utf-8", "ignore")
    retry_after = retry_after_of(exc, now)
    if retry_after is not None:
        retry_after = min(retry_after, MAX_RETRY_AFTER_SECONDS)
    return ErrorInfo(
        error_type=error_type,
        error_message=truncate_utf8(message, MAX_ERROR_MESSAGE_BYTES),
        http_status=http_status_of(exc),
        retry_after=retry_after,
    )

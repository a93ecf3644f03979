"""What a failed attempt reports about its exception decides its retry."""

import email.utils
import urllib.error

import pytest
import requests

from retryd.describe import describe_exception, error_type_name, http_status_of, parse_retry_after, retry_after_of
from rq_tasks import ValidationError, http_error


class Outer:
    class NestedError(Exception):
        pass


class SDKError(Exception):
    """An SDK error that carries the status itself (openai, anthropic, ...)."""

    def __init__(self, message, status_code, headers=None):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}


class HttpxStyleResponse:
    def __init__(self, status_code, headers):
        self.status_code = status_code
        self.headers = headers


class HttpxStyleError(Exception):
    def __init__(self, message, response):
        super().__init__(message)
        self.response = response


@pytest.mark.parametrize(
    "exc, want",
    [
        (ValueError("x"), "ValueError"),
        (ConnectionError("x"), "ConnectionError"),
        (requests.exceptions.ConnectionError("x"), "requests.exceptions.ConnectionError"),
        (requests.exceptions.ReadTimeout("x"), "requests.exceptions.ReadTimeout"),
        (ValidationError("x"), "rq_tasks.ValidationError"),
        (Outer.NestedError("x"), f"{__name__}.Outer.NestedError"),
    ],
)
def test_error_type_is_qualified_except_builtins(exc, want):
    assert error_type_name(exc) == want


def test_message_falls_back_to_repr():
    info = describe_exception(KeyError())
    assert info.error_message == "KeyError()"
    assert describe_exception(ValueError("bad page 3")).error_message == "bad page 3"


@pytest.mark.parametrize(
    "exc, want",
    [
        (http_error(404), 404),
        (http_error(503), 503),
        (SDKError("rate limited", 429), 429),
        (HttpxStyleError("boom", HttpxStyleResponse(502, {})), 502),
        (urllib.error.HTTPError("https://x", 410, "Gone", {}, None), 410),
        (ValueError("no status"), 0),
        (SDKError("nonsense status", 42), 0),
        (SDKError("string status", "500"), 500),
        (requests.exceptions.ConnectionError("refused"), 0),  # .response is None
    ],
)
def test_http_status(exc, want):
    assert http_status_of(exc) == want


def test_http_status_of_the_cause():
    try:
        try:
            raise http_error(429)
        except requests.HTTPError as err:
            raise RuntimeError("extraction failed") from err
    except RuntimeError as wrapped:
        assert http_status_of(wrapped) == 429


def test_retry_after_seconds_and_http_date():
    now = 1_700_000_000.0
    assert retry_after_of(http_error(503, "120"), now) == 120.0
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert retry_after_of(http_error(503, date), now) == pytest.approx(90.0)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert retry_after_of(http_error(503, past), now) == 0.0
    assert retry_after_of(SDKError("slow down", 429, {"retry-after": "7"}), now) == 7.0
    assert retry_after_of(http_error(503), now) is None
    assert retry_after_of(http_error(503, "soon"), now) is None
    assert retry_after_of(ValueError("x"), now) is None


@pytest.mark.parametrize("value, want", [("0", 0.0), (" 5 ", 5.0), ("1.5", 1.5), ("-3", None), ("", None), (None, None), (b"12", 12.0)])
def test_parse_retry_after(value, want):
    assert parse_retry_after(value, 0) == want


def test_describe_exception_fills_everything():
    info = describe_exception(http_error(503, "30"), now=0)
    assert info.error_type == "requests.exceptions.HTTPError"
    assert info.http_status == 503
    assert info.retry_after == 30.0
    assert "503" in info.error_message


def test_fields_are_kept_within_retryd_limits():
    from retryd.describe import MAX_ERROR_MESSAGE_BYTES, MAX_RETRY_AFTER_SECONDS

    info = describe_exception(ValueError("é" * 100_000), now=0)
    assert len(info.error_message.encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert info.error_message.startswith("éé") and info.error_message.endswith("bytes, truncated]")
    assert describe_exception(http_error(503, str(30 * 24 * 3600)), now=0).retry_after == MAX_RETRY_AFTER_SECONDS
    long_cls = type("E" * 300, (Exception,), {"__module__": "pkg.mod"})
    assert describe_exception(long_cls("x")).error_type.endswith("E" * 200)

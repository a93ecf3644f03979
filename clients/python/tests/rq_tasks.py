"""Task functions the RQ workers of the tests run (imported by dotted path).

Each run is recorded in RQ's Redis (``runs:<job id>``, one entry per run,
the retry_count it ran with) so that a test can prove nothing ran twice.
"""

from __future__ import annotations

import os
import time

import redis
import requests

import retryd

_conn = None


def _runs():
    global _conn
    if _conn is None:
        _conn = redis.Redis.from_url(os.environ["RETRYD_TEST_REDIS_URL"])
    return _conn


def record(job_id: str, retry_count: int) -> None:
    _runs().rpush(f"runs:{job_id}", retry_count)


def runs(conn, job_id: str):
    return [int(x) for x in conn.lrange(f"runs:{job_id}", 0, -1)]


class ValidationError(Exception):
    """The specification's non-retryable ValidationError."""


def http_error(status: int, retry_after: str = None) -> requests.HTTPError:
    """A requests.HTTPError as raise_for_status() builds it."""
    resp = requests.Response()
    resp.status_code = status
    resp.url = "https://source.example/doc"
    if retry_after is not None:
        resp.headers["Retry-After"] = retry_after
    return requests.HTTPError(f"{status} Error for url: {resp.url}", response=resp)


@retryd.task(phase="extraction", job_id_arg="pipeline_job_id", labels=("document_id",))
def flaky_extract(pipeline_job_id, document_id, source_location, fail_times=2, work_ms=0, retry_count=0, **kwargs):
    """Fails with ConnectionError while retry_count < fail_times."""
    record(pipeline_job_id, retry_count)
    if work_ms:
        time.sleep(work_ms / 1000)
    if retry_count < fail_times:
        raise ConnectionError(f"{source_location} unreachable (attempt {retry_count})")
    return {"text_length": 42, "retry_count": retry_count}


# The outcome tests bridge one phase per task function, all on one retryd.
@retryd.task(phase="always", job_id_arg="pipeline_job_id")
def always_fails(pipeline_job_id, retry_count=0):
    record(pipeline_job_id, retry_count)
    raise ConnectionError("still down")


@retryd.task(phase="validation", job_id_arg="pipeline_job_id")
def invalid_document(pipeline_job_id, retry_count=0):
    record(pipeline_job_id, retry_count)
    raise ValidationError("document has no pages")


@retryd.task(phase="http", job_id_arg="pipeline_job_id")
def http_failure(pipeline_job_id, status, fail_times=1, retry_count=0):
    """Raises requests.HTTPError(status) while retry_count < fail_times."""
    record(pipeline_job_id, retry_count)
    if retry_count < fail_times:
        raise http_error(status)
    return None


@retryd.task(phase="extraction", job_id_arg="pipeline_job_id", labels=("document_id",))
async def flaky_extract_async(pipeline_job_id, document_id, source_location, fail_times=2, retry_count=0, **kwargs):
    """The specification's task is async; RQ runs coroutine functions too."""
    import asyncio

    record(pipeline_job_id, retry_count)
    await asyncio.sleep(0.001)
    if retry_count < fail_times:
        raise ConnectionError(f"{source_location} unreachable (attempt {retry_count})")
    return {"text_length": 42, "retry_count": retry_count}

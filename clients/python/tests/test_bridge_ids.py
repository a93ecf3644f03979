"""The bridge's deterministic RQ job ids and its duration flags."""

import itertools

import pytest

from retryd.bridge import parse_duration, rq_job_id, sanitize_job_id
from retryd.client import Task


def task(job_id="doc-1", phase="extraction", retry_count=2, cycle=1):
    return Task(job_id=job_id, phase=phase, retry_count=retry_count, payload={}, labels={}, lease_id="l",
                lease_expires_at=None, due_at=None, cycle=cycle)


def test_plain_id_when_rq_accepts_it(rq_redis):
    # RQ 1.13 (Debian 12) accepts any string as a job id.
    conn = rq_redis.client()
    assert rq_job_id(task(), conn) == "doc-1:extraction:2"
    assert rq_job_id(task(cycle=3), conn) == "doc-1:extraction:2:c3"


def test_sanitized_id_when_rq_refuses_it(rq_redis, monkeypatch):
    # RQ 2.1+ refuses ':' (and later anything but [A-Za-z0-9_-]) in set_id.
    from rq.job import Job

    def strict_set_id(self, value):
        if not all(c.isalnum() or c in "_-" for c in value):
            raise ValueError("Job ID must only contain letters, numbers, underscores and dashes")
        self._id = value

    monkeypatch.setattr(Job, "set_id", strict_set_id)
    got = rq_job_id(task(job_id="a:b_c/d"), rq_redis.client())
    assert got == "a_3ab_5fc_2fd_3aextraction_3a2"
    Job(connection=rq_redis.client()).set_id(got)  # accepted


def test_sanitize_is_injective():
    alphabet = ["a", "_", ":", "3", "-", "é", "_3a"]
    seen = {}
    for n in range(1, 4):
        for parts in itertools.product(alphabet, repeat=n):
            raw = "".join(parts)
            out = sanitize_job_id(raw)
            assert all(c.isascii() and (c.isalnum() or c in "_-") for c in out)
            assert seen.setdefault(out, raw) == raw, f"{raw!r} and {seen[out]!r} both map to {out!r}"


@pytest.mark.parametrize("text, want", [("90", 90.0), ("1.5", 1.5), ("250ms", 0.25), ("10m", 600.0), ("1h30m", 5400.0), ("2s", 2.0)])
def test_parse_duration(text, want):
    assert parse_duration(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["", "-1", "10x", "m", "1h 30m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)

"""RetryClient against an in-process fake: request fields, deadlines,
UNAVAILABLE retried by the service config, a channel per process."""

import datetime as dt
import json
import subprocess
import sys
import textwrap

import grpc
import pytest

from conftest import PKG_ROOT, subprocess_env
from fakes import FakeServer
from retryd import RetryClient, RPCError
from retryd.client import service_config
from retryd.payload import from_struct
from rq_tasks import ValidationError, http_error


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.stop()


@pytest.fixture
def client(fake):
    c = RetryClient(fake.target, timeout=3, initial_backoff=0.01, max_backoff=0.05)
    yield c
    c.close()


def test_report_failure_fills_the_request(fake, client):
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    decision = client.report_failure(
        "job-1", "extraction", 2, http_error(503, "30"),
        payload={"pipeline_job_id": "job-1", "page": 3}, labels={"document_id": "d1"}, lease_id="L1", started_at=started,
    )
    assert decision.will_retry and decision.reason == "fake" and decision.next_retry_count == 1
    [req] = fake.service.calls("ReportFailure")
    assert (req.job_id, req.phase, req.retry_count, req.lease_id) == ("job-1", "extraction", 2, "L1")
    assert req.error_type == "requests.exceptions.HTTPError"
    assert req.http_status == 503 and "503" in req.error_message
    assert req.retry_after.ToNanoseconds() == 30 * 10**9
    assert from_struct(req.payload) == {"pipeline_job_id": "job-1", "page": 3}
    assert dict(req.labels) == {"document_id": "d1"}
    assert req.started_at.ToDatetime() == started.replace(tzinfo=None)


def test_report_failure_without_hint_or_payload(fake, client):
    client.report_failure("job-2", "extraction", 0, ValidationError("no pages"))
    [req] = fake.service.calls("ReportFailure")
    assert req.error_type == "rq_tasks.ValidationError" and req.http_status == 0
    assert not req.HasField("retry_after") and not req.HasField("payload") and req.lease_id == ""


def test_report_success_and_handoff(fake, client):
    assert client.report_success("job-1", "extraction", 1, lease_id="L") == "JOB_STATE_COMPLETED"
    state = client.report_success("job-1", "extraction", 1, next_phase="chunking", next_payload={"text_location": "s3://x"}, output={"n": 1})
    assert state == "JOB_STATE_PROCESSING"
    first, second = fake.service.calls("ReportSuccess")
    assert first.lease_id == "L" and not first.next_phase
    assert second.next_phase == "chunking" and from_struct(second.next_payload) == {"text_location": "s3://x"}
    assert from_struct(second.output) == {"n": 1}


def test_every_call_has_a_deadline(fake):
    c = RetryClient(fake.target, timeout=2.5)
    c.report_success("j", "p", 0)
    c.extend_lease("j", "L")
    c.report_failure("j", "p", 0, ValueError("x"), timeout=0.7)
    remaining = {m: fake.service.deadlines[m][0] for m in ("ReportSuccess", "ExtendLease", "ReportFailure")}
    assert 1.5 < remaining["ReportSuccess"] <= 2.6  # the deadline travels rounded up
    assert 1.5 < remaining["ExtendLease"] <= 2.6  # the deadline travels rounded up
    assert 0 < remaining["ReportFailure"] <= 0.8
    c.close()


def test_unavailable_is_retried_by_the_service_config(fake, client):
    fake.service.inject["ReportFailure"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    decision = client.report_failure("job-3", "extraction", 0, ConnectionError("x"))
    assert decision.will_retry
    assert len(fake.service.calls("ReportFailure")) == 3


def test_unavailable_gives_up_after_max_attempts(fake):
    c = RetryClient(fake.target, timeout=3, max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    fake.service.inject["ReportSuccess"] = [grpc.StatusCode.UNAVAILABLE] * 5
    with pytest.raises(RPCError) as err:
        c.report_success("job-4", "extraction", 0)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.service.calls("ReportSuccess")) == 3
    c.close()


def test_other_codes_are_not_retried(fake, client):
    fake.service.inject["ReportSuccess"] = [grpc.StatusCode.FAILED_PRECONDITION]
    with pytest.raises(RPCError) as err:
        client.report_success("job-5", "extraction", 1, lease_id="gone")
    assert err.value.lease_lost and "injected" in err.value.details
    assert len(fake.service.calls("ReportSuccess")) == 1


def test_service_config_shape():
    cfg = json.loads(service_config(4, 0.2, 3))
    [method] = cfg["methodConfig"]
    names = {(n["service"], n.get("method")) for n in method["name"]}
    assert ("retryd.v1.RetryService", "ReportFailure") in names
    assert ("retryd.v1.RetryService", "Dispatch") not in names  # the Consumer reconnects streams itself
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["retryPolicy"]["maxAttempts"] == 4
    with pytest.raises(ValueError):
        service_config(6)


def test_channel_is_lazy(fake):
    c = RetryClient("127.0.0.1:1")  # nothing listens there: nothing is dialled yet
    assert c._channel is None
    c.close()


def test_no_channel_crosses_a_fork(fake):
    # A client used by the parent, then by forked children (RQ's work horses):
    # each child must open its own channel. Run in a subprocess, because
    # this test process hosts a gRPC server, and forking a process with a
    # running gRPC server is unsupported whatever the client does.
    script = textwrap.dedent(
        f"""
        import os, sys
        from retryd import RetryClient
        c = RetryClient({fake.target!r}, timeout=5)
        assert c.report_success("parent", "p", 0) == "JOB_STATE_COMPLETED"
        parent_channel = c._channel
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                ok = c._channel is None  # dropped by the at-fork hook
                ok = ok and c.report_success(f"child-{{i}}", "p", 0) == "JOB_STATE_COMPLETED"
                ok = ok and c._pid == os.getpid() and c._channel is not parent_channel
                os._exit(0 if ok else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"child {{i}} failed"
        assert c._channel is parent_channel
        assert c.report_success("parent-again", "p", 0) == "JOB_STATE_COMPLETED"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), cwd=PKG_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = [r.job_id for r in fake.service.calls("ReportSuccess")]
    assert jobs == ["parent", "child-0", "child-1", "child-2", "parent-again"]


def test_dispatch_refuses_a_worker_id_retryd_would(fake, client):
    for bad, message in [
        ("w" * 257, "257 bytes in UTF-8; retryd accepts at most 256"),
        ("é" * 129, "258 bytes"),
        ("worker\x1b[31m", "control characters"),
        ("lone \ud800 surrogate", "control characters"),
    ]:
        with pytest.raises(ValueError, match=message):
            client.dispatch(["extraction"], worker_id=bad)
    assert not fake.service.calls("Dispatch"), "refused before any call"
    client.dispatch(["extraction"], worker_id="é" * 128).cancel()  # 256 bytes: fine

"""@retryd.task against the in-process fake: what it reports and when."""

import pytest

import retryd
from fakes import FakeServer
from retryd.payload import from_struct
from retryd.v1 import types_pb2


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.stop()


@pytest.fixture
def client(fake):
    c = retryd.RetryClient(fake.target, timeout=3)
    yield c
    c.close()


def test_success_reports_kwargs_as_payload(fake, client):
    seen = {}

    @retryd.task(phase="extraction", client=client, job_id_arg="pipeline_job_id", labels=("document_id",))
    def extract(pipeline_job_id, document_id, source_location, retry_count=0, **kwargs):
        seen.update(retry_count=retry_count, kwargs=kwargs)
        return {"text_length": 12}

    assert extract("job-1", document_id="d1", source_location="s3://a", org_id="o1", retry_count=2, lease_id="L2") == {"text_length": 12}
    # The control kwargs: retry_count reaches the function, lease_id does not leak into **kwargs.
    assert seen == {"retry_count": 2, "kwargs": {"org_id": "o1"}}
    [req] = fake.service.calls("ReportSuccess")
    assert (req.job_id, req.phase, req.retry_count, req.lease_id) == ("job-1", "extraction", 2, "L2")
    assert from_struct(req.payload) == {"pipeline_job_id": "job-1", "document_id": "d1", "source_location": "s3://a", "org_id": "o1"}
    assert dict(req.labels) == {"document_id": "d1"}
    assert from_struct(req.output) == {"text_length": 12}
    assert req.HasField("started_at")
    # A dispatched attempt extends its lease before running.
    [ext] = fake.service.calls("ExtendLease")
    assert ext.lease_id == "L2"


def test_failure_is_reported_and_swallowed_by_default(fake, client):
    @retryd.task(phase="extraction", client=client)
    def extract(job_id, retry_count=0):
        raise ConnectionError("source down")

    assert extract(job_id="job-2") is None
    [req] = fake.service.calls("ReportFailure")
    assert (req.job_id, req.retry_count, req.lease_id) == ("job-2", 0, "")
    assert req.error_type == "ConnectionError" and req.error_message == "source down"
    assert from_struct(req.payload) == {"job_id": "job-2"}
    assert not fake.service.calls("ExtendLease")  # not a dispatched attempt


def test_reraise_option(fake, client):
    @retryd.task(phase="extraction", client=client, reraise=True)
    def extract(job_id):
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        extract(job_id="job-3", retry_count=1)
    assert len(fake.service.calls("ReportFailure")) == 1


def test_a_failed_report_is_never_silent(fake, client):
    import grpc

    fake.service.inject["ReportFailure"] = [grpc.StatusCode.FAILED_PRECONDITION]

    @retryd.task(phase="extraction", client=client)
    def extract(job_id):
        raise ValueError("bad")

    with pytest.raises(retryd.RPCError) as err:
        extract(job_id="job-4")
    assert isinstance(err.value.__cause__, ValueError)


def test_lost_lease_skips_the_run(fake, client):
    ran = []
    fake.service.lease_lost.add("stale")

    @retryd.task(phase="extraction", client=client)
    def extract(job_id, retry_count=0):
        ran.append(retry_count)

    assert extract(job_id="job-5", retry_count=1, lease_id="stale") is None
    assert ran == []
    assert not fake.service.calls("ReportSuccess") and not fake.service.calls("ReportFailure")


def test_long_task_keeps_extending_its_lease(fake, client):
    import time

    @retryd.task(phase="extraction", client=client, lease_extension=0.4)
    def slow(job_id, retry_count=0):
        time.sleep(0.9)

    slow(job_id="job-6", retry_count=1, lease_id="L6")
    # One extension before running, then one roughly every 0.2s (half the 0.4s left).
    assert len(fake.service.calls("ExtendLease")) >= 3
    assert all(r.extend_by.ToNanoseconds() == 400_000_000 for r in fake.service.calls("ExtendLease"))


def test_handoff_moves_the_job_on(fake, client):
    @retryd.task(phase="extraction", client=client)
    def extract(job_id):
        return retryd.Handoff("chunking", next_payload={"job_id": job_id, "text_location": "t"}, result="done")

    assert extract(job_id="job-7") == "done"
    [req] = fake.service.calls("ReportSuccess")
    assert req.next_phase == "chunking" and from_struct(req.next_payload)["text_location"] == "t"


def test_static_next_phase(fake, client):
    @retryd.task(phase="chunking", client=client, next_phase="kg_ingest")
    def chunk(job_id):
        return 3  # not a dict: returned, not kept as output

    assert chunk(job_id="job-8") == 3
    [req] = fake.service.calls("ReportSuccess")
    assert req.next_phase == "kg_ingest" and not req.HasField("output")


def test_bad_calls_fail_before_running(fake, client):
    ran = []

    @retryd.task(phase="extraction", client=client)
    def extract(job_id, when=None, *rest):
        ran.append(1)

    with pytest.raises(TypeError, match="job id"):
        extract(when="x")
    with pytest.raises(TypeError, match="keyword arguments only"):
        extract("j", None, "extra")
    with pytest.raises(retryd.PayloadError, match="payload.when"):
        extract(job_id="j", when=object())
    assert ran == [] and not fake.service.calls("ReportFailure")


def test_default_client_reads_the_environment(monkeypatch):
    from retryd import decorator

    monkeypatch.setattr(decorator, "_default", None)
    monkeypatch.setenv("RETRYD_TARGET", "127.0.0.1:1")
    monkeypatch.setenv("RETRYD_TIMEOUT", "2.5")
    c = retryd.default_client()
    assert (c.target, c.timeout) == ("127.0.0.1:1", 2.5)
    assert retryd.default_client() is c


def test_async_task_is_awaited_before_reporting(fake, client):
    import asyncio

    @retryd.task(phase="extraction", client=client, job_id_arg="pipeline_job_id")
    async def extract(pipeline_job_id, retry_count=0):
        await asyncio.sleep(0.01)
        if retry_count == 0:
            raise ConnectionError("down")
        return {"ok": retry_count}

    assert asyncio.run(extract(pipeline_job_id="job-a")) is None
    assert asyncio.run(extract(pipeline_job_id="job-a", retry_count=1, lease_id="La")) == {"ok": 1}
    [failure] = fake.service.calls("ReportFailure")
    [success] = fake.service.calls("ReportSuccess")
    assert failure.retry_count == 0 and failure.error_type == "ConnectionError"
    assert success.retry_count == 1 and success.lease_id == "La" and from_struct(success.output) == {"ok": 1}


def test_on_give_up_hook(fake, client):
    from retryd.v1 import types_pb2

    gave_up = []
    fake.service.failure_response.decision = types_pb2.DECISION_GIVE_UP

    @retryd.task(phase="extraction", client=client, on_give_up=lambda exc, d, payload: gave_up.append((type(exc), d.decision, payload)))
    def extract(job_id):
        raise ValueError("bad")

    extract(job_id="job-g")
    assert gave_up == [(ValueError, "give_up", {"job_id": "job-g"})]

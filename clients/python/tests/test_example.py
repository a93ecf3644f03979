"""examples/extraction_worker.py — the specification's worker adopted to
retryd — run with stand-ins for the application's own modules (database,
storage, queues) against the in-process fake retryd."""

import asyncio
import importlib.util
import sys
import types

import pytest

import retryd
from conftest import PKG_ROOT
from fakes import FakeServer
from retryd import decorator
from retryd.payload import from_struct
from retryd.v1 import types_pb2


class FakeTable:
    def __init__(self, db, name):
        self.db, self.name, self.op = db, name, None

    def insert(self, data):
        self.op = ("insert", self.name, data)
        return self

    def update(self, data):
        self.op = ("update", self.name, data)
        return self

    def eq(self, column, value):
        self.op = self.op + ((column, value),)
        return self

    def execute(self):
        self.db.ops.append(self.op)
        return types.SimpleNamespace(data=[{"id": f"phase-{len(self.db.ops)}"}])


class FakeSupabase:
    def __init__(self):
        self.ops = []

    def table(self, name):
        return FakeTable(self, name)


@pytest.fixture
def app(monkeypatch):
    """Stand-ins for mentorfy.core.*, then the example module itself."""
    ns = types.SimpleNamespace(db=FakeSupabase(), chunking=[], extract_error=None)

    async def extract_text(location):
        if ns.extract_error:
            raise ns.extract_error
        return "hello world"

    async def store_extracted_text(document_id, text):
        return f"s3://texts/{document_id}.txt"

    modules = {
        "mentorfy": types.ModuleType("mentorfy"),
        "mentorfy.core": types.ModuleType("mentorfy.core"),
        "mentorfy.core.db": types.SimpleNamespace(supabase=ns.db),
        "mentorfy.core.logging": types.SimpleNamespace(logger=types.SimpleNamespace(info=lambda *a: None, error=lambda *a: None)),
        "mentorfy.core.queues": types.SimpleNamespace(enqueue_chunking=lambda *a, **kw: ns.chunking.append((a, kw))),
        "mentorfy.core.storage": types.SimpleNamespace(extract_text=extract_text, store_extracted_text=store_extracted_text),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("extraction_worker_example", PKG_ROOT / "examples" / "extraction_worker.py")
    ns.module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ns.module)
    return ns


@pytest.fixture
def fake(monkeypatch):
    server = FakeServer()
    client = retryd.RetryClient(server.target, timeout=3)
    monkeypatch.setattr(decorator, "_default", client)  # what RETRYD_TARGET would give
    yield server
    client.close()
    server.stop()


def call(app, **kwargs):
    return asyncio.run(app.module.extract_text_task(
        pipeline_job_id="job-1", document_id="doc-1", source_location="s3://in/doc-1.pdf", org_id="org-1", **kwargs))


def test_success_hands_off_to_chunking(app, fake):
    call(app, retry_count=1, lease_id="L1")
    [req] = fake.service.calls("ReportSuccess")
    assert (req.job_id, req.phase, req.retry_count, req.lease_id, req.next_phase) == ("job-1", "extraction", 1, "L1", "chunking")
    assert from_struct(req.payload) == {"pipeline_job_id": "job-1", "document_id": "doc-1",
                                        "source_location": "s3://in/doc-1.pdf", "org_id": "org-1"}
    assert dict(req.labels) == {"document_id": "doc-1"}
    # The next phase gets the application's kwargs, never retryd's control arguments.
    assert app.chunking == [(("job-1", "doc-1", "s3://texts/doc-1.txt"), {"org_id": "org-1"})]
    assert app.db.ops[0][0:2] == ("insert", "pipeline_phase") and app.db.ops[0][2]["retry_count"] == 1


def test_failure_is_recorded_and_reported(app, fake):
    app.extract_error = ConnectionError("source unreachable")
    assert call(app) is None  # handled: retryd owns the retry
    [req] = fake.service.calls("ReportFailure")
    assert req.error_type == "ConnectionError" and req.retry_count == 0 and req.error_message == "source unreachable"
    phase_update = app.db.ops[-1]
    assert phase_update[1] == "pipeline_phase" and phase_update[2]["status"] == "failed"
    assert not app.chunking


def test_give_up_marks_the_application_job_failed(app, fake):
    fake.service.failure_response.decision = types_pb2.DECISION_GIVE_UP
    fake.service.failure_response.reason = "ValidationError is not retryable"
    app.extract_error = ValueError("bad pdf")
    call(app, retry_count=3, lease_id="L3")
    job_update = app.db.ops[-1]
    assert job_update[1] == "pipeline_job" and job_update[2]["status"] == "failed" and job_update[3] == ("id", "job-1")

"""End to end: RQ workers run @retryd.task functions, the real retryd
decides, and the bridge (python3 -m retryd.bridge) re-enqueues due retries
into RQ — the specification's pipeline with retryd in the middle."""

from __future__ import annotations

import signal
import uuid

import pytest
from rq import Queue
from rq.job import Job

from conftest import start_redis, wait_for
from retryd.v1 import types_pb2
from rq_tasks import http_error, runs

COMPLETED = types_pb2.JOB_STATE_COMPLETED
FAILED = types_pb2.JOB_STATE_FAILED
AFAILED = types_pb2.ATTEMPT_STATUS_FAILED
ASUCCEEDED = types_pb2.ATTEMPT_STATUS_SUCCEEDED


class Pipeline:
    """One retryd, one RQ queue, bridges and workers for that queue."""

    def __init__(self, server, rq_redis, procs, queue_name):
        self.server = server
        self.rq_redis = rq_redis
        self.conn = rq_redis.client()
        self.procs = procs
        self.queue = Queue(queue_name, connection=self.conn)
        self.env = {"RETRYD_TARGET": server.target, "RETRYD_TEST_REDIS_URL": rq_redis.url, "RETRYD_TIMEOUT": "5"}
        self.bridges = 0

    def bridge(self, phase: str, task: str, *extra: str):
        self.bridges += 1
        return self.procs(
            f"bridge-{phase}-{self.bridges}",
            ["-m", "retryd.bridge", "--phase", phase, "--rq-queue", self.queue.name, "--task", task,
             "--redis-url", self.rq_redis.url, "--target", self.server.target, "--log-level", "DEBUG", *extra],
            **self.env,
        )

    def worker(self, kind: str = "simple"):
        return self.procs(f"rq-worker-{kind}", ["tests/rq_worker_main.py", self.rq_redis.url, self.queue.name, kind], **self.env)

    def enqueue(self, func: str, **kwargs) -> str:
        """The original attempt, enqueued the way the application already does."""
        self.queue.enqueue(func, **kwargs)
        return kwargs["pipeline_job_id"]

    def runs(self, job_id: str):
        return runs(self.conn, job_id)


@pytest.fixture
def pipeline(start_retryd, rq_redis, procs, tmp_path, request):
    made, redises = [], []

    def make(store: str = "embedded", **retryd_opts) -> Pipeline:
        redis_url = None
        if store == "redis":
            redises.append(start_redis(tmp_path, f"retryd-redis-{len(made)}"))
            redis_url = redises[-1].url
        server = start_retryd(redis_url=redis_url, **retryd_opts)
        p = Pipeline(server, rq_redis, procs, f"q-{request.node.name}-{uuid.uuid4().hex[:6]}")
        made.append(p)
        return p

    yield make
    # Workers and bridges first (a connected client holds up retryd's
    # graceful stop), then retryd, then the Redis it used.
    procs.stop_all()
    for p in made:
        p.server.stop()
    for r in redises:
        r.proc.stop()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def statuses(job):
    return [(a.retry_count, a.status) for a in job.attempts]


@pytest.mark.parametrize(
    "worker_kind, store, task",
    [
        ("simple", "embedded", "rq_tasks.flaky_extract"),
        # RQ's default Worker forks a work horse per job; retryd on its Redis store.
        ("fork", "redis", "rq_tasks.flaky_extract"),
        # The specification's task is async; RQ runs it in an event loop.
        ("fork", "embedded", "rq_tasks.flaky_extract_async"),
    ],
)
def test_flaky_task_completes_after_two_retries(pipeline, worker_kind, store, task):
    p = pipeline(store)
    p.bridge("extraction", task, "--lease-duration", "5s")
    p.worker(worker_kind)
    job_id = p.enqueue(task, pipeline_job_id=new_id("flaky"), document_id="doc-1",
                       source_location="s3://bucket/doc-1.pdf", fail_times=2)

    job = p.server.wait_state(job_id, [COMPLETED, FAILED])

    assert job.state == COMPLETED
    assert statuses(job) == [(0, AFAILED), (1, AFAILED), (2, ASUCCEEDED)]
    assert [a.error_type for a in job.attempts[:2]] == ["ConnectionError", "ConnectionError"]
    assert dict(job.labels) == {"document_id": "doc-1"}
    assert p.runs(job_id) == [0, 1, 2]
    # The retries went through RQ under their deterministic ids, with the lease.
    for rc in (1, 2):
        rq_job = Job.fetch(f"{job_id}:extraction:{rc}", connection=p.conn)
        assert rq_job.kwargs["retry_count"] == rc and rq_job.kwargs["lease_id"]
        assert rq_job.kwargs["source_location"] == "s3://bucket/doc-1.pdf" and rq_job.kwargs["fail_times"] == 2


def test_outcomes_follow_the_specification_rules(pipeline):
    p = pipeline()
    for phase, task in (("always", "rq_tasks.always_fails"), ("validation", "rq_tasks.invalid_document"),
                        ("http", "rq_tasks.http_failure")):
        p.bridge(phase, task, "--lease-duration", "5s")
    p.worker("simple")
    always = p.enqueue("rq_tasks.always_fails", pipeline_job_id=new_id("always"))
    invalid = p.enqueue("rq_tasks.invalid_document", pipeline_job_id=new_id("invalid"))
    not_found = p.enqueue("rq_tasks.http_failure", pipeline_job_id=new_id("http404"), status=404)
    unavailable = p.enqueue("rq_tasks.http_failure", pipeline_job_id=new_id("http503"), status=503)

    job = p.server.wait_state(always, [FAILED, COMPLETED])
    assert job.state == FAILED
    assert statuses(job) == [(0, AFAILED), (1, AFAILED), (2, AFAILED), (3, AFAILED)]
    assert job.total_retries == 3 and job.final_error_type == "ConnectionError"
    assert p.runs(always) == [0, 1, 2, 3]

    job = p.server.wait_state(invalid, [FAILED, COMPLETED])
    assert job.state == FAILED and statuses(job) == [(0, AFAILED)]
    assert job.attempts[0].error_type == "rq_tasks.ValidationError"
    assert job.attempts[0].decision == types_pb2.DECISION_GIVE_UP

    job = p.server.wait_state(not_found, [FAILED, COMPLETED])
    assert job.state == FAILED and statuses(job) == [(0, AFAILED)]
    assert job.attempts[0].http_status == 404 and job.attempts[0].error_type == "requests.exceptions.HTTPError"

    job = p.server.wait_state(unavailable, [FAILED, COMPLETED])
    assert job.state == COMPLETED and statuses(job) == [(0, AFAILED), (1, ASUCCEEDED)]
    assert job.attempts[0].http_status == 503 and job.attempts[0].decision == types_pb2.DECISION_RETRY
    assert p.runs(invalid) == [0] and p.runs(not_found) == [0] and p.runs(unavailable) == [0, 1]


def test_retry_after_hint_delays_the_retry(start_retryd):
    server = start_retryd()
    job_id = new_id("retry-after")
    decision = server.client.report_failure(job_id, "extraction", 0, http_error(503, "3"))
    assert decision.will_retry and decision.delay >= 3.0
    assert server.job(job_id).next_attempt_at.seconds > 0


def test_killing_the_bridge_loses_nothing_and_runs_nothing_twice(pipeline):
    p = pipeline(lease="1s")
    n = 12
    # A short lease, so that attempts the killed bridge received but never
    # enqueued lapse quickly; the task extends it as soon as it starts.
    bridge = p.bridge("extraction", "rq_tasks.flaky_extract", "--lease-duration", "1s", "--max-in-flight", "4")
    p.worker("simple")
    jobs = [p.enqueue("rq_tasks.flaky_extract", pipeline_job_id=new_id(f"kill{i}"), document_id=f"d{i}",
                      source_location="s3://x", fail_times=1, work_ms=40) for i in range(n)]

    def retries_run():
        return sum(1 for j in jobs for rc in p.runs(j) if rc > 0)

    wait_for(lambda: retries_run() >= 2, 30, "the first retries to run through the bridge")
    # Freeze the bridge until retryd has handed it an attempt it could not
    # enqueue (leased, yet absent from RQ), then kill it: the worst moment.
    bridge.send(signal.SIGSTOP)

    def leased_but_not_enqueued():
        for j in jobs:
            job = p.server.job(j)
            if job.lease_id and not Job.exists(f"{j}:extraction:{job.pending_retry_count}", connection=p.conn):
                return j
        return None

    stranded = wait_for(leased_but_not_enqueued, 30, "an attempt leased to the frozen bridge")
    bridge.kill()
    killed_after = retries_run()
    p.bridge("extraction", "rq_tasks.flaky_extract", "--lease-duration", "1s", "--max-in-flight", "4")

    for j in jobs:
        job = p.server.wait_state(j, [COMPLETED, FAILED], timeout=30)
        assert job.state == COMPLETED, f"{j}: {statuses(job)}"
        ran = p.runs(j)
        assert len(ran) == len(set(ran)), f"{j} ran an attempt twice: {ran}"
        # Every run is an attempt retryd recorded, and the last one succeeded.
        recorded = [a.retry_count for a in job.attempts if a.error_type != "LeaseExpired"]
        assert ran == recorded, f"{j}: ran {ran}, recorded {statuses(job)}"
        assert job.attempts[-1].status == ASUCCEEDED
    assert killed_after < n, "the bridge was killed after every retry had already run; the test proved nothing"
    # The stranded attempt was not lost: its lease lapsed, retryd recorded
    # it (LeaseExpired) and dispatched the next retry to the new bridge.
    job = p.server.job(stranded)
    assert "LeaseExpired" in [a.error_type for a in job.attempts], statuses(job)


def test_bridge_stops_cleanly_on_sigterm(pipeline):
    p = pipeline()
    bridge = p.bridge("extraction", "rq_tasks.flaky_extract")
    wait_for(lambda: "bridging retryd" in bridge.log(), 15, "the bridge to start")
    bridge.send(signal.SIGTERM)
    assert bridge.popen.wait(10) == 0, bridge.log()
    assert "bridge stopped: 0 enqueued" in bridge.log()

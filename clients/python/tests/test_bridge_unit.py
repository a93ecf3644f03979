"""RQBridge.handle against a real RQ Redis: one RQ job per attempt, however
often the attempt is handed out."""

import uuid

import pytest
from rq import Queue
from rq.job import Job

from retryd import RetryClient
from retryd.bridge import RQBridge
from retryd.client import Task


@pytest.fixture
def bridge(rq_redis):
    conn = rq_redis.client()
    queue = Queue(f"bridge-unit-{uuid.uuid4().hex[:6]}", connection=conn)
    client = RetryClient("127.0.0.1:1")  # never dialled: handle() talks to Redis only
    b = RQBridge(client, phase="extraction", queue=queue, task_path="rq_tasks.flaky_extract", worker_id="t",
                 enqueue_kwargs={"result_ttl": 60})
    yield b
    client.close()


def task(job_id, lease, retry_count=1, cycle=1):
    return Task(job_id=job_id, phase="extraction", retry_count=retry_count, payload={"pipeline_job_id": job_id, "page": 3},
                labels={}, lease_id=lease, lease_expires_at=None, due_at=None, cycle=cycle)


def test_enqueues_the_attempt_with_payload_retry_count_and_lease(bridge):
    bridge.handle(task("j1", "L1"))
    job = Job.fetch("j1:extraction:1", connection=bridge.queue.connection)
    assert job.func_name == "rq_tasks.flaky_extract"
    assert job.kwargs == {"pipeline_job_id": "j1", "page": 3, "retry_count": 1, "lease_id": "L1"}
    assert job.result_ttl == 60
    assert bridge.queue.job_ids == ["j1:extraction:1"]


def test_redelivery_while_queued_moves_the_lease_without_enqueueing_twice(bridge):
    bridge.handle(task("j2", "L1"))
    bridge.handle(task("j2", "L2"))
    assert bridge.queue.job_ids == ["j2:extraction:1"]
    assert Job.fetch("j2:extraction:1", connection=bridge.queue.connection).kwargs["lease_id"] == "L2"
    assert (bridge.enqueued, bridge.relet, bridge.skipped) == (1, 1, 0)


def test_redelivery_after_start_is_not_run_again(bridge):
    bridge.handle(task("j3", "L1"))
    conn = bridge.queue.connection
    job = Job.fetch("j3:extraction:1", connection=conn)
    bridge.queue.remove(job)  # a worker took it ...
    job.set_status("started")  # ... and runs it
    bridge.handle(task("j3", "L2"))
    assert bridge.queue.job_ids == []
    assert Job.fetch("j3:extraction:1", connection=conn).kwargs["lease_id"] == "L1"
    assert (bridge.enqueued, bridge.relet, bridge.skipped) == (1, 0, 1)


def test_a_redriven_cycle_is_a_new_rq_job(bridge):
    bridge.handle(task("j4", "L1", cycle=1))
    bridge.handle(task("j4", "L9", cycle=2))
    assert bridge.queue.job_ids == ["j4:extraction:1", "j4:extraction:1:c2"]

"""Consumer against the real retryd: due retries run, outcomes decide."""

import signal
import threading
import time
import uuid


import retryd
from conftest import wait_for
from retryd.v1 import types_pb2

COMPLETED = types_pb2.JOB_STATE_COMPLETED
FAILED = types_pb2.JOB_STATE_FAILED


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_in_thread(consumer):
    t = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    return t


def test_consumer_runs_retries_until_success(start_retryd):
    server = start_retryd()
    seen = []

    def handler(task):
        seen.append((task.retry_count, dict(task.payload)))
        if task.retry_count < 2:
            raise ConnectionError("still down")
        return {"pages": 7}

    consumer = retryd.Consumer("extraction", handler, client=server.target, max_in_flight=2)
    t = run_in_thread(consumer)
    job_id = new_id("consumer")
    # The original attempt ran elsewhere and failed: retryd owns it from here.
    decision = server.client.report_failure(job_id, "extraction", 0, ConnectionError("down"), payload={"doc": "d1", "page": 3})
    assert decision.will_retry and decision.next_retry_count == 1

    job = server.wait_state(job_id, [COMPLETED, FAILED])
    consumer.stop()
    t.join(10)
    assert job.state == COMPLETED
    assert [(a.retry_count, a.status) for a in job.attempts] == [
        (0, types_pb2.ATTEMPT_STATUS_FAILED), (1, types_pb2.ATTEMPT_STATUS_FAILED), (2, types_pb2.ATTEMPT_STATUS_SUCCEEDED)]
    assert job.attempts[1].worker_id == consumer.worker_id
    assert seen == [(1, {"doc": "d1", "page": 3}), (2, {"doc": "d1", "page": 3})]


def test_lease_is_extended_for_a_handler_longer_than_the_lease(start_retryd):
    server = start_retryd(lease="1s")
    consumer = retryd.Consumer("extraction", lambda task: time.sleep(2.5), client=server.target,
                               lease_duration=1.0)
    t = run_in_thread(consumer)
    job_id = new_id("long")
    server.client.report_failure(job_id, "extraction", 0, ConnectionError("down"))
    job = server.wait_state(job_id, [COMPLETED, FAILED])
    consumer.stop()
    t.join(10)
    # No LeaseExpired attempt: the 2.5s handler held its 1s lease throughout.
    assert [(a.retry_count, a.error_type) for a in job.attempts] == [(0, "ConnectionError"), (1, "")]
    assert job.state == COMPLETED


def test_sigterm_finishes_running_tasks_and_exits(start_retryd, procs):
    server = start_retryd()
    consumer = procs("consumer", ["tests/consumer_main.py", "extraction", server.target], HANDLER_MS="500")
    job_id = new_id("sigterm")
    server.client.report_failure(job_id, "extraction", 0, ConnectionError("down"))
    wait_for(lambda: f"started {job_id}" in consumer.log(), 15, "the handler to start")
    consumer.send(signal.SIGTERM)
    consumer.popen.wait(15)
    out = consumer.log()
    assert consumer.popen.returncode == 0, out
    assert f"finished {job_id}" in out and "stopped cleanly: 1 succeeded" in out, out
    assert server.job(job_id).state == COMPLETED

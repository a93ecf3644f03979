"""Consumer against the in-process fake: reconnects, max_in_flight, leases."""

import threading
import time

import grpc
import pytest

import retryd
from conftest import wait_for
from fakes import FakeServer, make_task


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.stop()


def run_in_thread(consumer):
    t = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    return t


def test_reconnects_with_backoff_and_reports_with_the_lease(fake):
    fake.service.inject["Dispatch"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    done = []
    consumer = retryd.Consumer("extraction", lambda task: done.append(task), client=retryd.RetryClient(fake.target),
                               backoff_initial=0.01, backoff_max=0.05)
    t = run_in_thread(consumer)
    fake.service.tasks.put(make_task("job-1", retry_count=2, payload={"page": 3}))
    wait_for(lambda: fake.service.calls("ReportSuccess"), 5, "the success report")
    consumer.stop()
    t.join(5)
    assert not t.is_alive()
    assert consumer.stream.connects == 3
    [task] = done
    assert task.payload == {"page": 3} and task.retry_count == 2
    [req] = fake.service.calls("ReportSuccess")
    assert (req.job_id, req.retry_count, req.lease_id) == ("job-1", 2, "lease-job-1-2")
    [dispatch, *_] = fake.service.calls("Dispatch")
    assert list(dispatch.phases) == ["extraction"] and dispatch.max_in_flight == 1


def test_stream_broken_mid_way_is_reopened(fake):
    consumer = retryd.Consumer(["extraction"], lambda task: None, client=retryd.RetryClient(fake.target), backoff_initial=0.01)
    t = run_in_thread(consumer)
    fake.service.tasks.put(make_task("job-a"))
    fake.service.tasks.put(grpc.StatusCode.INTERNAL)
    fake.service.tasks.put(make_task("job-b"))
    wait_for(lambda: len(fake.service.calls("ReportSuccess")) == 2, 5, "both reports")
    consumer.stop()
    t.join(5)
    assert consumer.stream.connects >= 2


def test_silent_stream_is_presumed_dead(fake):
    consumer = retryd.Consumer("extraction", lambda task: None, client=retryd.RetryClient(fake.target),
                               backoff_initial=0.01, idle_timeout=0.2)
    t = run_in_thread(consumer)
    wait_for(lambda: consumer.stream.connects >= 3, 5, "the watchdog to reconnect twice")
    consumer.stop()
    t.join(5)
    assert not t.is_alive()


def test_fatal_codes_end_run(fake):
    fake.service.inject["Dispatch"] = [grpc.StatusCode.INVALID_ARGUMENT]
    consumer = retryd.Consumer("Bad Phase", lambda task: None, client=retryd.RetryClient(fake.target))
    with pytest.raises(retryd.RPCError) as err:
        consumer.run(install_signal_handlers=False)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_max_in_flight_bounds_concurrency(fake):
    cond = threading.Condition()
    running, peak = [0], [0]

    def handler(task):
        with cond:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            cond.notify_all()
            # Hold the slot until the pool is full (or a second passed), so
            # that the peak does not depend on scheduling luck.
            cond.wait_for(lambda: running[0] >= 3, timeout=1.0)
        time.sleep(0.01)
        with cond:
            running[0] -= 1

    consumer = retryd.Consumer("extraction", handler, client=retryd.RetryClient(fake.target), max_in_flight=3)
    t = run_in_thread(consumer)
    for i in range(12):
        fake.service.tasks.put(make_task(f"job-{i}"))
    wait_for(lambda: len(fake.service.calls("ReportSuccess")) == 12, 10, "12 reports")
    consumer.stop()
    t.join(5)
    assert peak[0] == 3
    assert fake.service.calls("Dispatch")[0].max_in_flight == 3


def test_failures_are_reported_with_the_task_payload(fake):
    def handler(task):
        raise ConnectionError("down")

    consumer = retryd.Consumer("extraction", handler, client=retryd.RetryClient(fake.target))
    t = run_in_thread(consumer)
    fake.service.tasks.put(make_task("job-f", retry_count=1, payload={"k": "v"}))
    wait_for(lambda: fake.service.calls("ReportFailure"), 5, "the failure report")
    consumer.stop()
    t.join(5)
    [req] = fake.service.calls("ReportFailure")
    assert req.error_type == "ConnectionError" and req.lease_id == "lease-job-f-1" and req.retry_count == 1
    assert consumer.failed == 1


def test_long_handler_extends_its_lease(fake):
    consumer = retryd.Consumer("extraction", lambda task: time.sleep(0.8), client=retryd.RetryClient(fake.target), lease_duration=0.3)
    t = run_in_thread(consumer)
    fake.service.tasks.put(make_task("job-long", lease_seconds=0.3))
    wait_for(lambda: fake.service.calls("ReportSuccess"), 5, "the report")
    consumer.stop()
    t.join(5)
    extensions = fake.service.calls("ExtendLease")
    assert len(extensions) >= 2, "extended again and again (about every 0.15s) while the 0.8s handler ran"
    assert all(r.lease_id == "lease-job-long-1" for r in extensions)


def test_stop_lets_running_handlers_finish(fake):
    started = threading.Event()

    def handler(task):
        started.set()
        time.sleep(0.3)

    consumer = retryd.Consumer("extraction", handler, client=retryd.RetryClient(fake.target))
    t = run_in_thread(consumer)
    fake.service.tasks.put(make_task("job-s"))
    assert started.wait(5)
    consumer.stop()
    t.join(5)
    assert not t.is_alive()
    assert len(fake.service.calls("ReportSuccess")) == 1

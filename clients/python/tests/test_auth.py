"""Bearer tokens against a retryd that requires them (internal/auth): the
client sends the token on every call, unary and streaming; the roles hold;
the token comes from token=, token_file=, RETRYD_TOKEN or RETRYD_TOKEN_FILE
and a token file is re-read; Consumer, @retryd.task and the RQ bridge pass
it through; a token is never in an error or a repr."""

from __future__ import annotations

import logging
import secrets
import threading
import uuid

import grpc
import pytest
from rq import Queue

import retryd
import retryd.client
from conftest import wait_for
from retryd import RetryClient, RPCError
from retryd.v1 import types_pb2
from rq_tasks import runs

WORKER = "worker-" + secrets.token_hex(16)
WORKER2 = "worker2-" + secrets.token_hex(16)
ADMIN = "admin-" + secrets.token_hex(16)
UNKNOWN = "unknown-" + secrets.token_hex(16)

COMPLETED = types_pb2.JOB_STATE_COMPLETED
FAILED = types_pb2.JOB_STATE_FAILED


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def authd(start_retryd, monkeypatch):
    """A retryd with two worker tokens and one admin token; its helper
    client (wait_state, job) uses the admin token."""
    for name in ("RETRYD_TOKEN", "RETRYD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = start_retryd(env={"RETRYD_WORKER_TOKENS": f"{WORKER},{WORKER2}", "RETRYD_ADMIN_TOKENS": ADMIN})
    server.client.close()
    server.client = RetryClient(server.target, timeout=5, token=ADMIN)
    return server


def fails_with(code, call):
    with pytest.raises(RPCError) as err:
        call()
    assert err.value.code == code, err.value
    for tok in (WORKER, WORKER2, ADMIN, UNKNOWN):
        assert tok not in str(err.value)
    return err.value


def report(client, job_id):
    return client.report_failure(job_id, "extraction", 0, ConnectionError("down"), payload={"doc": job_id})


def test_roles(authd):
    job_id = new_id("roles")
    with RetryClient(authd.target, timeout=5, token=WORKER) as worker:
        assert report(worker, job_id).will_retry
        err = fails_with(grpc.StatusCode.PERMISSION_DENIED, lambda: worker.get_job(job_id))
        assert "needs the admin role" in err.details
    with RetryClient(authd.target, timeout=5, token=WORKER2) as worker2:
        assert report(worker2, job_id).will_retry  # the same report again: the first decision
    with RetryClient(authd.target, timeout=5, token="") as anonymous:
        err = fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: report(anonymous, new_id("anon")))
        assert 'send the header "authorization: Bearer <token>"' in err.details
    with RetryClient(authd.target, timeout=5, token=UNKNOWN) as stranger:
        err = fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: report(stranger, new_id("stranger")))
        assert err.details == "the bearer token is not a valid retryd token"
    # An admin may call both services.
    with RetryClient(authd.target, timeout=5, token=ADMIN) as admin:
        assert report(admin, new_id("admin")).will_retry
        assert admin.get_job(job_id).state == types_pb2.JOB_STATE_PROCESSING


def test_token_from_the_environment(authd, monkeypatch, tmp_path):
    monkeypatch.setenv("RETRYD_TOKEN", WORKER)
    with RetryClient(authd.target, timeout=5) as c:
        assert c.has_token and report(c, new_id("env")).will_retry
    # token="" sends none, whatever the environment says.
    with RetryClient(authd.target, timeout=5, token="") as c:
        assert not c.has_token
        fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: report(c, new_id("none")))
    # RETRYD_TOKEN wins over RETRYD_TOKEN_FILE; the file alone works too.
    path = tmp_path / "token"
    path.write_text(f"# retryd worker token\n\n{WORKER2}\n")
    monkeypatch.setenv("RETRYD_TOKEN_FILE", str(path))
    monkeypatch.setenv("RETRYD_TOKEN", UNKNOWN)
    with RetryClient(authd.target, timeout=5) as c:
        fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: report(c, new_id("both")))
    monkeypatch.delenv("RETRYD_TOKEN")
    with RetryClient(authd.target, timeout=5) as c:
        assert report(c, new_id("file-env")).will_retry


def test_token_file_is_reread(authd, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(retryd.client, "TOKEN_FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "worker.token"
    path.write_text(WORKER + "\n")
    c = RetryClient(authd.target, timeout=5, token_file=str(path))
    assert report(c, new_id("file")).will_retry
    # Rotated to a token retryd does not know: the next call sends it.
    path.write_text(UNKNOWN + "\n")
    fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: report(c, new_id("rotated-bad")))
    path.write_text(WORKER2 + "\n")
    assert report(c, new_id("rotated")).will_retry
    # A broken file (mid-rotation) keeps the token that works.
    with caplog.at_level(logging.ERROR, logger="retryd.client"):
        path.write_text("# nothing yet\n")
        assert report(c, new_id("empty")).will_retry
        path.unlink()
        assert report(c, new_id("gone")).will_retry
    assert "the previous one stays in use" in caplog.text
    for tok in (WORKER, WORKER2, UNKNOWN):
        assert tok not in caplog.text
    c.close()


def test_dispatch_stream_and_consumer_carry_the_token(authd):
    job_id = new_id("consumer")
    seen = []

    def handler(task):
        seen.append(task.retry_count)
        return {"ok": True}

    consumer = retryd.Consumer("extraction", handler, client=authd.target, token=WORKER, max_in_flight=2)
    t = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False}, daemon=True)
    t.start()
    with RetryClient(authd.target, timeout=5, token=WORKER) as worker:
        assert report(worker, job_id).will_retry
    job = authd.wait_state(job_id, [COMPLETED, FAILED])
    consumer.stop()
    t.join(10)
    assert job.state == COMPLETED and seen == [1]


def test_a_refused_token_ends_the_consumer(authd):
    # UNAUTHENTICATED is not retried: the stream cannot fix it by reconnecting.
    consumer = retryd.Consumer("extraction", lambda task: None, client=authd.target, token=UNKNOWN)
    err = fails_with(grpc.StatusCode.UNAUTHENTICATED, lambda: consumer.run(install_signal_handlers=False))
    assert err.method == "Dispatch"
    with pytest.raises(ValueError):
        retryd.Consumer("extraction", lambda task: None, client=authd.client, token=WORKER)


def test_bridge_and_task_with_tokens(authd, rq_redis, procs, tmp_path, request):
    queue = Queue(f"q-{request.node.name}-{uuid.uuid4().hex[:6]}", connection=rq_redis.client())
    worker_token = tmp_path / "worker.token"
    worker_token.write_text(WORKER + "\n")
    worker_token.chmod(0o600)
    env = {"RETRYD_TARGET": authd.target, "RETRYD_TEST_REDIS_URL": rq_redis.url, "RETRYD_TIMEOUT": "5"}
    bridge_args = ["-m", "retryd.bridge", "--phase", "extraction", "--rq-queue", queue.name,
                   "--task", "rq_tasks.flaky_extract", "--redis-url", rq_redis.url, "--target", authd.target,
                   "--lease-duration", "5s"]

    # A bridge with a token retryd does not know stops at once, saying why.
    bad_token = tmp_path / "bad.token"
    bad_token.write_text(UNKNOWN + "\n")
    refused = procs("bridge-refused", [*bridge_args, "--token-file", str(bad_token)], **env)
    assert refused.popen.wait(15) == 1, refused.log()
    assert "retryd refused the bridge's Dispatch stream" in refused.log() and "UNAUTHENTICATED" in refused.log()
    assert UNKNOWN not in refused.log()

    # The bridge reads its token from --token-file; the RQ worker's
    # @retryd.task reports with RETRYD_TOKEN.
    procs("bridge", [*bridge_args, "--token-file", str(worker_token)], **env)
    procs("rq-worker", ["tests/rq_worker_main.py", rq_redis.url, queue.name, "simple"], RETRYD_TOKEN=WORKER, **env)
    job_id = new_id("bridged")
    queue.enqueue("rq_tasks.flaky_extract", pipeline_job_id=job_id, document_id="d", source_location="s3://x", fail_times=1)
    job = authd.wait_state(job_id, [COMPLETED, FAILED], timeout=30)
    assert job.state == COMPLETED
    assert runs(rq_redis.client(), job_id) == [0, 1]


def test_client_checks_and_hides_the_token(monkeypatch, tmp_path):
    monkeypatch.delenv("RETRYD_TOKEN", raising=False)
    monkeypatch.delenv("RETRYD_TOKEN_FILE", raising=False)
    for bad in ("has a space " + WORKER, WORKER + "\x00", "é" + WORKER, "   "):
        with pytest.raises(ValueError) as err:
            RetryClient("127.0.0.1:1", token=bad)
        assert WORKER not in str(err.value)
    with pytest.raises(ValueError):
        RetryClient("127.0.0.1:1", token=WORKER, metadata=[("Authorization", "Bearer x")])
    with pytest.raises(ValueError):
        RetryClient("127.0.0.1:1", token=WORKER, token_file=str(tmp_path / "t"))
    empty = tmp_path / "empty"
    empty.write_text("# no token here\n")
    with pytest.raises(ValueError, match="holds no token"):
        RetryClient("127.0.0.1:1", token_file=str(empty))
    c = RetryClient("127.0.0.1:1", token=" " + WORKER + "\n", metadata=[("x-request-source", "test")])
    assert c.call_metadata() == (("x-request-source", "test"), ("authorization", "Bearer " + WORKER))
    assert WORKER not in repr(c)
    assert RetryClient("127.0.0.1:1").call_metadata() == ()

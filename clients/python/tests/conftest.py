"""Fixtures: a real retryd (built from this checkout), throwaway
redis-servers, the RQ bridge and RQ workers as subprocesses.

Nothing here uses port 6379 or anything outside this machine's loopback:
redis-server listens on a unix socket in a temp dir, retryd on a free port
of 127.0.0.1. Every process a test starts is stopped by the test's
teardown.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import grpc
import pytest

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent  # clients/python
REPO = PKG_ROOT.parent.parent  # the retryd checkout
PYTHON = sys.executable

sys.path[:0] = [p for p in (str(PKG_ROOT), str(HERE)) if p not in sys.path]

from retryd import RetryClient  # noqa: E402
from retryd.v1 import types_pb2  # noqa: E402


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> Dict[str, str]:
    """The environment of the Python subprocesses: this interpreter's
    package path first, so that workers and the bridge import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG_ROOT), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A subprocess whose output goes to a log file, shown on failure."""

    def __init__(self, name: str, argv: List[str], log_dir: Path, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a pod is evicted."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)


@pytest.fixture(scope="session")
def session_tmp():
    # Short paths: a unix socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="retryd-py-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def retryd_binary(session_tmp) -> Path:
    """retryd built from this checkout, once per session."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("the integration tests build retryd: install Go (see go.mod for the version)")
    if not (REPO / "cmd" / "retryd").is_dir():
        pytest.fail(f"cmd/retryd not found under {REPO}: run the tests from a retryd checkout")
    out = session_tmp / "retryd"
    proc = subprocess.run([go, "build", "-o", str(out), "./cmd/retryd"], cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"go build ./cmd/retryd failed:\n{proc.stdout}\n{proc.stderr}")
    return out


class Redis:
    """A throwaway redis-server on a unix socket."""

    def __init__(self, proc: Proc, sock: Path):
        self.proc = proc
        self.sock = sock
        self.url = f"unix://{sock}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(unix_socket_path=str(self.sock), db=db)


def start_redis(dirpath: Path, name: str = "redis") -> Redis:
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if binary is None:
        pytest.fail("redis-server not found: install redis-server (apt-get install redis-server)")
    d = dirpath / name
    d.mkdir(parents=True, exist_ok=True)
    sock = d / "redis.sock"
    proc = Proc(
        name,
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(d)],
        d,
    )
    r = Redis(proc, sock)

    def ready():
        if not proc.alive():
            raise AssertionError(f"redis-server exited:\n{proc.log()}")
        if not sock.exists():
            return False
        try:
            return r.client().ping()
        except Exception:
            return False

    wait_for(ready, 10, "redis-server to answer")
    return r


@pytest.fixture(scope="session")
def rq_redis(session_tmp):
    """RQ's Redis, shared by the session (tests use their own queue names)."""
    r = start_redis(session_tmp, "rq-redis")
    yield r
    r.proc.stop()


def health_serving(target: str, timeout: float = 1.0) -> bool:
    """grpc.health.v1.Health/Check for the whole server, without generated
    health stubs: an empty request, and SERVING is field 1 = 1 (b"\\x08\\x01")."""
    with grpc.insecure_channel(target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        try:
            return check(None, timeout=timeout) == b"\x08\x01"
        except grpc.RpcError:
            return False


class Retryd:
    """A running retryd."""

    def __init__(self, proc: Proc, target: str):
        self.proc = proc
        self.target = target
        self.client = RetryClient(target, timeout=5)

    def job(self, job_id: str) -> types_pb2.Job:
        return self.client.get_job(job_id)

    def wait_state(self, job_id: str, states: Iterable[int], timeout: float = 20.0) -> types_pb2.Job:
        wanted = set(states)

        def check():
            try:
                job = self.client.get_job(job_id)
            except Exception:
                return None
            return job if job.state in wanted else None

        try:
            return wait_for(check, timeout, f"job {job_id} to reach {[types_pb2.JobState.Name(s) for s in wanted]}", 0.02)
        except AssertionError:
            try:
                print(self.client.get_job(job_id))
            except Exception as err:
                print("GetJob:", err)
            raise

    def stop(self) -> None:
        self.client.close()
        self.proc.stop()


@pytest.fixture
def start_retryd(retryd_binary, tmp_path, request):
    """Start retryd with millisecond delays, no jitter, a short lease and
    heartbeat; ``redis_url`` selects the Redis store (else the embedded one)."""
    started: List[Retryd] = []

    def start(*, redis_url: Optional[str] = None, delays: str = "10ms,20ms,30ms", lease: str = "2s",
              heartbeat: str = "1s", env: Optional[Dict[str, str]] = None, extra: Iterable[str] = ()) -> Retryd:
        port = free_port()
        target = f"127.0.0.1:{port}"
        argv = [str(retryd_binary), "--listen", target, "--metrics-listen", "", "--retry-delays", delays,
                "--lease-duration", lease, "--heartbeat-interval", heartbeat, *extra]
        if redis_url:
            argv += ["--redis-url", redis_url]
        else:
            data = tmp_path / f"retryd-data-{len(started)}"
            argv += ["--data-dir", str(data)]
        proc_env = {k: v for k, v in os.environ.items() if not (k.startswith("RETRY") or k.endswith("MAX_RETRIES"))}
        proc_env["RETRY_JITTER"] = "0"
        proc_env.update(env or {})
        proc = Proc(f"retryd-{len(started)}", argv, tmp_path, env=proc_env)
        server = Retryd(proc, target)
        started.append(server)

        def ready():
            if not proc.alive():
                raise AssertionError(f"retryd exited ({proc.popen.returncode}):\n{proc.log()}")
            return health_serving(target, 0.5)

        wait_for(ready, 15, "retryd to report SERVING", 0.05)
        return server

    yield start
    for s in started:
        s.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for s in started:
            print(f"----- {s.proc.name} -----\n{s.proc.log()[-6000:]}")


@pytest.fixture
def procs(tmp_path, request):
    """Start Python subprocesses (bridge, RQ workers, consumers); all are
    stopped at teardown, and their logs printed when the test failed."""
    running: List[Proc] = []

    def start(name: str, argv: List[str], **env: str) -> Proc:
        p = Proc(name, [PYTHON, *argv], tmp_path, env=subprocess_env(**env), cwd=PKG_ROOT)
        running.append(p)
        return p

    def stop_all() -> None:
        for p in running:
            p.stop(timeout=10)

    start.stop_all = stop_all
    yield start
    stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for p in running:
            print(f"----- {p.name} -----\n{p.log()[-6000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)

"""deploy/retryd-worker.yaml: the sidecar's settings are ones retryd accepts
and mean the specification's policy."""

import yaml

from conftest import REPO, Proc, free_port, health_serving, wait_for

MANIFEST = REPO / "deploy" / "retryd-worker.yaml"


def manifest():
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    return docs["ConfigMap"], docs["Deployment"]


def test_retryd_is_a_native_sidecar_with_grpc_probes():
    config, deployment = manifest()
    pod = deployment["spec"]["template"]["spec"]
    [sidecar] = pod["initContainers"]
    assert sidecar["name"] == "retryd" and sidecar["restartPolicy"] == "Always"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["grpc"]["port"] == 50051, probe
    assert config["data"] == {
        "MAX_RETRIES": "3", "RETRY_DELAY_1": "60", "RETRY_DELAY_2": "300", "RETRY_DELAY_3": "900",
        "RETRY_JITTER": "0.1", "EXTRACTION_MAX_RETRIES": "5", "CHUNKING_MAX_RETRIES": "3", "KG_INGEST_MAX_RETRIES": "3",
    }
    containers = {c["name"]: c for c in pod["containers"]}
    assert {"name": "RETRYD_TARGET", "value": "127.0.0.1:50051"} in containers["worker"]["env"]
    # Protected mode: listening beyond loopback needs credentials, so the
    # sidecar takes worker tokens from a Secret and the worker presents one.
    token = {"secretKeyRef": {"name": "retryd-tokens", "key": "worker"}}
    assert {"name": "RETRYD_WORKER_TOKENS", "valueFrom": token} in sidecar["env"]
    assert {"name": "RETRYD_TOKEN", "valueFrom": token} in containers["worker"]["env"]
    assert containers["rq-bridge"]["command"][:3] == ["python3", "-m", "retryd.bridge"]


def test_retryd_accepts_the_sidecar_settings(retryd_binary, tmp_path):
    config, deployment = manifest()
    [sidecar] = deployment["spec"]["template"]["spec"]["initContainers"]
    port, metrics = free_port(), free_port()
    args = []
    for arg in sidecar["args"]:  # the manifest's flags, on free ports here
        if arg.startswith("--listen="):
            # All interfaces, as in the pod: protected mode must accept it
            # because worker tokens are configured (probes go to loopback).
            assert arg == "--listen=0.0.0.0:50051", arg
            arg = f"--listen=0.0.0.0:{port}"
        elif arg.startswith("--metrics-listen="):
            arg = f"--metrics-listen=127.0.0.1:{metrics}"
        args.append(arg)
    # The Redis URL comes from a Secret in the cluster; the embedded store here.
    env = {"PATH": "/usr/bin:/bin", **config["data"], "RETRYD_DATA_DIR": str(tmp_path / "data"),
           "RETRYD_WORKER_TOKENS": "deploy-test-worker-token-0123456789"}
    proc = Proc("retryd-deploy", [str(retryd_binary), *args], tmp_path, env=env)
    try:
        wait_for(lambda: health_serving(f"127.0.0.1:{port}", 0.5) or not proc.alive(), 15, "retryd to serve")
        assert proc.alive(), proc.log()
        log = proc.log()
        assert 'phase=(default) schedule="3 retries (4 attempts) after 1m0s, 5m0s, 15m0s"' in log, log
        assert 'phase=extraction schedule="5 retries (6 attempts)' in log, log
        assert "jitter=0.1" in log, log
    finally:
        proc.stop()

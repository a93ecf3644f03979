"""The committed stubs: one set per proto, importable with the installed
grpcio/protobuf under both protobuf backends (the C one Debian ships —
'upb' or 'cpp' — and the pure-Python one)."""

import subprocess
import sys

import pytest

from conftest import PKG_ROOT, REPO, subprocess_env

GEN = PKG_ROOT / "retryd" / "v1"


def test_every_proto_has_stubs_and_no_stub_is_orphaned():
    protos = sorted(p.stem for p in (REPO / "proto" / "retryd" / "v1").glob("*.proto"))
    assert protos, "no protos found"
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        stems = sorted(p.name[: -len(suffix)] for p in GEN.glob(f"*{suffix}"))
        assert stems == protos, f"{suffix} stubs {stems} do not match protos {protos}: run `make generate`"
    assert not (GEN / "__init__.py").exists(), "retryd/v1 is generated-only (an implicit namespace subpackage)"


IMPORT_ALL = """
import grpc, google.protobuf
from google.protobuf.internal import api_implementation
from retryd.v1 import types_pb2, retry_pb2, retry_pb2_grpc, admin_pb2, admin_pb2_grpc
import retryd, retryd.bridge
req = retry_pb2.ReportFailureRequest(job_id="j", phase="p", labels={"a": "b"})
req.payload.update({"k": [1, "x"]})
assert retry_pb2.ReportFailureRequest.FromString(req.SerializeToString()) == req
assert types_pb2.JobState.Name(3) == "JOB_STATE_COMPLETED"
names = [m.name for m in retry_pb2.DESCRIPTOR.services_by_name["RetryService"].methods]
assert names == ["ReportFailure", "ReportSuccess", "Dispatch", "ExtendLease"], names
assert hasattr(admin_pb2_grpc, "AdminServiceStub") and hasattr(retry_pb2_grpc, "add_RetryServiceServicer_to_server")
print(grpc.__version__, google.protobuf.__version__, api_implementation.Type())
"""


@pytest.mark.parametrize("impl", [None, "python"])
def test_stubs_import(impl):
    env = subprocess_env()
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    if impl:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = impl
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grpc_version, pb_version, backend = out.stdout.split()
    print(f"grpcio {grpc_version}, protobuf {pb_version}, backend {backend}")
    if impl:
        assert backend == impl

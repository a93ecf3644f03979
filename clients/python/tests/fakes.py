"""An in-process RetryService for unit tests of the client's own behaviour
(request fields, deadlines, the service-config retries, stream reconnects).
It decides nothing: the real retryd is used wherever the server's decisions
matter."""

from __future__ import annotations

import collections
import datetime as _dt
import queue
import threading
from concurrent import futures
from typing import Dict, List

import grpc
from google.protobuf import timestamp_pb2

from retryd.v1 import retry_pb2, retry_pb2_grpc, types_pb2


def ts(when: _dt.datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when.astimezone(_dt.timezone.utc).replace(tzinfo=None))
    return t


class FakeRetryService(retry_pb2_grpc.RetryServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Dict[str, List] = collections.defaultdict(list)
        #: Remaining time of each call's deadline, seconds (None: no deadline).
        self.deadlines: Dict[str, List] = collections.defaultdict(list)
        #: Status codes to fail the next calls of a method with, in order.
        self.inject: Dict[str, List[grpc.StatusCode]] = collections.defaultdict(list)
        self.tasks: "queue.Queue[types_pb2.Task]" = queue.Queue()
        self.failure_response = retry_pb2.ReportFailureResponse(
            decision=types_pb2.DECISION_RETRY, retryable=True, reason="fake", next_retry_count=1
        )
        self.lease_seconds = 1.0
        self.lease_lost = set()
        self.dispatch_open = threading.Event()

    def _enter(self, method: str, request, context) -> None:
        with self.lock:
            self.requests[method].append(request)
            self.deadlines[method].append(context.time_remaining())
            code = self.inject[method].pop(0) if self.inject[method] else None
        if code is not None:
            context.abort(code, f"injected {code.name}")

    def calls(self, method: str) -> List:
        with self.lock:
            return list(self.requests[method])

    def ReportFailure(self, request, context):
        self._enter("ReportFailure", request, context)
        return self.failure_response

    def ReportSuccess(self, request, context):
        self._enter("ReportSuccess", request, context)
        state = types_pb2.JOB_STATE_PROCESSING if request.next_phase else types_pb2.JOB_STATE_COMPLETED
        return retry_pb2.ReportSuccessResponse(state=state)

    def ExtendLease(self, request, context):
        self._enter("ExtendLease", request, context)
        if request.lease_id in self.lease_lost:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"lease not held: lease {request.lease_id}")
        seconds = request.extend_by.ToNanoseconds() / 1e9 if request.HasField("extend_by") else self.lease_seconds
        until = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=seconds)
        return retry_pb2.ExtendLeaseResponse(lease_expires_at=ts(until))

    def Dispatch(self, request, context):
        self._enter("Dispatch", request, context)
        self.dispatch_open.set()
        while context.is_active():
            try:
                task = self.tasks.get(timeout=0.02)
            except queue.Empty:
                continue
            if isinstance(task, grpc.StatusCode):  # break the stream mid-way
                context.abort(task, f"injected {task.name}")
            yield retry_pb2.DispatchResponse(task=task)


class FakeServer:
    def __init__(self):
        self.service = FakeRetryService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        retry_pb2_grpc.add_RetryServiceServicer_to_server(self.service, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)


def make_task(job_id: str, retry_count: int = 1, lease_id: str = "", lease_seconds: float = 1.0, payload=None, cycle: int = 1):
    from retryd.payload import to_struct

    now = _dt.datetime.now(_dt.timezone.utc)
    t = types_pb2.Task(
        job_id=job_id, phase="extraction", retry_count=retry_count, lease_id=lease_id or f"lease-{job_id}-{retry_count}",
        lease_expires_at=ts(now + _dt.timedelta(seconds=lease_seconds)), due_at=ts(now), cycle=cycle,
    )
    if payload:
        t.payload.CopyFrom(to_struct(payload))
    return t

"""retryd: Python workers' client for the retryd retry scheduler.

* :class:`RetryClient` — report attempts (``report_failure`` /
  ``report_success``), extend leases, read jobs.
* :func:`task` — a decorator that reports a task function's outcome.
* :class:`Consumer` — run a handler for each due retry retryd dispatches.
* ``python3 -m retryd.bridge`` — hand due retries to an RQ queue.

The generated stubs are in :mod:`retryd.v1` (``retry_pb2``,
``retry_pb2_grpc``, ``admin_pb2``, ``admin_pb2_grpc``, ``types_pb2``).
"""

__version__ = "0.1.0"

from .client import DEFAULT_TARGET, FailureDecision, RetryClient, Task  # noqa: E402
from .consumer import Consumer  # noqa: E402
from .describe import ErrorInfo, describe_exception  # noqa: E402
from .errors import RetrydError, RPCError  # noqa: E402
from .payload import PayloadError  # noqa: E402
from .decorator import Handoff, default_client, task  # noqa: E402

__all__ = [
    "DEFAULT_TARGET",
    "Consumer",
    "ErrorInfo",
    "FailureDecision",
    "Handoff",
    "PayloadError",
    "RPCError",
    "RetryClient",
    "RetrydError",
    "Task",
    "default_client",
    "describe_exception",
    "task",
    "__version__",
]

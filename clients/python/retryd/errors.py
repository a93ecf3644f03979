"""Exceptions raised by the retryd client package."""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = ["RetrydError", "RPCError"]


class RetrydError(Exception):
    """Base class of every exception this package raises on its own."""


class RPCError(RetrydError):
    """A retryd call failed after the channel's own retries.

    ``code`` is the final :class:`grpc.StatusCode` and ``details`` the
    server's message (it says what was wrong: ``INVALID_ARGUMENT``,
    ``FAILED_PRECONDITION`` for a lease that is no longer held or a job in a
    terminal state, ``UNAVAILABLE`` when retryd could not be reached).
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: Optional[str]):
        self.method = method
        self.code = code
        self.details = details or ""
        super().__init__(f"retryd {method}: {code.name}: {self.details}")

    @classmethod
    def from_rpc_error(cls, method: str, err: grpc.RpcError) -> "RPCError":
        """Wrap a :class:`grpc.RpcError` raised by a generated stub."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(method, code or grpc.StatusCode.UNKNOWN, details)

    @property
    def lease_lost(self) -> bool:
        """True when the server refused the call because the lease (or the
        attempt it named) is no longer held: the attempt was already
        recorded, it expired and was reaped, or the job was canceled."""
        return self.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)

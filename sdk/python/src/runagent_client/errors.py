"""Exception hierarchy of the RunAgent client.

Every failure is a :class:`RunAgentError` carrying a wire-protocol ``code``;
one subclass exists per code, so callers may catch either.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

AUTHENTICATION_ERROR = "AUTHENTICATION_ERROR"
PERMISSION_ERROR = "PERMISSION_ERROR"
VALIDATION_ERROR = "VALIDATION_ERROR"
NOT_FOUND = "NOT_FOUND"
RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
TIMEOUT = "TIMEOUT"
CONNECTION_ERROR = "CONNECTION_ERROR"
AGENT_CRASHED = "AGENT_CRASHED"
OVERLOADED = "OVERLOADED"
INTERNAL_ERROR = "INTERNAL_ERROR"
CANCELLED = "CANCELLED"


class RunAgentError(Exception):
    """A failed RunAgent call.

    Attributes: ``code`` (one of the code constants, or any code a server
    sent), ``message`` (for INTERNAL_ERROR from ``run`` the agent's exception
    text as the server sent it), ``status`` (HTTP status, ``None`` without an
    HTTP response), ``retry_after`` (seconds from ``Retry-After``, or
    ``None``), ``details``, ``field``, ``request_id`` (from the envelope) and
    ``retryable`` (the retry policy may retry it).
    """

    default_code = INTERNAL_ERROR

    def __init__(
        self,
        code: Optional[str] = None,
        message: str = "",
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
        *,
        details: Any = None,
        field: Optional[str] = None,
        request_id: Optional[str] = None,
        retryable: bool = False,
    ) -> None:
        self.code = code or self.default_code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.details = details
        self.field = field
        self.request_id = request_id
        self.retryable = retryable
        super().__init__(str(self))

    def __str__(self) -> str:
        s = "runagent: " + (self.code or "")
        if self.status is not None and self.status >= 300:
            s += " (HTTP %d)" % self.status
        if self.message:
            s += ": " + self.message
        return s

    def __repr__(self) -> str:
        return "%s(code=%r, message=%r, status=%r)" % (type(self).__name__, self.code, self.message, self.status)


class AuthenticationError(RunAgentError):
    default_code = AUTHENTICATION_ERROR


class PermissionDeniedError(RunAgentError):
    default_code = PERMISSION_ERROR


class ValidationError(RunAgentError):
    default_code = VALIDATION_ERROR


class NotFoundError(RunAgentError):
    default_code = NOT_FOUND


class RateLimitError(RunAgentError):
    default_code = RATE_LIMIT_EXCEEDED


class RunAgentTimeoutError(RunAgentError):
    default_code = TIMEOUT


class RunAgentConnectionError(RunAgentError):
    default_code = CONNECTION_ERROR


class AgentCrashedError(RunAgentError):
    default_code = AGENT_CRASHED


class OverloadedError(RunAgentError):
    default_code = OVERLOADED


class InternalError(RunAgentError):
    default_code = INTERNAL_ERROR


class RunAgentCancelledError(RunAgentError):
    default_code = CANCELLED


class ChunkError(InternalError):
    """One stream chunk was lost: the server could not serialize it
    ("Chunk serialization failed: ...") or the client could not decode it.
    The stream goes on. By default it is *yielded* by ``run_stream`` in place
    of the chunk (see ``on_chunk_error``)."""


# Aliases named like the brief / official SDK.
PermissionError_ = PermissionDeniedError
TimeoutError_ = RunAgentTimeoutError
ConnectionError_ = RunAgentConnectionError

ERROR_CLASSES: Dict[str, Type[RunAgentError]] = {
    AUTHENTICATION_ERROR: AuthenticationError,
    PERMISSION_ERROR: PermissionDeniedError,
    VALIDATION_ERROR: ValidationError,
    NOT_FOUND: NotFoundError,
    RATE_LIMIT_EXCEEDED: RateLimitError,
    TIMEOUT: RunAgentTimeoutError,
    CONNECTION_ERROR: RunAgentConnectionError,
    AGENT_CRASHED: AgentCrashedError,
    OVERLOADED: OverloadedError,
    INTERNAL_ERROR: InternalError,
    CANCELLED: RunAgentCancelledError,
}


def error_for(code: Optional[str], message: str = "", status: Optional[int] = None,
              retry_after: Optional[float] = None, **kw: Any) -> RunAgentError:
    """The exception of the class for ``code`` (RunAgentError for an unknown code)."""
    code = code or INTERNAL_ERROR
    cls = ERROR_CLASSES.get(code, RunAgentError)
    return cls(code, message, status, retry_after, **kw)

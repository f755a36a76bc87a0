//! The SDK's one error type (docs/sdk-contract.md, "Errors").
use std::fmt;
use std::time::Duration;

/// An error code of the contract. Codes a server sends that are not listed
/// here are kept in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    Authentication,
    Permission,
    Validation,
    NotFound,
    RateLimitExceeded,
    Timeout,
    Connection,
    AgentCrashed,
    Overloaded,
    Internal,
    Cancelled,
    /// `RESOURCE_ALREADY_EXISTS` (HTTP 409): a background run's create
    /// refused: its Idempotency-Key was used by a run with another
    /// entrypoint or input, or its thread has a run queued or running.
    AlreadyExists,
    Other(String),
}

impl Code {
    /// The wire spelling, e.g. `"NOT_FOUND"`.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Authentication => "AUTHENTICATION_ERROR",
            Code::Permission => "PERMISSION_ERROR",
            Code::Validation => "VALIDATION_ERROR",
            Code::NotFound => "NOT_FOUND",
            Code::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            Code::Timeout => "TIMEOUT",
            Code::Connection => "CONNECTION_ERROR",
            Code::AgentCrashed => "AGENT_CRASHED",
            Code::Overloaded => "OVERLOADED",
            Code::Internal => "INTERNAL_ERROR",
            Code::Cancelled => "CANCELLED",
            Code::AlreadyExists => "RESOURCE_ALREADY_EXISTS",
            Code::Other(s) => s,
        }
    }

    /// Parses a wire code; unknown codes become `Other`.
    pub fn parse(s: &str) -> Code {
        match s {
            "AUTHENTICATION_ERROR" => Code::Authentication,
            "PERMISSION_ERROR" => Code::Permission,
            "VALIDATION_ERROR" => Code::Validation,
            "NOT_FOUND" => Code::NotFound,
            "RATE_LIMIT_EXCEEDED" => Code::RateLimitExceeded,
            "TIMEOUT" => Code::Timeout,
            "CONNECTION_ERROR" => Code::Connection,
            "AGENT_CRASHED" => Code::AgentCrashed,
            "OVERLOADED" => Code::Overloaded,
            "INTERNAL_ERROR" => Code::Internal,
            "CANCELLED" => Code::Cancelled,
            "RESOURCE_ALREADY_EXISTS" => Code::AlreadyExists,
            other => Code::Other(other.to_string()),
        }
    }

    /// The code of an HTTP status without an envelope code.
    pub fn for_status(status: u16) -> Code {
        match status {
            401 => Code::Authentication,
            403 => Code::Permission,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            400 | 413 | 422 => Code::Validation,
            429 => Code::RateLimitExceeded,
            503 => Code::Overloaded,
            504 => Code::Timeout,
            502 => Code::AgentCrashed,
            _ => Code::Internal,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every SDK call.
#[derive(Debug, Clone)]
pub struct Error {
    /// The contract's code (or another code a server sent).
    pub code: Code,
    /// The server's message (for INTERNAL_ERROR from an agent, its exception
    /// text) or the client's description.
    pub message: String,
    /// The HTTP status, when there was an HTTP response.
    pub status: Option<u16>,
    /// The server's Retry-After, when it sent one (also set on the last
    /// error of a call whose retry budget ran out).
    pub retry_after: Option<Duration>,
    /// The envelope's `request_id`.
    pub request_id: Option<String>,
    /// The envelope's `error.field`.
    pub field: Option<String>,
    /// The envelope's `error.details`.
    pub details: Option<serde_json::Value>,
    /// True for a per-chunk stream error (`Chunk serialization failed`, or a
    /// chunk the client could not decode): the stream goes on after it.
    pub chunk_error: bool,
    pub(crate) retryable: bool,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            status: None,
            retry_after: None,
            request_id: None,
            field: None,
            details: None,
            chunk_error: false,
            retryable: false,
        }
    }

    pub(crate) fn retryable(mut self) -> Error {
        self.retryable = true;
        self
    }

    /// Whether the retry policy may retry this failure.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether this is a per-chunk stream error after which the stream goes on.
    pub fn is_chunk_error(&self) -> bool {
        self.chunk_error
    }

    pub(crate) fn malformed(msg: impl Into<String>) -> Error {
        Error::new(Code::Internal, msg)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "runagent: {}", self.code)?;
        if let Some(s) = self.status {
            if s >= 300 {
                write!(f, " (HTTP {s})")?;
            }
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Derives a code from a WebSocket error frame without one.
pub(crate) fn classify_message(msg: &str) -> Code {
    let l = msg.trim().to_lowercase();
    let has = |ws: &[&str]| ws.iter().any(|w| l.contains(w));
    if l.starts_with("streaming error") || l.starts_with("agent execution failed") {
        Code::Internal
    } else if has(&["not found"]) {
        Code::NotFound
    } else if has(&["unauthorized", "authentication", "invalid token", "invalid api key", "api key required"]) {
        Code::Authentication
    } else if has(&["permission", "forbidden"]) {
        Code::Permission
    } else if has(&["rate limit"]) {
        Code::RateLimitExceeded
    } else if has(&["overloaded"]) {
        Code::Overloaded
    } else if has(&["timed out", "timeout"]) {
        Code::Timeout
    } else if has(&["crashed"]) {
        Code::AgentCrashed
    } else if has(&["invalid", "missing", "required", "must ", "not a stream", "non-stream", "json"]) {
        Code::Validation
    } else {
        Code::Internal
    }
}

/// Parses a Retry-After header: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_nan() || secs <= 0.0 {
            return None;
        }
        return Some(Duration::from_secs_f64(secs.min(365.0 * 24.0 * 3600.0)));
    }
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(now).ok().filter(|d| !d.is_zero())
}

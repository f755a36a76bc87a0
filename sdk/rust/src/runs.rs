//! Background runs (`runagent server`, docs/platform-api.md, "Background
//! runs"): `POST /api/v1/agents/{id}/runs` creates a run of a plain
//! entrypoint, which the server runs on its queue, and answers at once; the
//! run is then read, waited for and cancelled by its id under
//! `/api/v1/runs`.
use crate::client::{envelope_data, invalid, path_escape, retry_after, Client};
use crate::error::{Code, Error};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{Map, Value};
use std::fmt;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The longest wait one `GET /runs/{id}/wait` may ask for.
const MAX_RUN_WAIT: Duration = Duration::from_secs(300);

/// The status of a [`Run`]. Statuses a server sends that are not listed
/// here are kept in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Queued, not started.
    Pending,
    /// Started.
    Running,
    /// Ended with a result ([`Run::output`]).
    Completed,
    /// Ended with an error ([`Run::error_detail`]).
    Failed,
    /// Ended by [`Client::cancel_run`].
    Cancelled,
    /// Ended by its timeout.
    Timeout,
    Other(String),
}

impl RunStatus {
    /// The wire spelling, e.g. `"completed"`.
    pub fn as_str(&self) -> &str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Timeout => "timeout",
            RunStatus::Other(s) => s,
        }
    }

    /// Parses a wire status; unknown ones become `Other`.
    pub fn parse(s: &str) -> RunStatus {
        match s {
            "pending" => RunStatus::Pending,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "timeout" => RunStatus::Timeout,
            other => RunStatus::Other(other.to_string()),
        }
    }

    /// Whether a run with this status has ended: completed, failed,
    /// cancelled or timed out.
    pub fn is_ended(&self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Timeout)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a create does while another run of its thread is queued or
/// running ([`RunOptions::multitask`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Multitask {
    /// Refuse it (409 `RESOURCE_ALREADY_EXISTS`): the server's default.
    Reject,
    /// Accept it: it starts once the runs of the thread created before it
    /// have ended.
    Enqueue,
}

impl Multitask {
    /// The wire spelling: `"reject"` or `"enqueue"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Multitask::Reject => "reject",
            Multitask::Enqueue => "enqueue",
        }
    }
}

/// A background run's options beside its input ([`Client::start_run`]).
/// `Default` means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Sent as the `Idempotency-Key` header (printable ASCII, at most 255
    /// characters, no leading or trailing space): a create with a key that
    /// an earlier run of the agent was created with answers that run again
    /// ([`Run::replayed`]) and runs nothing; the same key with another
    /// entrypoint or input is `RESOURCE_ALREADY_EXISTS`. When `None` (or
    /// empty), `start_run` makes a random one (a UUID) per call, so that its
    /// own retries never create a second run.
    pub idempotency_key: Option<String>,
    /// An `http://` or `https://` URL the server POSTs the ended run to,
    /// signed with the agent's webhook secret.
    pub webhook: Option<String>,
    /// A conversation's id (1 to 128 printable ASCII characters): the runs
    /// of one thread run one at a time, in the order they were created.
    pub thread_id: Option<String>,
    /// What a create does while another run of `thread_id` is queued or
    /// running; it needs `thread_id`.
    pub multitask: Option<Multitask>,
}

/// A background run, as the runs API shows it: the invocation record of the
/// wire protocol with the run's own fields. The answer of `start_run` has
/// `run_id`, `invocation_id`, `agent_id`, `status` (pending), `status_url`,
/// `idempotency_key` and `replayed`; `get_run`, `wait_run` and `cancel_run`
/// fill in the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub invocation_id: String,
    pub agent_id: String,
    /// The entrypoint the run calls.
    pub entrypoint_tag: String,
    pub status: RunStatus,
    /// What the entrypoint was called with.
    pub input_args: Vec<Value>,
    pub input_kwargs: Map<String, Value>,
    /// The result of a completed run (the server's `output_data`), a
    /// [`Value`] as `Client::run` returns results (big integers keep their
    /// digits); `Null` before, and for any other end.
    pub output: Value,
    /// Why a run failed, was cancelled (`"CANCELLED: ..."`) or timed out
    /// (`"TIMEOUT: ..."`). See [`Run::error`].
    pub error_detail: Option<String>,
    /// True for a run made by `start_run` (or a cron); a plain or streamed
    /// call read as a run by its id shows false.
    pub background: bool,
    /// How many times the run was started.
    pub attempts: u32,
    /// The run's, as it was created (`user_id` with a client's user).
    pub idempotency_key: Option<String>,
    pub webhook: Option<String>,
    pub thread_id: Option<String>,
    pub user_id: Option<String>,
    /// The server's (`"async"` for a background run).
    pub sdk_type: String,
    /// The path of `GET /api/v1/runs/{id}` (in the create's answer).
    pub status_url: String,
    /// When the run was created, when it last started, when it ended.
    pub request_time: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub response_time: Option<SystemTime>,
    /// How long it ran, once it ended.
    pub execution_time: Option<Duration>,
    /// True when `start_run` was answered with a run that an earlier create
    /// with the same Idempotency-Key made (nothing new runs).
    pub replayed: bool,
}

impl Run {
    /// Whether the run has ended: completed, failed, cancelled or timed out.
    pub fn is_ended(&self) -> bool {
        self.status.is_ended()
    }

    /// The failure of a run that ended without a result: `CANCELLED` for a
    /// cancelled run, `TIMEOUT` for one that timed out, and for a failed one
    /// the code its `error_detail` starts with (`"AGENT_CRASHED: ..."`) or
    /// `INTERNAL_ERROR` (the agent raised); the message is the
    /// `error_detail`. `None` for a run that completed or has not ended.
    pub fn error(&self) -> Option<Error> {
        let detail = self.error_detail.as_deref().unwrap_or("");
        let code = match self.status {
            RunStatus::Failed => detail_code(detail).unwrap_or(Code::Internal),
            RunStatus::Cancelled => Code::Cancelled,
            RunStatus::Timeout => Code::Timeout,
            _ => return None,
        };
        let msg = if detail.is_empty() { format!("run {} {}", self.run_id, self.status) } else { detail.to_string() };
        Some(Error::new(code, msg))
    }

    /// Deserializes the output into `T` with serde (a run without output
    /// is `null`).
    pub fn decode_output<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.output.clone())
            .map_err(|e| Error::new(Code::Validation, format!("cannot decode the run's output: {e}")))
    }
}

/// The CODE of an error detail `"CODE: ..."`.
fn detail_code(detail: &str) -> Option<Code> {
    let (code, _) = detail.split_once(':')?;
    if code.len() < 3 || !code.bytes().all(|c| c.is_ascii_uppercase() || c == b'_') {
        return None;
    }
    Some(Code::parse(code))
}

impl Client {
    /// Creates a background run of the entrypoint (`runagent server`:
    /// `POST /api/v1/agents/{id}/runs`) and returns it once the server has
    /// it, pending. The body is `run`'s (`timeout_seconds` from the config
    /// timeout, the client's user) with the options'. The create carries an
    /// Idempotency-Key, `opts.idempotency_key` or a random UUID made for
    /// this call, so that the retries of the retry policy (connection
    /// failures, 429, 503) never create a second run. Bounded by the config
    /// timeout, retries included.
    ///
    /// A streaming tag is `VALIDATION_ERROR` without a request (a background
    /// run calls a plain entrypoint; stream with `run_stream_resumable`), as
    /// is an invalid `idempotency_key` (`field` "Idempotency-Key").
    /// `AlreadyExists` for a key reused with another input or a thread busy
    /// under [`Multitask::Reject`].
    pub async fn start_run(&self, args: Vec<Value>, kwargs: Map<String, Value>, opts: RunOptions) -> Result<Run, Error> {
        if self.inner.tag.ends_with("_stream") {
            return Err(invalid(format!(
                "entrypoint {:?} is a streaming entrypoint: a background run calls a plain one (stream it with run_stream_resumable)",
                self.inner.tag)));
        }
        let key = match opts.idempotency_key.filter(|k| !k.is_empty()) {
            Some(k) => {
                if let Some(problem) = check_idempotency_key(&k) {
                    let mut e = invalid(format!("invalid idempotency_key: {problem}"));
                    e.field = Some("Idempotency-Key".into());
                    return Err(e);
                }
                k
            }
            None => new_uuid(),
        };
        let mut m = self.request_map(args, kwargs, true);
        if let Some(w) = opts.webhook {
            m.insert("webhook".into(), Value::String(w));
        }
        if let Some(t) = opts.thread_id {
            m.insert("thread_id".into(), Value::String(t));
        }
        if let Some(mt) = opts.multitask {
            m.insert("multitask".into(), Value::String(mt.as_str().into()));
        }
        let body = crate::client::encode_body(m)?;
        let url = format!("{}/runs", self.inner.agent_url);
        self.call(Method::POST, &url, Some(&body), &[("Idempotency-Key", &key)], self.inner.timeout, |status, h, b| {
            let mut run = parse_run(status, h, b)?;
            run.replayed = h.get("idempotent-replayed").and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
            if run.idempotency_key.as_deref().unwrap_or("").is_empty() {
                run.idempotency_key = Some(key.clone());
            }
            Ok(run)
        }).await
    }

    /// The run `run_id` as it is now (`GET /api/v1/runs/{id}`). Any
    /// invocation's id works: a plain or streamed call shows as a run that
    /// is not `background`. An unknown id is `NOT_FOUND`. Bounded by the
    /// config timeout, retries included.
    pub async fn get_run(&self, run_id: &str) -> Result<Run, Error> {
        let url = self.run_url(run_id, "")?;
        self.call(Method::GET, &url, None, &[], self.inner.timeout, parse_run).await
    }

    /// The run `run_id` once it has ended, or as it is after `timeout` when
    /// it has not (check [`Run::is_ended`]). It asks
    /// `GET /api/v1/runs/{id}/wait?timeout_seconds=N`, at most 300 s at a
    /// time, again until the run has ended or `timeout` has passed; each of
    /// these requests is bounded by its wait plus the config timeout. A zero
    /// `timeout` reads the run once, without waiting.
    pub async fn wait_run(&self, run_id: &str, timeout: Duration) -> Result<Run, Error> {
        let base = self.run_url(run_id, "/wait")?;
        let end = Instant::now() + timeout;
        loop {
            let wait = end.saturating_duration_since(Instant::now()).min(MAX_RUN_WAIT);
            let url = format!("{base}?timeout_seconds={:.3}", wait.as_secs_f64());
            let run = self.call(Method::GET, &url, None, &[], wait + self.inner.timeout, parse_run).await?;
            if run.is_ended() || Instant::now() >= end {
                return Ok(run);
            }
        }
    }

    /// Cancels the run `run_id` (`POST /api/v1/runs/{id}/cancel`) and
    /// returns it: cancelled, or as it had ended before. A run still queued
    /// never runs; a running one has its call cancelled where it runs (an
    /// `async def` gets `asyncio.CancelledError`, a generator's `finally`
    /// runs; a plain `def` runs on, its result dropped). The server answers
    /// once the run has ended, or after 5 s with the run not ended yet while
    /// the cancel is on its way: then `wait_run` for its end. A call that is
    /// not a background run is `VALIDATION_ERROR` (HTTP 400).
    pub async fn cancel_run(&self, run_id: &str) -> Result<Run, Error> {
        let url = self.run_url(run_id, "/cancel")?;
        self.call(Method::POST, &url, None, &[], self.inner.timeout, parse_run).await
    }

    /// The URL of a run's route tail ("", "/wait", ...).
    pub(crate) fn run_url(&self, run_id: &str, tail: &str) -> Result<String, Error> {
        if run_id.is_empty() {
            return Err(invalid("a run id is required".into()));
        }
        Ok(format!("{}/runs/{}{tail}", self.inner.api_base, path_escape(run_id)))
    }
}

/// What is wrong with an Idempotency-Key, if anything.
fn check_idempotency_key(k: &str) -> Option<String> {
    if k.len() > 255 {
        return Some(format!("at most 255 characters, got {}", k.len()));
    }
    if !k.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
        return Some("printable ASCII only (a UUID is a good key)".into());
    }
    if k.trim() != k {
        return Some("no leading or trailing spaces".into());
    }
    None
}

/// A random (version 4) UUID, from the operating system's randomness.
pub(crate) fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        // No OS randomness: the process's own generator (seeded from it).
        b = fastrand::u128(..).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn malformed(msg: String, status: u16) -> Error {
    let mut e = Error::malformed(format!("malformed run: {msg}"));
    e.status = Some(status);
    e
}

/// Parses an enveloped answer whose data is a run.
pub(crate) fn parse_run(status: u16, h: &HeaderMap, body: &[u8]) -> Result<Run, Error> {
    let data = envelope_data(status, retry_after(h), body)?;
    run_from_value(&data).map_err(|m| malformed(m, status))
}

/// A run from its JSON (`data` of the runs routes).
pub(crate) fn run_from_value(data: &Value) -> Result<Run, String> {
    let o = data.as_object().ok_or("not an object")?;
    let string = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{k} is not a string")),
        }
    };
    let text = |k: &str| -> Result<String, String> { Ok(string(k)?.unwrap_or_default()) };
    let time = |k: &str| -> Result<Option<SystemTime>, String> {
        match string(k)?.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_wire_time(&s).map(Some).ok_or_else(|| format!("bad timestamp {s:?} in {k}")),
        }
    };
    let run_id = text("run_id")?;
    let status = text("status")?;
    if run_id.is_empty() || status.is_empty() {
        return Err("no run_id or status".into());
    }
    let (mut input_args, mut input_kwargs) = (Vec::new(), Map::new());
    match o.get("input_data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            match d.get("input_args") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => input_args = a.clone(),
                Some(_) => return Err("input_args is not an array".into()),
            }
            match d.get("input_kwargs") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => input_kwargs = m.clone(),
                Some(_) => return Err("input_kwargs is not an object".into()),
            }
        }
        Some(_) => return Err("input_data is not an object".into()),
    }
    let background = match o.get("background") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("background is not a boolean".into()),
    };
    let attempts = match o.get("attempts") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or("attempts is not a count")?,
    };
    let execution_time = match o.get("execution_time_ms") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let ms = crate::decode::number_f64(v).filter(|ms| ms.is_finite() && *ms >= 0.0)
                .ok_or("execution_time_ms is not a number of milliseconds")?;
            Some(Duration::from_secs_f64(ms / 1000.0))
        }
    };
    let output = match o.get("output_data") {
        None => Value::Null,
        Some(v) => v.clone(),
    };
    Ok(Run {
        run_id,
        invocation_id: text("invocation_id")?,
        agent_id: text("agent_id")?,
        entrypoint_tag: text("entrypoint_tag")?,
        status: RunStatus::parse(&status),
        input_args,
        input_kwargs,
        output,
        error_detail: string("error_detail")?,
        background,
        attempts,
        idempotency_key: string("idempotency_key")?,
        webhook: string("webhook")?,
        thread_id: string("thread_id")?,
        user_id: string("user_id")?,
        sdk_type: text("sdk_type")?,
        status_url: text("status_url")?,
        request_time: time("request_timestamp")?,
        started_at: time("started_at")?,
        response_time: time("response_timestamp")?,
        execution_time,
        replayed: false,
    })
}

/// Parses a wire timestamp: ISO 8601 in UTC without a zone
/// (`2026-11-24T10:00:00.123456`, as Python's `isoformat()` of a naive UTC
/// time) or RFC 3339 (`...Z`, `...+02:00`).
pub(crate) fn parse_wire_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = digits.parse().ok()?;
    }
    let offset: i64 = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mm * 60 + ss - offset;
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Some(base + Duration::from_nanos(nanos))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Parses JSON text of a run (tests).
#[cfg(test)]
pub(crate) fn run_from_json(s: &str) -> Result<Run, String> {
    run_from_value(&crate::decode::parse_json(s).map_err(|e| e.message)?)
}

//! The re-joinable stream over Server-Sent Events (`runagent server`,
//! docs/wire-extensions.md, "Streaming over HTTP"): started with
//! `POST /api/v1/agents/{id}/run-stream` and `"on_disconnect": "continue"`,
//! so that the server runs it on while the client is away, and after a lost
//! connection re-joined with `GET /api/v1/runs/{id}/stream` and the id of
//! the last event received (`Last-Event-ID`), which gives exactly the events
//! after it.
use crate::client::{encode_body, http_error, invalid, path_escape, retry_after, transport_error, Client, Inner};
use crate::decode::{parse_json, replace_non_finite};
use crate::error::{classify_message, Code, Error};
use crate::retry::Retrier;
use futures_util::Stream;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

const RUNS_PATH: &str = "/api/v1/runs/";

impl Client {
    /// Streams the streaming entrypoint (tag ending in `_stream`) over
    /// Server-Sent Events, re-joinable: the POST body is `run_stream`'s
    /// (with the client's user, without `timeout_seconds`) and
    /// `"on_disconnect": "continue"`. Returns once the server has answered
    /// 200 with the run's id (`Content-Location: /api/v1/runs/RUN_ID`);
    /// errors the server reports before (`NOT_FOUND` for an unknown
    /// entrypoint, `VALIDATION_ERROR` from a server that keeps no event
    /// logs) come back from this call. A tag that does not end in `_stream`
    /// is `VALIDATION_ERROR`, without a request.
    ///
    /// Connection failures, 429 and 503 are retried under the retry
    /// policy: before the stream starts by posting again, after by
    /// re-joining the run from the last event received, so that each chunk
    /// is yielded exactly once, in order. The policy's budget (attempts,
    /// `max_elapsed`) starts afresh after every connection that brought a
    /// chunk or a heartbeat. The stream ends (`None`) after the `done`
    /// event; an `error` event is its last item, an `Err` with the event's
    /// code (`INTERNAL_ERROR` when the agent raised, `CANCELLED` when the
    /// run was cancelled with `cancel_run`). The config timeout does not
    /// bound the stream.
    ///
    /// Unlike `run_stream`, dropping the stream (or losing the connection
    /// for good) does not stop the run: it goes on on the server, where
    /// `cancel_run(run_id)` stops it and `join_stream` re-joins it.
    pub async fn run_stream_resumable(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<ResumableStream, Error> {
        if !self.inner.tag.ends_with("_stream") {
            return Err(invalid(format!(
                "entrypoint {:?} is not a streaming entrypoint (its tag does not end in _stream): use run or start_run",
                self.inner.tag)));
        }
        let mut m = self.request_map(args, kwargs, false);
        m.insert("on_disconnect".into(), Value::String("continue".into()));
        let req = encode_body(m)?;
        SseState::new(self.inner.clone(), Some(req), None, None).start().await
    }

    /// Re-joins the stream of run `run_id` that `run_stream_resumable` (or
    /// any client sending `"on_disconnect": "continue"`) started, after the
    /// event `last_event_id` (`None`: from the first): `GET
    /// /api/v1/runs/{id}/stream` with `Last-Event-ID`. It may be called from
    /// another process, for as long as the server keeps the run's event log
    /// (24 h after its end by default). A run without an event log is
    /// `NOT_FOUND`. Retries are as in `run_stream_resumable`.
    pub async fn join_stream(&self, run_id: &str, last_event_id: Option<&str>) -> Result<ResumableStream, Error> {
        if run_id.is_empty() {
            return Err(invalid("a run id is required".into()));
        }
        let last = last_event_id.filter(|l| !l.is_empty()).map(str::to_string);
        SseState::new(self.inner.clone(), None, Some(run_id.to_string()), last).start().await
    }
}

/// The chunks of a re-joinable stream ([`Client::run_stream_resumable`],
/// [`Client::join_stream`]): `Ok(value)` per chunk, each exactly once, in
/// order, however often the connection drops; `Err(e)` with
/// `e.is_chunk_error()` for a chunk the server could not encode (event
/// `chunk_error`) or the client could not decode — the stream goes on; any
/// other `Err` is the last item. It ends (`None`) after the `done` event.
/// Dropping it closes the connection; the run goes on on the server.
pub struct ResumableStream {
    inner: Pin<Box<dyn Stream<Item = Result<Value, Error>> + Send>>,
    meta: Arc<Mutex<Meta>>,
}

#[derive(Debug, Default, Clone)]
struct Meta {
    run_id: Option<String>,
    invocation_id: Option<String>,
    last_event_id: Option<String>,
    total_chunks: Option<u64>,
    reconnects: u32,
}

impl ResumableStream {
    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the stream's run (for `get_run`, `cancel_run` and
    /// `join_stream`), known once the stream has started.
    pub fn run_id(&self) -> Option<String> {
        self.meta().run_id.clone()
    }

    /// The server's invocation id, once a `start` or `done` event named it
    /// (on `runagent server` it is the run id).
    pub fn invocation_id(&self) -> Option<String> {
        self.meta().invocation_id.clone()
    }

    /// The id of the last chunk (or per-chunk error) yielded: where
    /// `join_stream` would go on from.
    pub fn last_event_id(&self) -> Option<String> {
        self.meta().last_event_id.clone()
    }

    /// The number of chunks the server said it sent, once the stream is done.
    pub fn total_chunks(&self) -> Option<u64> {
        self.meta().total_chunks
    }

    /// How many times the stream was re-joined after a lost connection.
    pub fn reconnects(&self) -> u32 {
        self.meta().reconnects
    }
}

impl std::fmt::Debug for ResumableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.meta().clone();
        f.debug_struct("ResumableStream").field("run_id", &m.run_id).field("last_event_id", &m.last_event_id)
            .field("reconnects", &m.reconnects).finish()
    }
}

impl Stream for ResumableStream {
    type Item = Result<Value, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
struct Event {
    kind: String,
    id: Option<String>,
    data: String,
}

/// The body of one connection, read line by line.
struct Conn {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Start of the unread part of buf.
    pos: usize,
    /// How far past pos no newline was found.
    scanned: usize,
}

impl Conn {
    /// The next line without its end (`\n` or `\r\n`).
    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            let from = self.pos + self.scanned;
            if let Some(i) = self.buf[from..].iter().position(|&c| c == b'\n') {
                let end = from + i;
                let mut line = &self.buf[self.pos..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let out = line.to_vec();
                self.pos = end + 1;
                self.scanned = 0;
                return Ok(out);
            }
            self.scanned = self.buf.len() - self.pos;
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) => return Err(Error::new(Code::Connection, "the stream ended before its last event").retryable()),
                Err(e) => {
                    return Err(Error::new(Code::Connection, format!("stream connection lost before its end: {e}")).retryable())
                }
            }
        }
    }
}

struct SseState {
    inner: Arc<Inner>,
    /// The body of the POST that starts the stream (None: a join).
    req: Option<Vec<u8>>,
    /// A 200 answer arrived: the run exists on the server, never post again.
    started: bool,
    run_id: Option<String>,
    invocation_id: Option<String>,
    /// The id of the last chunk or chunk error yielded.
    last_id: Option<String>,
    retrier: Retrier,
    /// The next failure starts a fresh retry budget.
    fresh: bool,
    conn: Option<Conn>,
    done: bool,
    meta: Arc<Mutex<Meta>>,
}

impl SseState {
    fn new(inner: Arc<Inner>, req: Option<Vec<u8>>, run_id: Option<String>, last_id: Option<String>) -> SseState {
        let retrier = Retrier::new(inner.retry, None);
        SseState {
            started: req.is_none(),
            inner,
            req,
            run_id,
            invocation_id: None,
            last_id,
            retrier,
            fresh: true,
            conn: None,
            done: false,
            meta: Arc::default(),
        }
    }

    /// Publishes what the accessors of the stream show.
    fn publish(&self, reconnected: bool) {
        let mut m = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        m.run_id.clone_from(&self.run_id);
        m.invocation_id.clone_from(&self.invocation_id);
        m.last_event_id.clone_from(&self.last_id);
        if reconnected {
            m.reconnects += 1;
        }
    }

    /// Opens the first connection (retried under the policy) and makes the stream.
    async fn start(mut self) -> Result<ResumableStream, Error> {
        if let Err(e) = self.open().await {
            self.reconnect(e).await?;
        }
        self.publish(false);
        let meta = self.meta.clone();
        let s = futures_util::stream::unfold(self, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        });
        Ok(ResumableStream { inner: Box::pin(s), meta })
    }

    /// One attempt: the POST that starts the stream while it has no run yet,
    /// else the GET that re-joins the run after the last event.
    async fn open(&mut self) -> Result<(), Error> {
        self.conn = None;
        let mut req = match (&self.req, self.started) {
            (Some(body), false) => self.inner.http.post(format!("{}/run-stream", self.inner.agent_url))
                .header("Content-Type", "application/json")
                .body(body.clone()),
            _ => {
                let id = self.run_id.as_deref().unwrap_or("");
                let mut r = self.inner.http.get(format!("{}/runs/{}/stream", self.inner.api_base, path_escape(id)));
                if let Some(last) = &self.last_id {
                    r = r.header("Last-Event-ID", last.as_str());
                }
                r
            }
        };
        req = req.header("Accept", "text/event-stream");
        if let Some(k) = &self.inner.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let ra = retry_after(resp.headers());
            let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            return Err(http_error(status, ra, &body));
        }
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let media = ctype.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/event-stream") {
            let mut e = Error::malformed(format!("the server did not answer an event stream (Content-Type {ctype:?})"));
            e.status = Some(status);
            return Err(e);
        }
        self.started = true;
        if self.run_id.is_none() {
            self.run_id = resp.headers().get("content-location").and_then(|v| v.to_str().ok()).and_then(run_id_from_location);
        }
        self.conn = Some(Conn { resp, buf: Vec::new(), pos: 0, scanned: 0 });
        Ok(())
    }

    /// Retries after the failure `e` until a connection is open or the
    /// policy gives up.
    async fn reconnect(&mut self, mut e: Error) -> Result<(), Error> {
        loop {
            self.conn = None;
            if self.started && self.run_id.is_none() {
                // Posting again would start the stream a second time.
                return Err(Error::new(Code::Internal, format!(
                    "the server named no run to re-join (is it runagent server?) after: {}", e.message)));
            }
            if self.fresh {
                self.retrier = Retrier::new(self.inner.retry, None);
                self.fresh = false;
            }
            self.retrier.wait(e).await?;
            let rejoin = self.started;
            match self.open().await {
                Ok(()) => {
                    self.publish(rejoin);
                    return Ok(());
                }
                Err(e2) => e = e2,
            }
        }
    }

    /// The next event of the current connection. A comment (a heartbeat)
    /// shows the connection alive: it renews the retry budget.
    async fn read_event(&mut self) -> Result<Event, Error> {
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => return Err(Error::new(Code::Connection, "no connection").retryable()),
        };
        let mut ev = Event::default();
        let mut data: Vec<u8> = Vec::new();
        let mut has_data = false;
        loop {
            let line = conn.read_line().await?;
            if line.is_empty() {
                if has_data || !ev.kind.is_empty() || ev.id.is_some() {
                    ev.data = String::from_utf8_lossy(&data).into_owned();
                    return Ok(ev);
                }
                continue;
            }
            if line[0] == b':' {
                self.fresh = true;
                continue;
            }
            let (name, value) = match line.iter().position(|&c| c == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (&line[..], &[][..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match name {
                b"event" => ev.kind = String::from_utf8_lossy(value).into_owned(),
                b"data" => {
                    if has_data {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(value);
                    has_data = true;
                }
                b"id" => ev.id = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
    }

    async fn next_item(&mut self) -> Option<Result<Value, Error>> {
        if self.done {
            return None;
        }
        loop {
            let e = match self.read_event().await {
                Ok(ev) => match ev.kind.as_str() {
                    "chunk" | "chunk_error" => {
                        if self.seen(&ev) {
                            continue; // sent again by a server that replayed too much
                        }
                        if let Some(id) = ev.id.clone() {
                            self.last_id = Some(id);
                        }
                        self.fresh = true;
                        self.publish(false);
                        return Some(if ev.kind == "chunk" { chunk_value(&ev.data) } else { Err(chunk_event_error(&ev.data)) });
                    }
                    "start" => {
                        self.set_ids(&ev.data);
                        self.publish(false);
                        continue;
                    }
                    "done" => {
                        self.set_ids(&ev.data);
                        self.publish(false);
                        if let Ok(d) = parse_json(&ev.data) {
                            if let Some(n) = d.get("total_chunks").and_then(Value::as_u64) {
                                self.meta.lock().unwrap_or_else(|p| p.into_inner()).total_chunks = Some(n);
                            }
                        }
                        self.done = true;
                        self.conn = None;
                        return None;
                    }
                    "error" => event_error(&ev),
                    _ => continue, // unknown events are ignored
                },
                Err(e) => e,
            };
            let e = if e.retryable {
                match self.reconnect(e).await {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            } else {
                e
            };
            self.done = true;
            self.conn = None;
            return Some(Err(e));
        }
    }

    /// Whether ev is a chunk already yielded: its id is not after the last one.
    fn seen(&self, ev: &Event) -> bool {
        match (&ev.id, &self.last_id) {
            (Some(id), Some(last)) => match (id.trim().parse::<i64>(), last.trim().parse::<i64>()) {
                (Ok(id), Ok(last)) => id <= last,
                _ => false,
            },
            _ => false,
        }
    }

    /// Reads run_id and invocation_id of a start or done event.
    fn set_ids(&mut self, data: &str) {
        let Ok(d) = parse_json(data) else { return };
        if let Some(id) = d.get("run_id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            if self.run_id.is_none() {
                self.run_id = Some(id.to_string());
            }
        }
        if let Some(id) = d.get("invocation_id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.invocation_id = Some(id.to_string());
        }
    }
}

/// RUN_ID of a Content-Location `.../api/v1/runs/RUN_ID`.
pub(crate) fn run_id_from_location(loc: &str) -> Option<String> {
    let i = loc.find(RUNS_PATH)?;
    let rest = &loc[i + RUNS_PATH.len()..];
    let id = rest.split(['/', '?', '#']).next().unwrap_or("");
    let id = percent_decode(id).unwrap_or_else(|| id.to_string());
    Some(id).filter(|s| !s.is_empty())
}

/// Decodes %XX escapes; None when they are not valid UTF-8 or malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A chunk event's data: the chunk's JSON value.
fn chunk_value(data: &str) -> Result<Value, Error> {
    if let Ok(v) = parse_json(data) {
        return Ok(v);
    }
    if let Some(v) = replace_non_finite(data).and_then(|fixed| parse_json(&fixed).ok()) {
        return Ok(v);
    }
    let mut e = Error::malformed("undecodable stream chunk: not JSON");
    e.chunk_error = true;
    Err(e)
}

/// The `{"code", "message"}` of an error or chunk_error event.
fn event_data(data: &str) -> (Option<String>, String) {
    match parse_json(data) {
        Ok(d) if d.is_object() => {
            let code = d.get("code").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
            let msg = d.get("message").and_then(Value::as_str).unwrap_or("").to_string();
            (code, msg)
        }
        _ => (None, data.trim().to_string()),
    }
}

fn chunk_event_error(data: &str) -> Error {
    let (code, msg) = event_data(data);
    let msg = if msg.is_empty() { "chunk error".to_string() } else { msg };
    let mut e = Error::new(code.map(|c| Code::parse(&c)).unwrap_or(Code::Internal), msg);
    e.chunk_error = true;
    e
}

/// The error of an error event: the server's code when it sent one, else
/// derived from the message. Only an error that is not in the run's event
/// log (it has no id) and says the connection failed (the event log could
/// not be read) is retried, by re-joining: one in the log is the run's end.
fn event_error(ev: &Event) -> Error {
    let (code, msg) = event_data(&ev.data);
    let msg = if msg.trim().is_empty() { "stream failed".to_string() } else { msg };
    let code = code.map(|c| Code::parse(&c)).unwrap_or_else(|| classify_message(&msg));
    let retry = ev.id.is_none() && code == Code::Connection;
    let mut e = Error::new(code, msg);
    e.retryable = retry;
    e
}

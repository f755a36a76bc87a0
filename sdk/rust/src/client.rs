//! The async client.
use crate::decode::{decode_data, parse_json};
use crate::error::{classify_message, parse_retry_after, Code, Error};
use crate::retry::{Retrier, RetryPolicy};
use futures_util::{SinkExt, Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

/// The remote server used when neither the config nor `RUNAGENT_BASE_URL` names one.
pub const DEFAULT_BASE_URL: &str = "https://backend.run-agent.ai";
/// The call timeout used when neither the config nor `RUNAGENT_TIMEOUT` sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Local host used when neither the config nor `RUNAGENT_HOST` names one.
pub const DEFAULT_LOCAL_HOST: &str = "127.0.0.1";
/// Local port used when neither the config nor `RUNAGENT_PORT` names one
/// (this SDK does not read the local sqlite registry).
pub const DEFAULT_LOCAL_PORT: u16 = 8450;

/// Client configuration for one (agent id, entrypoint tag). Each setting
/// comes from the field, then the environment, then the default:
/// `api_key` (`RUNAGENT_API_KEY`), `base_url` (`RUNAGENT_BASE_URL`),
/// `local` (`RUNAGENT_LOCAL=true`), `host`/`port` (`RUNAGENT_HOST`,
/// `RUNAGENT_PORT`, default 127.0.0.1:8450), `timeout` (`RUNAGENT_TIMEOUT`
/// seconds, default 300 s).
///
/// `user_id` and `persistent_memory` have no environment variable: with a
/// `user_id`, every run the client makes (`run`, `run_stream`,
/// `run_stream_resumable`, `start_run`) carries `"user_id"` and
/// `"persistent_memory"` in its body. `persistent_memory: true` asks the
/// server to run each call on an instance of that user's own, which sees the
/// user's persistent folders (the agent's `persistent_folders`); it needs a
/// `user_id`: without one `Client::new` refuses the config
/// (`VALIDATION_ERROR`). Without it the `user_id` is sent but the call runs
/// on the agent's shared instances.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub agent_id: String,
    pub entrypoint_tag: String,
    pub local: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// The user the client's runs are for.
    pub user_id: Option<String>,
    /// Run the calls on an instance that sees `user_id`'s persistent folders.
    pub persistent_memory: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub(crate) agent_id: String,
    pub(crate) tag: String,
    pub(crate) http: reqwest::Client,
    /// `scheme://host[:port]/api/v1`.
    pub(crate) api_base: String,
    /// `api_base/agents/{id}`.
    pub(crate) agent_url: String,
    run_url: String,
    ws_url: String,
    pub(crate) api_key: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    /// The user sent in every run body, with its persistent_memory flag.
    pub(crate) user: Option<(String, bool)>,
}

/// An async RunAgent client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub(crate) fn invalid(msg: String) -> Error {
    Error::new(Code::Validation, msg)
}

impl Client {
    /// Builds a client; a bad setting is `VALIDATION_ERROR`. No request is made.
    pub fn new(cfg: Config) -> Result<Client, Error> {
        if cfg.agent_id.trim().is_empty() {
            return Err(invalid("agent_id is required".into()));
        }
        if cfg.entrypoint_tag.trim().is_empty() {
            return Err(invalid("entrypoint_tag is required".into()));
        }
        let user_id = cfg.user_id.clone().filter(|u| !u.is_empty());
        if cfg.persistent_memory && user_id.is_none() {
            return Err(invalid(
                "persistent_memory needs a user_id: the user whose persistent folders the agent's runs see".into()));
        }
        let api_key = cfg.api_key.clone().filter(|k| !k.is_empty()).or_else(|| env("RUNAGENT_API_KEY"));
        let mut local = cfg.local;
        if !local {
            if let Some(v) = env("RUNAGENT_LOCAL") {
                local = match v.to_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" => false,
                    _ => return Err(invalid(format!("RUNAGENT_LOCAL is not a boolean: {v:?}"))),
                };
            }
        }
        let timeout = match cfg.timeout {
            Some(t) => t,
            None => match env("RUNAGENT_TIMEOUT") {
                Some(v) => match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
                    _ => return Err(invalid(format!("RUNAGENT_TIMEOUT is not a number of seconds: {v:?}"))),
                },
                None => DEFAULT_TIMEOUT,
            },
        };
        let base = if local {
            let host = cfg.host.clone().filter(|h| !h.is_empty()).or_else(|| env("RUNAGENT_HOST"))
                .unwrap_or_else(|| DEFAULT_LOCAL_HOST.to_string());
            let port = match cfg.port {
                Some(p) => p,
                None => match env("RUNAGENT_PORT") {
                    Some(v) => v.parse::<u16>().ok().filter(|p| *p > 0)
                        .ok_or_else(|| invalid(format!("RUNAGENT_PORT is not a port number: {v:?}")))?,
                    None => DEFAULT_LOCAL_PORT,
                },
            };
            let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
            format!("http://{host}:{port}")
        } else {
            let raw = cfg.base_url.clone().filter(|b| !b.is_empty()).or_else(|| env("RUNAGENT_BASE_URL"))
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
            let raw = if raw.contains("://") { raw } else { format!("https://{raw}") };
            let u = url::Url::parse(&raw).map_err(|e| invalid(format!("invalid base URL {raw:?}: {e}")))?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(invalid(format!("invalid base URL {raw:?}: scheme must be http or https")));
            }
            let mut s = u.to_string();
            while s.ends_with('/') {
                s.pop();
            }
            s.strip_suffix("/api/v1").map(str::to_string).unwrap_or(s)
        };
        let id = path_escape(&cfg.agent_id);
        let api_base = format!("{base}/api/v1");
        let api = format!("{api_base}/agents/{id}");
        let run_url = format!("{api}/run");
        let mut ws_url = format!("{api}/run-stream");
        ws_url = if let Some(rest) = ws_url.strip_prefix("https://") { format!("wss://{rest}") } else { ws_url.replacen("http://", "ws://", 1) };
        if let Some(k) = &api_key {
            ws_url.push_str("?token=");
            ws_url.extend(url::form_urlencoded::byte_serialize(k.as_bytes()));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("runagent-rust/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::new(Code::Internal, format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                agent_id: cfg.agent_id,
                tag: cfg.entrypoint_tag,
                http,
                api_base,
                agent_url: api,
                run_url,
                ws_url,
                api_key,
                timeout,
                retry: cfg.retry,
                user: user_id.map(|u| (u, cfg.persistent_memory)),
            }),
        })
    }

    /// The agent id.
    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    /// A client for another entrypoint of the same agent, with the same settings.
    pub fn with_tag(&self, tag: &str) -> Result<Client, Error> {
        if tag.trim().is_empty() {
            return Err(invalid("entrypoint_tag is required".into()));
        }
        let mut inner = (*self.inner).clone();
        inner.tag = tag.to_string();
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The entrypoint tag.
    pub fn entrypoint_tag(&self) -> &str {
        &self.inner.tag
    }

    /// The user the runs are for (`Config::user_id`), if any.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// Whether the runs see the user's persistent folders (`Config::persistent_memory`).
    pub fn persistent_memory(&self) -> bool {
        self.inner.user.as_ref().is_some_and(|(_, pm)| *pm)
    }

    /// The body of a run: the entrypoint, the input, `timeout_seconds`
    /// (when given) and the client's user.
    pub(crate) fn request_map(&self, args: Vec<Value>, kwargs: Map<String, Value>, timeout: bool) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("entrypoint_tag".into(), Value::String(self.inner.tag.clone()));
        m.insert("input_args".into(), Value::Array(args));
        m.insert("input_kwargs".into(), Value::Object(kwargs));
        if timeout {
            let secs = self.inner.timeout.as_secs_f64().ceil().max(1.0) as u64;
            m.insert("timeout_seconds".into(), Value::from(secs));
        }
        if let Some((user, pm)) = &self.inner.user {
            m.insert("user_id".into(), Value::String(user.clone()));
            m.insert("persistent_memory".into(), Value::Bool(*pm));
        }
        m
    }

    fn request_body(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Vec<u8>, Error> {
        encode_body(self.request_map(args, kwargs, true))
    }

    /// Runs a non-streaming entrypoint (`POST /run`) and returns its decoded
    /// result. Bounded by the config timeout, retries included.
    pub async fn run(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, Error> {
        if self.inner.tag.ends_with("_stream") {
            return Err(invalid(format!(
                "entrypoint {:?} is a streaming entrypoint: use run_stream", self.inner.tag)));
        }
        let body = self.request_body(args, kwargs)?;
        self.call(Method::POST, &self.inner.run_url, Some(&body), &[], self.inner.timeout, |status, h, b| {
            parse_envelope(status, retry_after(h), b)
        }).await
    }

    /// Makes the request under the retry policy until `parse` accepts an
    /// answer, the policy gives up, or `bound` (retries included) has passed
    /// (`TIMEOUT`). `parse` gets each answer's status, headers and body.
    pub(crate) async fn call<T>(
        &self,
        method: Method,
        url: &str,
        body: Option<&[u8]>,
        headers: &[(&'static str, &str)],
        bound: Duration,
        parse: impl Fn(u16, &HeaderMap, &[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + bound;
        let work = async {
            let mut retrier = Retrier::new(self.inner.retry, Some(deadline));
            loop {
                let r = match self.send_once(method.clone(), url, body, headers).await {
                    Ok((status, h, b)) => parse(status, &h, &b),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(v) => return Ok(v),
                    Err(e) => retrier.wait(e).await?,
                }
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(Code::Timeout, format!("deadline exceeded ({bound:?})"))),
        }
    }

    /// One request: the answer's status, headers and body.
    async fn send_once(&self, method: Method, url: &str, body: Option<&[u8]>, headers: &[(&'static str, &str)])
        -> Result<(u16, HeaderMap, Vec<u8>), Error> {
        let post = method == Method::POST;
        let mut req = self.inner.http.request(method, url);
        req = match body {
            Some(b) => req.header("Content-Type", "application/json").body(b.to_vec()),
            None if post => req.body(Vec::new()), // Content-Length: 0
            None => req,
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(k) = &self.inner.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| {
            Error::new(Code::Connection, format!("reading the response failed: {e}"))
        })?;
        Ok((status, h, bytes.to_vec()))
    }

    /// Runs a streaming entrypoint over the WebSocket. Returns once the
    /// server has started the stream, so errors it reports before (an
    /// unknown tag) come back from this call. Dropping the stream closes the
    /// socket, which makes the server stop the agent's generator.
    pub async fn run_stream(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<RunStream, Error> {
        if !self.inner.tag.ends_with("_stream") {
            return Err(invalid(format!(
                "entrypoint {:?} is not a streaming entrypoint (its tag does not end in _stream): use run",
                self.inner.tag)));
        }
        let req = String::from_utf8(self.request_body(args, kwargs)?).expect("JSON is UTF-8");
        let mut st = StreamState {
            inner: self.inner.clone(),
            req,
            ws: None,
            retrier: Retrier::new(self.inner.retry, None),
            got_data: false,
            done: false,
            pending: None,
            invocation_id: None,
        };
        loop {
            match st.open().await {
                Ok(()) => break,
                Err(e) => st.retrier.wait(e).await?,
            }
        }
        let invocation_id = st.invocation_id.clone();
        let s = futures_util::stream::unfold(st, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        });
        Ok(RunStream { inner: Box::pin(s), invocation_id })
    }
}

/// The chunks of a stream: `Ok(value)` per data frame; `Err(e)` with
/// `e.chunk_error` for a chunk that failed (the stream goes on); any other
/// `Err` ends the stream. The stream ends (`None`) after `stream_completed`.
/// A close before `stream_completed` is `CONNECTION_ERROR`. Dropping it
/// closes the WebSocket.
pub struct RunStream {
    inner: Pin<Box<dyn Stream<Item = Result<Value, Error>> + Send>>,
    invocation_id: Option<String>,
}

impl RunStream {
    /// The server's invocation id from `stream_started`.
    pub fn invocation_id(&self) -> Option<&str> {
        self.invocation_id.as_deref()
    }
}

impl std::fmt::Debug for RunStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStream").field("invocation_id", &self.invocation_id).finish()
    }
}

impl Stream for RunStream {
    type Item = Result<Value, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct StreamState {
    inner: Arc<Inner>,
    req: String,
    ws: Option<Ws>,
    retrier: Retrier,
    got_data: bool,
    done: bool,
    pending: Option<Value>,
    invocation_id: Option<String>,
}

fn fstr<'a>(fr: &'a Value, k: &str) -> Option<&'a str> {
    fr.get(k).and_then(Value::as_str)
}

impl StreamState {
    /// One attempt: dial, send the request, read until the stream started
    /// (or a first data / chunk-error / completed frame arrived).
    async fn open(&mut self) -> Result<(), Error> {
        self.ws = None;
        self.pending = None;
        let mut request = self.inner.ws_url.as_str().into_client_request()
            .map_err(|e| invalid(format!("invalid WebSocket URL: {e}")))?;
        if let Some(k) = &self.inner.api_key {
            if let Ok(v) = format!("Bearer {k}").parse() {
                request.headers_mut().insert("Authorization", v);
            }
        }
        let config = tungstenite::protocol::WebSocketConfig {
            max_message_size: Some(256 << 20),
            max_frame_size: Some(256 << 20),
            ..Default::default()
        };
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .map_err(handshake_error)?;
        self.ws = Some(ws);
        let ws = self.ws.as_mut().unwrap();
        ws.send(Message::Text(self.req.clone())).await.map_err(read_error)?;
        loop {
            let fr = self.read_frame().await?;
            match fstr(&fr, "type") {
                Some("status") => match fstr(&fr, "status") {
                    Some("stream_started") => {
                        self.invocation_id = fstr(&fr, "invocation_id").map(str::to_string);
                        return Ok(());
                    }
                    Some("stream_completed") => {
                        self.pending = Some(fr);
                        return Ok(());
                    }
                    _ => {}
                },
                Some("data") => {
                    self.pending = Some(fr);
                    return Ok(());
                }
                Some("error") => {
                    let e = frame_error(&fr);
                    if e.chunk_error {
                        self.pending = Some(fr);
                        return Ok(());
                    }
                    return Err(e);
                }
                _ => {}
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Value, Error> {
        let ws = match self.ws.as_mut() {
            Some(ws) => ws,
            None => return Err(Error::new(Code::Cancelled, "stream closed by the client")),
        };
        loop {
            match ws.next().await {
                None => return Err(Error::new(Code::Connection, "stream closed before completion").retryable()),
                Some(Err(e)) => return Err(read_error(e)),
                Some(Ok(Message::Text(t))) => {
                    return parse_json(&t).map_err(|e| Error::malformed(format!("malformed stream frame: {}", e.message)));
                }
                Some(Ok(Message::Binary(b))) => {
                    let t = String::from_utf8_lossy(&b).into_owned();
                    return parse_json(&t).map_err(|e| Error::malformed(format!("malformed stream frame: {}", e.message)));
                }
                Some(Ok(Message::Close(cf))) => {
                    let mut e = Error::new(Code::Connection, "stream closed before completion").retryable();
                    if let Some(cf) = cf {
                        e.message = format!("stream closed before completion (close {}{}{})",
                            u16::from(cf.code), if cf.reason.is_empty() { "" } else { ": " }, cf.reason);
                        if u16::from(cf.code) == 1013 {
                            e.code = Code::Overloaded;
                        }
                    }
                    return Err(e);
                }
                Some(Ok(_)) => {} // ping, pong, raw frames
            }
        }
    }

    /// Retries after a failure while no data arrived; Err is final.
    async fn reconnect(&mut self, mut e: Error) -> Result<(), Error> {
        loop {
            self.ws = None;
            self.retrier.wait(e).await?;
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(e2) => e = e2,
            }
        }
    }

    async fn next_item(&mut self) -> Option<Result<Value, Error>> {
        loop {
            if self.done {
                return None;
            }
            let fr = match self.pending.take() {
                Some(fr) => Ok(fr),
                None => self.read_frame().await,
            };
            let fr = match fr {
                Ok(fr) => fr,
                Err(e) => {
                    if e.retryable && !self.got_data {
                        match self.reconnect(e).await {
                            Ok(()) => continue,
                            Err(e) => return Some(self.fail(e)),
                        }
                    }
                    return Some(self.fail(e));
                }
            };
            match fstr(&fr, "type") {
                Some("status") if fstr(&fr, "status") == Some("stream_completed") => {
                    self.done = true;
                    if let Some(mut ws) = self.ws.take() {
                        let _ = ws.close(None).await;
                    }
                    return None;
                }
                Some("data") => {
                    self.got_data = true;
                    let content = fr.get("content").unwrap_or(&Value::Null);
                    return Some(decode_data(content).map_err(|mut e| {
                        e.chunk_error = true;
                        e
                    }));
                }
                Some("error") => {
                    let e = frame_error(&fr);
                    if e.chunk_error {
                        return Some(Err(e));
                    }
                    if e.retryable && !self.got_data {
                        match self.reconnect(e).await {
                            Ok(()) => continue,
                            Err(e) => return Some(self.fail(e)),
                        }
                    }
                    return Some(self.fail(e));
                }
                _ => {}
            }
        }
    }

    fn fail(&mut self, e: Error) -> Result<Value, Error> {
        self.done = true;
        self.ws = None;
        Err(e)
    }
}

/// The error of an error frame: its `code` wins; otherwise derived from the message.
pub(crate) fn frame_error(fr: &Value) -> Error {
    let pick = |k: &str| match fr.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(v) => Some(v.to_string()),
    };
    let mut msg = match (fr.get("error"), fr.get("detail")) {
        (Some(Value::String(s)), _) => s.clone(),
        (_, Some(Value::String(s))) => s.clone(),
        _ => pick("detail").or_else(|| pick("error")).unwrap_or_default(),
    };
    if msg.trim().is_empty() {
        msg = "stream failed".into();
    }
    let code = fstr(fr, "code").filter(|c| !c.is_empty()).map(Code::parse);
    if msg.trim_start().starts_with("Chunk serialization failed") {
        let mut e = Error::new(code.unwrap_or(Code::Internal), msg);
        e.chunk_error = true;
        return e;
    }
    let code = code.unwrap_or_else(|| classify_message(&msg));
    let retry = matches!(code, Code::RateLimitExceeded | Code::Overloaded);
    let mut e = Error::new(code, msg);
    e.retryable = retry;
    e
}

/// Encodes a request body.
pub(crate) fn encode_body(m: Map<String, Value>) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&Value::Object(m)).map_err(|e| invalid(format!("cannot encode the input: {e}")))
}

/// Percent-encodes one path segment (`/` too, a space as `%20`).
pub(crate) fn path_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// The server's Retry-After, when it sent one.
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, SystemTime::now()))
}

pub(crate) fn transport_error(e: reqwest::Error) -> Error {
    if e.is_builder() {
        return invalid(format!("cannot build the request: {e}"));
    }
    if e.is_timeout() {
        return Error::new(Code::Timeout, format!("request timed out: {e}"));
    }
    let mut msg = format!("connection failed: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::new(Code::Connection, msg).retryable()
}

fn handshake_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = resp.body().clone().unwrap_or_default();
            if (200..300).contains(&status) {
                let mut e = Error::new(Code::Connection, "the server did not upgrade to a WebSocket");
                e.status = Some(status);
                return e;
            }
            http_error(status, retry_after, &body)
        }
        tungstenite::Error::Url(u) => invalid(format!("invalid WebSocket URL: {u}")),
        other => Error::new(Code::Connection, format!("connection failed: {other}")).retryable(),
    }
}

fn read_error(e: tungstenite::Error) -> Error {
    Error::new(Code::Connection, format!("stream closed before completion: {e}")).retryable()
}

/// Parses the response of an enveloped route: the decoded `data` on
/// success, else the error the envelope or status describes.
pub(crate) fn parse_envelope(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<Value, Error> {
    decode_data(&envelope_data(status, retry_after, body)?)
}

/// Like [`parse_envelope`], with `data` as it came (not decoded as a
/// structured string).
pub(crate) fn envelope_data(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<Value, Error> {
    if !(200..300).contains(&status) {
        return Err(http_error(status, retry_after, body));
    }
    let text = std::str::from_utf8(body).map_err(|_| Error::malformed("malformed response: not UTF-8"))?;
    let v = parse_json(text).map_err(|e| {
        let mut e = Error::malformed(format!("malformed response: not a RunAgent envelope: {}", e.message));
        e.status = Some(status);
        e
    })?;
    match v.get("success").and_then(Value::as_bool) {
        Some(true) => Ok(match v {
            Value::Object(mut m) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }),
        Some(false) => {
            let mut e = envelope_error(&v);
            e.status = Some(status);
            if e.code == Code::Other(String::new()) {
                e.code = Code::Internal;
            }
            if e.message.is_empty() {
                e.message = "agent execution failed".into();
            }
            Err(e)
        }
        None => {
            let mut e = Error::malformed("malformed response: not a RunAgent envelope");
            e.status = Some(status);
            Err(e)
        }
    }
}

/// The error of a non-2xx response.
pub(crate) fn http_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Error {
    let env = std::str::from_utf8(body).ok().and_then(|t| parse_json(t).ok())
        .filter(|v| v.is_object() && (v.get("success").is_some() || v.get("error").is_some() || v.get("detail").is_some()));
    let mut e = match env {
        Some(v) => envelope_error(&v),
        None => Error::new(Code::Other(String::new()), status_message(status, body)),
    };
    e.status = Some(status);
    if e.code == Code::Other(String::new()) {
        e.code = Code::for_status(status);
    }
    if e.message.is_empty() {
        e.message = status_message(status, &[]);
    }
    e.retry_after = retry_after;
    e.retryable = status == 429 || status == 503;
    e
}

/// Reads error, detail, message and request_id of an envelope. The code is
/// `Other("")` when the envelope has none.
fn envelope_error(env: &Value) -> Error {
    let mut e = Error::new(Code::Other(String::new()), "");
    e.request_id = env.get("request_id").and_then(Value::as_str).map(str::to_string);
    match env.get("error") {
        Some(Value::String(s)) => e.message = s.clone(),
        Some(Value::Object(d)) => {
            if let Some(c) = d.get("code").and_then(Value::as_str).filter(|c| !c.is_empty()) {
                e.code = Code::parse(c);
            }
            e.message = d.get("message").and_then(Value::as_str).unwrap_or("").to_string();
            e.field = d.get("field").and_then(Value::as_str).map(str::to_string);
            e.details = d.get("details").filter(|v| !v.is_null()).cloned();
        }
        _ => {}
    }
    match env.get("detail") {
        Some(Value::String(s)) if e.message.is_empty() => e.message = s.clone(),
        Some(Value::Array(items)) => {
            if e.message.is_empty() {
                let msgs: Vec<String> = items.iter().filter_map(|it| {
                    let m = it.get("msg")?.as_str()?;
                    Some(match it.get("loc") {
                        Some(loc @ Value::Array(l)) if !l.is_empty() => format!("{loc}: {m}"),
                        _ => m.to_string(),
                    })
                }).collect();
                e.message = msgs.join("; ");
            }
            if e.details.is_none() {
                e.details = env.get("detail").cloned();
            }
        }
        _ => {}
    }
    if e.message.is_empty() {
        e.message = env.get("message").and_then(Value::as_str).unwrap_or("").to_string();
    }
    e
}

fn status_message(status: u16, body: &[u8]) -> String {
    let mut msg = reqwest::StatusCode::from_u16(status).ok()
        .and_then(|s| s.canonical_reason()).unwrap_or("unexpected HTTP status").to_string();
    if let Ok(t) = std::str::from_utf8(body) {
        let t = t.trim();
        if !t.is_empty() && t.len() <= 512 && !t.contains(['<', '\0']) {
            msg.push_str(": ");
            msg.push_str(t);
        }
    }
    msg
}

//! Background runs, persistent-memory options and the re-joinable SSE
//! stream against a scripted HTTP server (tests/platform.rs drives them
//! against a real `runagent server`).
use crate::resumable::run_id_from_location;
use crate::runs::{parse_wire_time, run_from_json};
use crate::*;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
struct Req {
    method: String,
    /// Path and query.
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

type Handler = Arc<dyn Fn(usize, &Req) -> Vec<u8> + Send + Sync>;

/// A server answering each connection (numbered from 0) with the bytes its
/// handler makes, then closing it.
struct Script {
    port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Script {
    async fn start(handler: impl Fn(usize, &Req) -> Vec<u8> + Send + Sync + 'static) -> Script {
        let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = ln.local_addr().unwrap().port();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let rec = reqs.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut c, _)) = ln.accept().await {
                let (handler, rec, i) = (handler.clone(), rec.clone(), n);
                n += 1;
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut c).await else { return };
                    rec.lock().unwrap().push(req.clone());
                    let out = handler(i, &req);
                    let _ = c.write_all(&out).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        Script { port, reqs }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    fn client(&self, tag: &str, edit: impl FnOnce(&mut Config)) -> Client {
        let mut cfg = Config {
            agent_id: "agent-1".into(), entrypoint_tag: tag.into(), base_url: Some(self.url()), api_key: Some("k".into()),
            retry: RetryPolicy { max_attempts: 4, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(5), max_elapsed: None },
            ..Default::default()
        };
        edit(&mut cfg);
        Client::new(cfg).unwrap()
    }
}

async fn read_request(c: &mut tokio::net::TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = c.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines.filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Req { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

fn json_answer(status: u16, extra: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}", body.len()).into_bytes()
}

/// The head of an SSE answer; the body runs until the connection closes.
fn sse_answer(location: Option<&str>, events: &str) -> Vec<u8> {
    let loc = location.map(|l| format!("Content-Location: {l}\r\n")).unwrap_or_default();
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n{loc}\r\n{events}").into_bytes()
}

const PENDING: &str = r#"{"success":true,"data":{"run_id":"run-1","invocation_id":"run-1","agent_id":"agent-1","status":"pending","status_url":"/api/v1/runs/run-1"}}"#;

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter().enumerate().all(|(i, c)| [8, 13, 18, 23].contains(&i) || matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && b[14] == b'4' && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn body_of(r: &Req) -> Value {
    decode::parse_json(&r.body).unwrap()
}

#[test]
fn config_persistent_memory() {
    let cfg = |user: Option<&str>, pm: bool| Config {
        agent_id: "a".into(), entrypoint_tag: "t".into(), base_url: Some("http://127.0.0.1:1".into()),
        user_id: user.map(str::to_string), persistent_memory: pm, ..Default::default()
    };
    let e = Client::new(cfg(None, true)).unwrap_err();
    assert_eq!(e.code, Code::Validation);
    assert!(e.message.contains("persistent_memory needs a user_id"), "{}", e.message);
    assert_eq!(Client::new(cfg(Some(""), true)).unwrap_err().code, Code::Validation);
    let c = Client::new(cfg(Some("ana@example.com"), true)).unwrap();
    assert_eq!((c.user_id(), c.persistent_memory()), (Some("ana@example.com"), true));
    let c = Client::new(cfg(Some("ana"), false)).unwrap();
    assert_eq!((c.user_id(), c.persistent_memory()), (Some("ana"), false));
    let c = Client::new(cfg(None, false)).unwrap();
    assert_eq!((c.user_id(), c.persistent_memory()), (None, false));
    // with_tag keeps the user.
    let c = Client::new(cfg(Some("ana"), true)).unwrap().with_tag("x_stream").unwrap();
    assert_eq!((c.user_id(), c.persistent_memory()), (Some("ana"), true));
}

/// Every kind of run sends the client's user; the bodies are what the server reads.
#[tokio::test]
async fn run_bodies() {
    let srv = Script::start(|_, r| {
        if r.target.ends_with("/run-stream") {
            sse_answer(Some("/api/v1/runs/run-1"), "event: done\ndata: {}\n\n")
        } else if r.target.ends_with("/runs") {
            json_answer(202, "", PENDING)
        } else {
            json_answer(200, "", r#"{"success":true,"data":"{\"type\": \"null\", \"payload\": \"null\"}"}"#)
        }
    }).await;
    let input = || (vec![Value::from("hi")], serde_json::json!({"n": 1}).as_object().unwrap().clone());
    let base = serde_json::json!({"input_args": ["hi"], "input_kwargs": {"n": 1}});
    let want = |extra: Value| {
        let mut m = base.as_object().unwrap().clone();
        m.extend(extra.as_object().unwrap().clone());
        Value::Object(m)
    };
    let user = |u: Option<&'static str>, pm: bool| move |c: &mut Config| {
        c.user_id = u.map(str::to_string);
        c.persistent_memory = pm;
    };
    let (a, k) = input();
    srv.client("minimal", user(None, false)).run(a, k).await.unwrap();
    let (a, k) = input();
    srv.client("minimal", user(Some("ana"), true)).run(a, k).await.unwrap();
    let (a, k) = input();
    srv.client("minimal", user(Some("ana"), false)).run(a, k).await.unwrap();
    let (a, k) = input();
    srv.client("minimal", user(None, false)).start_run(a, k, RunOptions::default()).await.unwrap();
    let (a, k) = input();
    let opts = RunOptions { webhook: Some("https://hooks.example.com/x".into()), thread_id: Some("t-1".into()),
        multitask: Some(Multitask::Enqueue), ..Default::default() };
    srv.client("minimal", user(Some("ana"), true)).start_run(a, k, opts).await.unwrap();
    let (a, k) = input();
    let st = srv.client("minimal_stream", user(None, false)).run_stream_resumable(a, k).await.unwrap();
    assert_eq!(st.collect::<Vec<_>>().await.len(), 0);
    let (a, k) = input();
    let st = srv.client("minimal_stream", user(Some("ana"), true)).run_stream_resumable(a, k).await.unwrap();
    assert_eq!(st.run_id().as_deref(), Some("run-1"));
    assert_eq!(st.collect::<Vec<_>>().await.len(), 0);

    let reqs = srv.reqs();
    let got: Vec<(String, String, Value)> = reqs.iter().map(|r| (r.method.clone(), r.target.clone(), body_of(r))).collect();
    let agent = "/api/v1/agents/agent-1";
    let t = serde_json::json!({"entrypoint_tag": "minimal", "timeout_seconds": 300});
    let wants = [
        ("POST", "/run", want(t.clone())),
        ("POST", "/run", want(serde_json::json!({"entrypoint_tag": "minimal", "timeout_seconds": 300, "user_id": "ana", "persistent_memory": true}))),
        ("POST", "/run", want(serde_json::json!({"entrypoint_tag": "minimal", "timeout_seconds": 300, "user_id": "ana", "persistent_memory": false}))),
        ("POST", "/runs", want(t)),
        ("POST", "/runs", want(serde_json::json!({"entrypoint_tag": "minimal", "timeout_seconds": 300, "user_id": "ana", "persistent_memory": true,
            "webhook": "https://hooks.example.com/x", "thread_id": "t-1", "multitask": "enqueue"}))),
        ("POST", "/run-stream", want(serde_json::json!({"entrypoint_tag": "minimal_stream", "on_disconnect": "continue"}))),
        ("POST", "/run-stream", want(serde_json::json!({"entrypoint_tag": "minimal_stream", "on_disconnect": "continue", "user_id": "ana", "persistent_memory": true}))),
    ];
    assert_eq!(got.len(), wants.len(), "{got:?}");
    for (i, ((m, path, body), (wm, wpath, wbody))) in got.iter().zip(wants.iter()).enumerate() {
        assert_eq!((m.as_str(), path.as_str()), (*wm, format!("{agent}{wpath}").as_str()), "request {i}");
        assert_eq!(body, wbody, "request {i}");
    }
    // Auth on every request; the SSE POST asks for an event stream.
    assert!(reqs.iter().all(|r| r.headers.get("authorization").map(String::as_str) == Some("Bearer k")));
    assert_eq!(reqs[5].headers.get("accept").map(String::as_str), Some("text/event-stream"));
}

#[tokio::test]
async fn start_run_idempotency_key() {
    // Each first attempt is refused with 503: the retry carries the same key.
    let srv = Script::start(|n, _| {
        if n % 2 == 0 {
            json_answer(503, "", r#"{"success":false,"error":{"code":"OVERLOADED","message":"busy"}}"#)
        } else {
            json_answer(202, "Idempotent-Replayed: true\r\n", PENDING)
        }
    }).await;
    let c = srv.client("minimal", |_| {});
    let a = c.start_run(vec![], Map::new(), RunOptions::default()).await.unwrap();
    let b = c.start_run(vec![], Map::new(), RunOptions { idempotency_key: Some(String::new()), ..Default::default() }).await.unwrap();
    let keys: Vec<String> = srv.reqs().iter().map(|r| r.headers.get("idempotency-key").cloned().unwrap_or_default()).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys[0] == keys[1] && keys[2] == keys[3] && keys[0] != keys[2], "{keys:?}");
    assert!(is_uuid_v4(&keys[0]) && is_uuid_v4(&keys[2]), "{keys:?}");
    assert_eq!(a.idempotency_key.as_deref(), Some(keys[0].as_str()));
    assert_eq!(b.idempotency_key.as_deref(), Some(keys[2].as_str()));
    assert!(a.replayed && a.run_id == "run-1" && a.status == RunStatus::Pending && a.status_url == "/api/v1/runs/run-1");

    // A given key is sent as it is.
    let srv = Script::start(|_, _| json_answer(202, "", PENDING)).await;
    let run = srv.client("minimal", |_| {})
        .start_run(vec![], Map::new(), RunOptions { idempotency_key: Some("order 12/01".into()), ..Default::default() }).await.unwrap();
    assert_eq!(srv.reqs()[0].headers.get("idempotency-key").map(String::as_str), Some("order 12/01"));
    assert!(run.idempotency_key.as_deref() == Some("order 12/01") && !run.replayed);

    // Bad keys and a streaming tag are refused without a request.
    for bad in ["a\nb", "é", " padded", &"k".repeat(256)] {
        let e = srv.client("minimal", |_| {})
            .start_run(vec![], Map::new(), RunOptions { idempotency_key: Some(bad.to_string()), ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (Code::Validation, Some("Idempotency-Key")), "{bad:?}");
    }
    let e = srv.client("x_stream", |_| {}).start_run(vec![], Map::new(), RunOptions::default()).await.unwrap_err();
    assert_eq!(e.code, Code::Validation);
    assert_eq!(srv.reqs().len(), 1);
    // 409: the key's run has another input.
    let srv = Script::start(|_, _| json_answer(409, "", r#"{"success":false,"error":{"code":"RESOURCE_ALREADY_EXISTS","message":"used","field":"Idempotency-Key"}}"#)).await;
    let e = srv.client("minimal", |_| {}).start_run(vec![], Map::new(), RunOptions::default()).await.unwrap_err();
    assert_eq!((e.code, e.status, e.field.as_deref()), (Code::AlreadyExists, Some(409), Some("Idempotency-Key")));
    assert_eq!(srv.reqs().len(), 1, "409 is not retried");
}

const RECORD: &str = r#"{"run_id":"r/1","invocation_id":"r/1","agent_id":"a","input_data":{"input_args":[2,40],"input_kwargs":{"k":"v"}},"output_data":{"n":12345678901234567890,"x":1.5},"error_detail":null,"request_timestamp":"2026-12-02T18:29:30.986305","response_timestamp":"2026-12-02T18:29:31","execution_time_ms":0.5,"status":"completed","entrypoint_tag":"add","sdk_type":"async","client_info":{},"background":true,"attempts":1,"started_at":"2026-12-02T18:29:30.986806","idempotency_key":"k","webhook":null,"thread_id":"t","user_id":"ana"}"#;

fn utc(secs: u64, micros: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
}

#[tokio::test]
async fn run_routes() {
    let srv = Script::start(|_, _| json_answer(200, "", &format!(r#"{{"success":true,"data":{RECORD}}}"#))).await;
    let c = srv.client("add", |_| {});
    let want = Run {
        run_id: "r/1".into(), invocation_id: "r/1".into(), agent_id: "a".into(), entrypoint_tag: "add".into(),
        status: RunStatus::Completed, input_args: vec![2.into(), 40.into()],
        input_kwargs: serde_json::json!({"k": "v"}).as_object().unwrap().clone(),
        output: decode::parse_json(r#"{"n":12345678901234567890,"x":1.5}"#).unwrap(),
        error_detail: None, background: true, attempts: 1, idempotency_key: Some("k".into()), webhook: None,
        thread_id: Some("t".into()), user_id: Some("ana".into()), sdk_type: "async".into(), status_url: String::new(),
        request_time: Some(utc(1796236170, 986305)), started_at: Some(utc(1796236170, 986806)),
        response_time: Some(utc(1796236171, 0)), execution_time: Some(Duration::from_micros(500)), replayed: false,
    };
    let got = [
        c.get_run("r/1").await.unwrap(),
        c.wait_run("r/1", Duration::from_millis(1500)).await.unwrap(),
        c.cancel_run("r/1").await.unwrap(),
    ];
    for g in &got {
        assert_eq!(g, &want);
    }
    assert_eq!(got[0].output["n"].to_string(), "12345678901234567890");
    #[derive(serde::Deserialize)]
    struct Out {
        x: f64,
    }
    assert_eq!(want.decode_output::<Out>().unwrap().x, 1.5);
    let reqs = srv.reqs();
    let targets: Vec<String> = reqs.iter().map(|r| format!("{} {}", r.method, r.target)).collect();
    assert_eq!(targets[0], "GET /api/v1/runs/r%2F1");
    assert_eq!(targets[1], "GET /api/v1/runs/r%2F1/wait?timeout_seconds=1.500");
    assert_eq!(targets[2], "POST /api/v1/runs/r%2F1/cancel");
    assert_eq!(c.get_run("").await.unwrap_err().code, Code::Validation);
}

/// wait_run asks again until the run has ended, each wait at most the time left.
#[tokio::test]
async fn wait_run_loops_until_ended() {
    let srv = Script::start(|n, _| {
        let status = if n < 2 { "running" } else { "completed" };
        json_answer(200, "", &format!(r#"{{"success":true,"data":{{"run_id":"r","status":"{status}","output_data":"rested"}}}}"#))
    }).await;
    let run = srv.client("nap", |_| {}).wait_run("r", Duration::from_secs(600)).await.unwrap();
    assert_eq!((run.status, run.output), (RunStatus::Completed, Value::from("rested")));
    let reqs = srv.reqs();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        let secs: f64 = r.target.rsplit_once("timeout_seconds=").unwrap().1.parse().unwrap();
        assert!(secs <= 300.0 && secs > 299.0, "{}", r.target);
    }
    // A zero timeout reads the run once.
    let srv = Script::start(|_, _| json_answer(200, "", r#"{"success":true,"data":{"run_id":"r","status":"running"}}"#)).await;
    let run = srv.client("nap", |_| {}).wait_run("r", Duration::ZERO).await.unwrap();
    assert!(!run.is_ended());
    assert_eq!(srv.reqs().len(), 1);
    assert!(srv.reqs()[0].target.ends_with("/wait?timeout_seconds=0.000"));
    // An unknown run.
    let srv = Script::start(|_, _| json_answer(404, "", r#"{"success":false,"error":{"code":"NOT_FOUND","message":"no run"}}"#)).await;
    assert_eq!(srv.client("nap", |_| {}).wait_run("r", Duration::from_secs(1)).await.unwrap_err().code, Code::NotFound);
}

#[test]
fn run_error() {
    let run = |status: &str, detail: Option<&str>| {
        let mut r = run_from_json(r#"{"run_id":"r","status":"pending"}"#).unwrap();
        r.status = RunStatus::parse(status);
        r.error_detail = detail.map(str::to_string);
        r
    };
    for s in ["completed", "pending", "running"] {
        let r = run(s, None);
        assert!(r.error().is_none());
        assert_eq!(r.is_ended(), s == "completed");
    }
    let cases = [
        ("failed", Some("Server error running agent a: ValueError: boom"), Code::Internal),
        ("failed", Some("AGENT_CRASHED: the agent process exited"), Code::AgentCrashed),
        ("failed", None, Code::Internal),
        ("cancelled", Some("CANCELLED: the run was cancelled"), Code::Cancelled),
        ("timeout", Some("TIMEOUT: 5s"), Code::Timeout),
    ];
    for (status, detail, code) in cases {
        let r = run(status, detail);
        let e = r.error().unwrap();
        assert!(r.is_ended());
        assert_eq!(e.code, code, "{status} {detail:?}");
        assert_eq!(e.message, detail.map(str::to_string).unwrap_or_else(|| format!("run r {status}")));
    }
    assert_eq!(RunStatus::parse("weird"), RunStatus::Other("weird".into()));
    assert!(!RunStatus::Other("weird".into()).is_ended());
}

#[tokio::test]
async fn parse_run_malformed() {
    for data in ["[1]", r#"{"status":"pending"}"#, r#"{"run_id":"r","status":"pending","request_timestamp":"yesterday"}"#,
                 r#"{"run_id":"r","status":"pending","attempts":"one"}"#] {
        let body = format!(r#"{{"success":true,"data":{data}}}"#);
        let srv = Script::start(move |_, _| json_answer(200, "", &body)).await;
        let e = srv.client("add", |_| {}).get_run("r").await.unwrap_err();
        assert_eq!((e.code.clone(), e.status), (Code::Internal, Some(200)), "{data}: {e}");
        assert!(e.message.starts_with("malformed run"), "{}", e.message);
    }
}

#[test]
fn wire_times() {
    assert_eq!(parse_wire_time("1970-01-01T00:00:00"), Some(SystemTime::UNIX_EPOCH));
    assert_eq!(parse_wire_time("2026-12-02T18:29:30.986305"), Some(utc(1796236170, 986305)));
    assert_eq!(parse_wire_time("2026-12-02T18:29:30.986305Z"), Some(utc(1796236170, 986305)));
    assert_eq!(parse_wire_time("2026-12-02T20:29:30.5+02:00"), Some(utc(1796236170, 500000)));
    assert_eq!(parse_wire_time("2000-02-29T00:00:00"), Some(utc(951782400, 0)));
    assert_eq!(parse_wire_time("1969-12-31T23:59:59"), Some(SystemTime::UNIX_EPOCH - Duration::from_secs(1)));
    for bad in ["", "yesterday", "2026-13-01T00:00:00", "2026-02-30T00:00:00", "2026-12-02T18:29:30.", "2026-12-02T18:29:30+2"] {
        assert_eq!(parse_wire_time(bad), None, "{bad:?}");
    }
}

#[test]
fn content_location() {
    assert_eq!(run_id_from_location("/api/v1/runs/run-1").as_deref(), Some("run-1"));
    assert_eq!(run_id_from_location("http://h:1/api/v1/runs/r%2F1/stream?x#y").as_deref(), Some("r/1"));
    assert_eq!(run_id_from_location("/api/v1/agents/a"), None);
    assert_eq!(run_id_from_location("/api/v1/runs/"), None);
}

async fn collect(st: &mut ResumableStream) -> Vec<String> {
    st.map(|item| match item {
        Ok(v) => v.to_string(),
        Err(e) if e.is_chunk_error() => format!("CHUNK_ERR:{}", e.code),
        Err(e) => format!("ERR:{}:{}", e.code, e.message),
    }).collect().await
}

/// A dropped connection is re-joined from the last chunk; chunks sent again are skipped.
#[tokio::test]
async fn resumable_rejoins_after_the_last_event() {
    let srv = Script::start(|n, r| match n {
        0 => sse_answer(Some("/api/v1/runs/run%2F1"), concat!(
            "event: start\ndata: {\"run_id\":\"run/1\",\"invocation_id\":\"run/1\"}\n\n",
            "id: 0\nevent: chunk\ndata: {\"i\": 0}\n\n",
            ": heartbeat\n\n",
            "id: 1\r\nevent: chunk\r\ndata: {\"i\": 1}\r\n\r\n",
            "id: 2\nevent: chu")), // cut in the middle of an event
        1 => {
            assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/api/v1/runs/run%2F1/stream"));
            assert_eq!(r.headers.get("last-event-id").map(String::as_str), Some("1"));
            // The server replays one too many, and a chunk error, then cuts again.
            sse_answer(None, concat!(
                "id: 1\nevent: chunk\ndata: {\"i\": 1}\n\n",
                "id: 2\nevent: chunk_error\ndata: {\"message\":\"cannot encode\"}\n\n",
                "id: 3\nevent: chunk\ndata: [NaN, 1,\ndata:  2]\n\n"))
        }
        2 => {
            assert_eq!(r.headers.get("last-event-id").map(String::as_str), Some("3"));
            // A 503 first: retried.
            json_answer(503, "", r#"{"success":false,"error":{"code":"OVERLOADED","message":"busy"}}"#)
        }
        3 => sse_answer(None, concat!(
            "id: 4\nevent: chunk\ndata: not json\n\n",
            "event: unknown\ndata: x\n\n",
            "id: 5\nevent: chunk\ndata: \"last\"\n\n",
            "id: 6\nevent: done\ndata: {\"total_chunks\":6,\"invocation_id\":\"run/1\"}\n\n")),
        _ => panic!("connection {n}"),
    }).await;
    let mut st = srv.client("count_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap();
    assert_eq!(st.run_id().as_deref(), Some("run/1"));
    let got = collect(&mut st).await;
    assert_eq!(got, [r#"{"i":0}"#, r#"{"i":1}"#, "CHUNK_ERR:INTERNAL_ERROR", "[null,1,2]", "CHUNK_ERR:INTERNAL_ERROR", r#""last""#]);
    assert_eq!((st.last_event_id().as_deref(), st.total_chunks(), st.reconnects(), st.invocation_id().as_deref()),
        (Some("5"), Some(6), 2, Some("run/1")));
    assert_eq!(srv.reqs().len(), 4);
}

#[tokio::test]
async fn resumable_errors() {
    // An error event ends the stream with its code; one with an id is not retried.
    let srv = Script::start(|_, _| sse_answer(Some("/api/v1/runs/r"), concat!(
        "id: 0\nevent: chunk\ndata: \"chunk 0\"\n\n",
        "id: 1\nevent: error\ndata: {\"code\":\"CANCELLED\",\"message\":\"the run was cancelled\"}\n\n"))).await;
    let got = collect(&mut srv.client("x_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap()).await;
    assert_eq!(got, [r#""chunk 0""#, "ERR:CANCELLED:the run was cancelled"]);
    assert_eq!(srv.reqs().len(), 1);

    // Errors before the stream starts come back from the call.
    let srv = Script::start(|_, _| json_answer(404, "", r#"{"success":false,"error":{"code":"NOT_FOUND","message":"Entrypoint nope_stream not found"}}"#)).await;
    assert_eq!(srv.client("nope_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap_err().code, Code::NotFound);
    assert_eq!(srv.client("x_stream", |_| {}).join_stream("r", None).await.unwrap_err().code, Code::NotFound);
    // A plain tag, an empty run id: no request.
    let n = srv.reqs().len();
    assert_eq!(srv.client("add", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap_err().code, Code::Validation);
    assert_eq!(srv.client("x_stream", |_| {}).join_stream("", None).await.unwrap_err().code, Code::Validation);
    assert_eq!(srv.reqs().len(), n);

    // Not an event stream.
    let srv = Script::start(|_, _| json_answer(200, "", "{}")).await;
    let e = srv.client("x_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap_err();
    assert_eq!((e.code, e.status), (Code::Internal, Some(200)));

    // Cut before the server named a run: posting again would start a second one.
    let srv = Script::start(|_, _| sse_answer(None, "id: 0\nevent: chunk\ndata: 1\n\n")).await;
    let got = collect(&mut srv.client("x_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap()).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1].starts_with("ERR:INTERNAL_ERROR:the server named no run to re-join"), "{got:?}");
    assert_eq!(srv.reqs().len(), 1);

    // The retry budget runs out while the server stays away.
    let srv = Script::start(|n, _| if n == 0 {
        sse_answer(Some("/api/v1/runs/r"), "id: 0\nevent: chunk\ndata: 1\n\n")
    } else {
        json_answer(503, "", r#"{"success":false,"error":{"code":"OVERLOADED","message":"busy"}}"#)
    }).await;
    let got = collect(&mut srv.client("x_stream", |_| {}).run_stream_resumable(vec![], Map::new()).await.unwrap()).await;
    assert_eq!(got, ["1", "ERR:OVERLOADED:busy"]);
    assert_eq!(srv.reqs().len(), 4, "the POST, then 3 attempts to re-join (the cut connection was the first)");

    // join_stream sends Last-Event-ID and yields the events after it.
    let srv = Script::start(|_, r| {
        assert_eq!(r.headers.get("last-event-id").map(String::as_str), Some("3"));
        sse_answer(None, "id: 4\nevent: chunk\ndata: 4\n\nid: 5\nevent: done\ndata: {}\n\n")
    }).await;
    let mut st = srv.client("x_stream", |_| {}).join_stream("r", Some("3")).await.unwrap();
    assert_eq!(st.run_id().as_deref(), Some("r"));
    assert_eq!(collect(&mut st).await, ["4"]);
}

#[test]
fn uuids() {
    let a = crate::runs::new_uuid();
    let b = crate::runs::new_uuid();
    assert!(is_uuid_v4(&a) && is_uuid_v4(&b) && a != b, "{a} {b}");
}

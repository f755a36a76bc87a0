//! Background runs, per-user persistent memory and the re-joinable SSE
//! stream against a real `runagent server`, as sdk/go/platform_test.go:
//! `$RUNAGENT_BIN`, else `../../bin/runagent`, else that binary built with
//! `make build` (a clear failure when it cannot be). The server runs in a
//! temporary data directory and cache; the showcase template, with the
//! entrypoints below added, is deployed with the CLI. A proxy that cuts
//! every connection after a few kilobytes makes streams drop again and
//! again.
use futures_util::StreamExt;
use runagent::{Client, Code, Config, Error, Map, Multitask, RetryPolicy, Run, RunOptions, RunStatus, Value};
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// An async entrypoint that notes its start and its cancellation in a file.
const NAP_PY: &str = r#"import asyncio


async def nap(path, seconds=30):
    with open(path, "a") as f:
        f.write("started\n")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(path, "a") as f:
            f.write("cancelled\n")
        raise
    return "rested"
"#;

/// Notes in the agent's persistent folder "memory", relative to the working
/// directory as agents do.
const MEMORY_PY: &str = r#"import os


def remember(text=""):
    with open("memory/notes.txt", "a") as f:
        f.write(text)
    return open("memory/notes.txt").read()


def peek():
    path = "memory/notes.txt"
    return open(path).read() if os.path.exists(path) else ""


def remember_stream(text=""):
    yield remember(text)
"#;

fn parse(text: &str) -> Value {
    runagent::decode::parse_json(text).expect("valid JSON")
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// The binary: `$RUNAGENT_BIN`, else `bin/runagent`, else built by `make build`.
fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("RUNAGENT_BIN") {
        let b = PathBuf::from(b);
        assert!(b.is_file(), "RUNAGENT_BIN={} is not a file", b.display());
        return b;
    }
    let bin = Path::new(REPO).join("bin/runagent");
    if !bin.exists() {
        eprintln!("{} is missing: running `make build` in {REPO}", bin.display());
        let st = Command::new("make").arg("build").current_dir(REPO).status();
        match st {
            Ok(s) if s.success() && bin.exists() => {}
            other => panic!(
                "the runagent binary is missing and `make build` in {REPO} failed ({other:?}): \
                 build it with `cd {REPO} && make build` (needs Go), or set RUNAGENT_BIN to a runagent binary"),
        }
    }
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /api/v1/health answers 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// A running `runagent server` with the showcase agent deployed.
struct Platform {
    child: Child,
    port: u16,
    base_url: String,
    key: String,
    agent_id: String,
    tmp: PathBuf,
}

impl Platform {
    fn logs(&self) -> String {
        let s = std::fs::read_to_string(self.tmp.join("server.log")).unwrap_or_default();
        let tail: String = s.chars().rev().take(6000).collect::<Vec<_>>().into_iter().rev().collect();
        tail
    }

    fn start() -> Platform {
        let tmp = std::env::temp_dir().join(format!("runagent-rust-platform-{}-{}", std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
        std::fs::create_dir_all(&tmp).unwrap();
        let bin = binary();
        let cache = tmp.join("cache");
        let data = tmp.join("data");
        let port = free_port();
        let log = std::fs::File::create(tmp.join("server.log")).unwrap();
        let child = Command::new(&bin).args(["server", "--port", &port.to_string(), "--data-dir"]).arg(&data)
            .env("RUNAGENT_CACHE_DIR", &cache).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log)
            .process_group(0) // its agents' processes with it
            .spawn().expect("start runagent server");
        let mut p = Platform { child, port, base_url: format!("http://127.0.0.1:{port}"), key: String::new(), agent_id: String::new(), tmp };
        let t0 = Instant::now();
        loop {
            if healthy(port) {
                if let Ok(k) = std::fs::read_to_string(data.join("admin-key")) {
                    p.key = k.trim().to_string();
                    break;
                }
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("runagent server exited during start-up ({st}):\n{}", p.logs());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "runagent server not ready after 60s:\n{}", p.logs());
            std::thread::sleep(Duration::from_millis(50));
        }

        let agent = p.tmp.join("agent");
        let cli = |args: &[&str]| -> Vec<u8> {
            let out = Command::new(&bin).args(args).env("RUNAGENT_CACHE_DIR", &cache).stdin(Stdio::null())
                .output().expect("run the runagent CLI");
            assert!(out.status.success(), "runagent {}: {}\n{}{}\nserver:\n{}", args.join(" "), out.status,
                String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), p.logs());
            out.stdout
        };
        let agent_s = agent.to_str().unwrap();
        cli(&["init", agent_s, "--template", "showcase", "--json"]);
        std::fs::write(agent.join("nap.py"), NAP_PY).unwrap();
        std::fs::write(agent.join("memory_agent.py"), MEMORY_PY).unwrap();
        std::fs::create_dir_all(agent.join("memory")).unwrap();
        std::fs::write(agent.join("memory/README"), "each user's notes").unwrap();
        let cfg_path = agent.join("runagent.config.json");
        let mut cfg = parse(&std::fs::read_to_string(&cfg_path).unwrap());
        let eps = cfg["agent_architecture"]["entrypoints"].as_array_mut().expect("entrypoints");
        eps.push(json!({"file": "nap.py", "module": "nap", "tag": "nap"}));
        for f in ["remember", "peek", "remember_stream"] {
            eps.push(json!({"file": "memory_agent.py", "module": f, "tag": f}));
        }
        cfg["persistent_folders"] = json!(["memory"]);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let out = cli(&["deploy", agent_s, "--server", &p.base_url, "--api-key", &p.key, "--json"]);
        let out = String::from_utf8_lossy(&out).into_owned();
        p.agent_id = runagent::decode::parse_json(&out).ok()
            .and_then(|v| v["agent_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("runagent deploy --json printed {out:?}"));
        p
    }

    /// A client of the platform.
    fn client(&self, tag: &str, edit: impl FnOnce(&mut Config)) -> Client {
        let mut cfg = Config {
            agent_id: self.agent_id.clone(), entrypoint_tag: tag.into(), base_url: Some(self.base_url.clone()),
            api_key: Some(self.key.clone()), ..Default::default()
        };
        edit(&mut cfg);
        Client::new(cfg).expect("Client::new")
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        let mut exited = false;
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            // The whole process group (the server and its agents' processes).
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.tmp); // a failure's message has the server log
    }
}

/// Forwards TCP connections to a server and cuts connection n (from 0) once
/// it has passed `budget(n)` bytes from the server (`None`: never), closing
/// both sides.
struct CuttingProxy {
    port: u16,
    conns: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(target: u16, budget: impl Fn(usize) -> Option<usize> + Send + Sync + 'static) -> CuttingProxy {
        let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = ln.local_addr().unwrap().port();
        let (conns, cuts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let budget = Arc::new(budget);
        let (n_conns, n_cuts) = (conns.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = ln.accept().await {
                let n = n_conns.fetch_add(1, Ordering::SeqCst);
                let (budget, cuts) = (budget(n), n_cuts.clone());
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let upstream = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    });
                    let mut passed = 0usize;
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let k = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        if let Some(b) = budget {
                            if passed + k > b {
                                let _ = cw.write_all(&buf[..b - passed]).await;
                                cuts.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                        if cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        passed += k;
                    }
                    upstream.abort();
                    // Dropping both halves of both sides closes the connections.
                });
            }
        });
        CuttingProxy { port, conns, cuts, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Through the proxy, with quick retries (it cuts often).
fn via(proxy: &CuttingProxy) -> impl FnOnce(&mut Config) {
    let url = proxy.url();
    move |c: &mut Config| {
        c.base_url = Some(url);
        c.retry = RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(50),
            max_elapsed: Some(Duration::from_secs(30)) };
    }
}

fn user(id: &'static str, pm: bool) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.user_id = Some(id.to_string());
        c.persistent_memory = pm;
    }
}

type StepResult = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Calls `f` with a failure's description.
fn fail(what: &str) -> impl FnOnce(Error) -> String + '_ {
    move |e| format!("{what}: {e} ({e:?})")
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter().enumerate().all(|(i, c)| [8, 13, 18, 23].contains(&i) || matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && b[14] == b'4' && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn counts(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"i": i})).collect()
}

/// The items of a stream: chunks as values, per-chunk errors as
/// "CHUNK_ERR:CODE"; the error that ended it apart.
async fn drain<S: futures_util::Stream<Item = Result<Value, Error>> + Unpin>(st: &mut S) -> (Vec<Value>, Option<Error>) {
    let mut got = Vec::new();
    while let Some(item) = st.next().await {
        match item {
            Ok(v) => got.push(v),
            Err(e) if e.is_chunk_error() => got.push(Value::String(format!("CHUNK_ERR:{}", e.code))),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn start_wait(p: &Platform) -> StepResult {
    struct Case {
        name: &'static str,
        tag: &'static str,
        args: Vec<Value>,
        kwargs: Value,
        status: RunStatus,
        want: Value,
        err: Option<(Code, &'static str)>,
    }
    let cases = [
        Case { name: "args", tag: "add", args: vec![2.into(), 40.into()], kwargs: json!({}), status: RunStatus::Completed, want: json!(42), err: None },
        Case { name: "kwargs", tag: "add", args: vec![], kwargs: json!({"a": 20, "b": 22}), status: RunStatus::Completed, want: json!(42), err: None },
        Case { name: "structured", tag: "echo", args: vec!["héllo".into(), 1.5.into()], kwargs: json!({"k": [true, null]}), status: RunStatus::Completed,
            want: json!({"args": ["héllo", 1.5], "kwargs": {"k": [true, null]}}), err: None },
        Case { name: "agent raised", tag: "fail", args: vec![], kwargs: json!({"message": "rust sdk boom"}), status: RunStatus::Failed,
            want: Value::Null, err: Some((Code::Internal, "rust sdk boom")) },
    ];
    for c in cases {
        let name = c.name;
        let client = p.client(c.tag, |_| {});
        let run = client.start_run(c.args.clone(), kw(c.kwargs.clone()), RunOptions::default()).await.map_err(fail(name))?;
        ensure!(run.status == RunStatus::Pending && !run.run_id.is_empty() && !run.replayed
            && run.idempotency_key.as_deref().is_some_and(is_uuid_v4),
            "{name}: start_run = {run:?}; want pending, a run id, not replayed, a generated UUID key");
        let done = client.wait_run(&run.run_id, Duration::from_secs(30)).await.map_err(fail(name))?;
        ensure!(done.status == c.status && done.run_id == run.run_id && done.attempts == 1 && done.background
            && done.entrypoint_tag == c.tag && done.idempotency_key == run.idempotency_key && done.agent_id == p.agent_id,
            "{name}: wait_run = {done:?}");
        ensure!(done.request_time.is_some() && done.started_at.is_some() && done.response_time >= done.request_time
            && done.execution_time.is_some(), "{name}: times of {done:?}");
        ensure!(done.output == c.want, "{name}: output {} want {}", done.output, c.want);
        ensure!(done.input_args == c.args && Value::Object(done.input_kwargs.clone()) == c.kwargs, "{name}: input of {done:?}");
        match c.err {
            None => {
                ensure!(done.error().is_none(), "{name}: error {:?}", done.error());
                if c.tag == "add" {
                    ensure!(done.decode_output::<i64>().ok() == Some(42), "{name}: decode_output");
                }
            }
            Some((code, has)) => {
                let e = done.error().ok_or(format!("{name}: no error"))?;
                ensure!(e.code == code && e.message.contains(has) && done.error_detail.as_deref() == Some(e.message.as_str()),
                    "{name}: error {e:?}, detail {:?}", done.error_detail);
            }
        }
        let got = client.get_run(&run.run_id).await.map_err(fail(name))?;
        ensure!(got.status == c.status && got.output == c.want, "{name}: get_run = {got:?}");
        // Cancelling a run that has ended answers it as it is.
        let ended = client.cancel_run(&run.run_id).await.map_err(fail(name))?;
        ensure!(ended.status == c.status, "{name}: cancel_run of an ended run = {ended:?}");
    }
    Ok(())
}

async fn errors(p: &Platform) -> StepResult {
    let add = p.client("add", |_| {});
    let cases: Vec<(&str, Result<Run, Error>, Code)> = vec![
        ("unknown run", add.get_run("no-such-run").await, Code::NotFound),
        ("wait unknown run", add.wait_run("no-such-run", Duration::from_secs(1)).await, Code::NotFound),
        ("unknown entrypoint", p.client("nope", |_| {}).start_run(vec![], Map::new(), RunOptions::default()).await, Code::NotFound),
        ("multitask without thread", add.start_run(vec![1.into(), 2.into()], Map::new(),
            RunOptions { multitask: Some(Multitask::Enqueue), ..Default::default() }).await, Code::Validation),
        ("webhook to loopback", add.start_run(vec![1.into(), 2.into()], Map::new(),
            RunOptions { webhook: Some("http://127.0.0.1:9/hook".into()), ..Default::default() }).await, Code::Validation),
    ];
    for (name, got, code) in cases {
        match got {
            Err(e) if e.code == code => {}
            other => return Err(format!("{name}: {other:?}, want {code}")),
        }
    }
    Ok(())
}

async fn idempotency_key(p: &Platform) -> StepResult {
    let c = p.client("add", |_| {});
    let key = format!("rust-sdk-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let opts = RunOptions { idempotency_key: Some(key.clone()), thread_id: Some("rust-thread-1".into()), ..Default::default() };
    let a = c.start_run(vec![1.into(), 2.into()], Map::new(), opts.clone()).await.map_err(fail("start_run"))?;
    let b = c.start_run(vec![1.into(), 2.into()], Map::new(), opts.clone()).await.map_err(fail("start_run again"))?;
    ensure!(a.run_id == b.run_id && !a.replayed && b.replayed && b.idempotency_key.as_deref() == Some(key.as_str()),
        "the same key gave {a:?} then {b:?}; want the same run, the second replayed");
    match c.start_run(vec![5.into(), 5.into()], Map::new(), opts).await {
        Err(e) if e.code == Code::AlreadyExists && e.status == Some(409) && e.field.as_deref() == Some("Idempotency-Key") => {}
        other => return Err(format!("the same key with another input: {other:?}")),
    }
    let done = c.wait_run(&a.run_id, Duration::from_secs(30)).await.map_err(fail("wait_run"))?;
    ensure!(done.status == RunStatus::Completed && done.output == json!(3) && done.thread_id.as_deref() == Some("rust-thread-1")
        && done.idempotency_key.as_deref() == Some(key.as_str()), "wait_run = {done:?}");
    Ok(())
}

async fn retried_create_is_idempotent(p: &Platform) -> StepResult {
    // The first connection is cut as the server answers the create (the run
    // exists): the SDK retries with the same key, and the server answers the
    // run it has.
    let proxy = CuttingProxy::start(p.port, |n| if n == 0 { Some(0) } else { None }).await;
    let run = p.client("add", via(&proxy)).start_run(vec![40.into(), 2.into()], Map::new(), RunOptions::default()).await
        .map_err(fail("start_run through the proxy"))?;
    ensure!(proxy.cuts() == 1 && run.replayed, "cuts = {}, run = {run:?}; want the first answer cut and the retry replayed", proxy.cuts());
    let done = p.client("add", |_| {}).wait_run(&run.run_id, Duration::from_secs(30)).await.map_err(fail("wait_run"))?;
    ensure!(done.status == RunStatus::Completed && done.output == json!(42) && done.attempts == 1 && done.idempotency_key == run.idempotency_key,
        "wait_run = {done:?}");
    Ok(())
}

async fn cancel_running(p: &Platform) -> StepResult {
    let marks = p.tmp.join("nap-marks");
    let c = p.client("nap", |_| {});
    let run = c.start_run(vec![marks.to_str().unwrap().into(), 60.into()], Map::new(), RunOptions::default()).await.map_err(fail("start_run"))?;
    let t0 = Instant::now();
    loop {
        let cur = c.get_run(&run.run_id).await.map_err(fail("get_run"))?;
        if cur.status == RunStatus::Running && read(&marks) == "started\n" {
            break;
        }
        ensure!(!cur.is_ended() && t0.elapsed() < Duration::from_secs(20), "the run did not start: {cur:?}, marks {:?}", read(&marks));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cancelled = c.cancel_run(&run.run_id).await.map_err(fail("cancel_run"))?;
    if !cancelled.is_ended() {
        // The cancel is on its way.
        cancelled = c.wait_run(&run.run_id, Duration::from_secs(30)).await.map_err(fail("wait_run"))?;
    }
    ensure!(cancelled.status == RunStatus::Cancelled && cancelled.error_detail.as_deref().is_some_and(|d| d.starts_with("CANCELLED:"))
        && cancelled.output.is_null() && cancelled.error().is_some_and(|e| e.code == Code::Cancelled), "cancelled run = {cancelled:?}");
    let t0 = Instant::now();
    while !read(&marks).contains("cancelled") && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(read(&marks) == "started\ncancelled\n", "the task recorded {:?}; want it started and cancelled", read(&marks));
    Ok(())
}

async fn persistent_memory(p: &Platform) -> StepResult {
    match Client::new(Config { agent_id: p.agent_id.clone(), entrypoint_tag: "remember".into(), base_url: Some(p.base_url.clone()),
        persistent_memory: true, ..Default::default() }) {
        Err(e) if e.code == Code::Validation => {}
        other => return Err(format!("persistent_memory without user_id: {other:?}; want VALIDATION_ERROR")),
    }
    let ana = p.client("remember", user("ana@example.com", true));
    let text = |t: &str| kw(json!({"text": t}));
    let mut notes = String::new();
    // Every kind of run of ana's client sees what the ones before wrote.
    for (i, kind) in ["run", "start_run", "run_stream_resumable", "run_stream"].into_iter().enumerate() {
        let t = format!("[{i}]");
        notes.push_str(&t);
        let got: Value = match kind {
            "run" => ana.run(vec![], text(&t)).await.map_err(fail(kind))?,
            "start_run" => {
                let run = ana.start_run(vec![], text(&t), RunOptions::default()).await.map_err(fail(kind))?;
                let run = ana.wait_run(&run.run_id, Duration::from_secs(30)).await.map_err(fail(kind))?;
                ensure!(run.user_id.as_deref() == Some("ana@example.com"), "the run's user is {:?}", run.user_id);
                if let Some(e) = run.error() {
                    return Err(format!("{kind}: {e}"));
                }
                run.output
            }
            "run_stream_resumable" => {
                let mut st = ana.with_tag("remember_stream").map_err(fail(kind))?.run_stream_resumable(vec![], text(&t)).await.map_err(fail(kind))?;
                let (got, err) = drain(&mut st).await;
                ensure!(err.is_none() && got.len() == 1, "{kind}: {got:?}, {err:?}");
                got[0].clone()
            }
            _ => {
                let mut st = ana.with_tag("remember_stream").map_err(fail(kind))?.run_stream(vec![], text(&t)).await.map_err(fail(kind))?;
                let (got, err) = drain(&mut st).await;
                ensure!(err.is_none() && got.len() == 1, "{kind}: {got:?}, {err:?}");
                got[0].clone()
            }
        };
        ensure!(got == Value::String(notes.clone()), "{kind} as ana: {got}; want her notes {notes:?}");
    }
    let bob = p.client("remember", user("bob", true)).run(vec![], text("b")).await.map_err(fail("bob"))?;
    ensure!(bob == json!("b"), "bob's run = {bob}; want his own notes only");
    // A user without persistent memory runs on the shared instances, which see the bundle's folder.
    let shared = p.client("peek", user("ana@example.com", false)).run(vec![], Map::new()).await.map_err(fail("peek"))?;
    ensure!(shared == json!(""), "peek without persistent memory = {shared}; want nothing");
    let hers = p.client("peek", user("ana@example.com", true)).run(vec![], Map::new()).await.map_err(fail("peek"))?;
    ensure!(hers == Value::String(notes.clone()), "peek as ana = {hers}; want {notes:?}");
    Ok(())
}

async fn resumable_through_cutting_proxy(p: &Platform) -> StepResult {
    let input = || kw(json!({"n": 600, "delay": 0.002}));
    let mut st = p.client("count_stream", |_| {}).run_stream_resumable(vec![], input()).await.map_err(fail("direct"))?;
    let (direct, err) = drain(&mut st).await;
    ensure!(err.is_none() && direct == counts(600), "uninterrupted stream: {} chunks, {err:?}", direct.len());

    let proxy = CuttingProxy::start(p.port, |_| Some(3000)).await;
    let mut st = p.client("count_stream", via(&proxy)).run_stream_resumable(vec![], input()).await
        .map_err(fail("run_stream_resumable through the proxy"))?;
    let (got, err) = drain(&mut st).await;
    ensure!(err.is_none(), "through the proxy: ended with {err:?} after {} chunks ({} cuts)", got.len(), proxy.cuts());
    ensure!(got == direct, "through the proxy: {} chunks, not those of the uninterrupted stream ({})", got.len(), direct.len());
    ensure!(proxy.cuts() >= 5, "the proxy cut the stream {} times: the test would prove nothing", proxy.cuts());
    eprintln!("  {} chunks through {} connections, {} of them cut; {} re-joins", got.len(), proxy.conns(), proxy.cuts(), st.reconnects());
    let run_id = st.run_id().unwrap_or_default();
    ensure!(st.last_event_id().as_deref() == Some("599") && !run_id.is_empty() && st.invocation_id().as_deref() == Some(run_id.as_str())
        && st.reconnects() >= 5, "{st:?}, invocation {:?}", st.invocation_id());
    // One run, streamed once to its end.
    let run = p.client("count_stream", |_| {}).wait_run(&run_id, Duration::from_secs(30)).await.map_err(fail("wait_run"))?;
    ensure!(run.status == RunStatus::Completed && !run.background, "the stream's run: {run:?}");
    Ok(())
}

async fn resumable_stream(p: &Platform) -> StepResult {
    struct Case {
        name: &'static str,
        tag: &'static str,
        kwargs: Value,
        start_err: Option<Code>,
        want: Vec<Value>,
        err: Option<(Code, &'static str)>,
    }
    let cases = [
        Case { name: "chunks", tag: "count_stream", kwargs: json!({"n": 3}), start_err: None, want: counts(3), err: None },
        Case { name: "no chunks", tag: "count_stream", kwargs: json!({"n": 0}), start_err: None, want: vec![], err: None },
        Case { name: "async generator", tag: "count_async_stream", kwargs: json!({"n": 3}), start_err: None, want: vec![json!(0), json!(1), json!(2)], err: None },
        Case { name: "agent raised", tag: "fail_stream", kwargs: json!({"after": 2}), start_err: None, want: vec![json!("chunk 0"), json!("chunk 1")],
            err: Some((Code::Internal, "failed after 2 chunks")) },
        Case { name: "unknown entrypoint", tag: "nope_stream", kwargs: json!({}), start_err: Some(Code::NotFound), want: vec![], err: None },
        Case { name: "plain entrypoint", tag: "add", kwargs: json!({}), start_err: Some(Code::Validation), want: vec![], err: None },
    ];
    for c in cases {
        let name = c.name;
        let started = p.client(c.tag, |_| {}).run_stream_resumable(vec![], kw(c.kwargs)).await;
        let mut st = match (started, c.start_err) {
            (Err(e), Some(code)) if e.code == code => continue,
            (Ok(st), None) => st,
            (other, want) => return Err(format!("{name}: run_stream_resumable = {other:?}, want error {want:?}")),
        };
        let (got, err) = drain(&mut st).await;
        ensure!(got == c.want, "{name}: chunks {got:?}, want {:?}", c.want);
        match (err, c.err) {
            (None, None) => {}
            (Some(e), Some((code, has))) if e.code == code && e.message.contains(has) => {}
            (err, want) => return Err(format!("{name}: error {err:?}, want {want:?}")),
        }
    }
    Ok(())
}

async fn join_stream(p: &Platform) -> StepResult {
    let c = p.client("count_stream", |_| {});
    let mut st = c.run_stream_resumable(vec![], kw(json!({"n": 5}))).await.map_err(fail("run_stream_resumable"))?;
    // Read two chunks and leave: the run goes on without its client.
    for _ in 0..2 {
        st.next().await.ok_or("the stream ended early")?.map_err(fail("chunk"))?;
    }
    ensure!(st.last_event_id().as_deref() == Some("1"), "last event id {:?}", st.last_event_id());
    let run_id = st.run_id().ok_or("no run id")?;
    drop(st);
    for (after, want) in [(Some("1"), counts(5)[2..].to_vec()), (Some("3"), counts(5)[4..].to_vec()), (None, counts(5)), (Some("4"), vec![])] {
        let mut again = c.join_stream(&run_id, after).await.map_err(fail("join_stream"))?;
        let (got, err) = drain(&mut again).await;
        ensure!(err.is_none() && got == want, "after {after:?}: {got:?}, {err:?}; want {want:?}");
    }
    // A WebSocket stream keeps no event log; an unknown run is unknown.
    let mut ws = c.run_stream(vec![], kw(json!({"n": 1}))).await.map_err(fail("run_stream"))?;
    let invocation = ws.invocation_id().map(str::to_string).ok_or("no invocation id")?;
    let (_, err) = drain(&mut ws).await;
    ensure!(err.is_none(), "run_stream: {err:?}");
    for id in [invocation.as_str(), "no-such-run"] {
        match c.join_stream(id, None).await {
            Err(e) if e.code == Code::NotFound => {}
            other => return Err(format!("join_stream({id}) = {other:?}, want NOT_FOUND")),
        }
    }
    Ok(())
}

async fn cancel_resumable_stream(p: &Platform) -> StepResult {
    let marks = p.tmp.join("ticks");
    let c = p.client("tick_stream", |_| {});
    let mut st = c.run_stream_resumable(vec![], kw(json!({"path": marks.to_str().unwrap(), "n": 1000, "interval": 0.05}))).await
        .map_err(fail("run_stream_resumable"))?;
    let first = st.next().await.ok_or("no first chunk")?.map_err(fail("first chunk"))?;
    ensure!(first == json!({"tick": 0}), "first chunk {first}");
    c.cancel_run(&st.run_id().ok_or("no run id")?).await.map_err(fail("cancel_run"))?;
    let (rest, err) = drain(&mut st).await;
    ensure!(err.as_ref().is_some_and(|e| e.code == Code::Cancelled), "the stream ended with {err:?}; want CANCELLED");
    ensure!(rest.len() + 1 < 1000, "the stream ran to its end ({} chunks) despite the cancel", rest.len() + 1);
    let t0 = Instant::now();
    while !read(&marks).contains("cancelled") && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(read(&marks).starts_with("started\ncancelled "), "the generator recorded {:?}; want it started and cancelled", read(&marks));
    Ok(())
}

/// The blocking client, from a plain thread.
async fn blocking_client(p: &Platform) -> StepResult {
    let cfg = |tag: &str| Config { agent_id: p.agent_id.clone(), entrypoint_tag: tag.into(), base_url: Some(p.base_url.clone()),
        api_key: Some(p.key.clone()), ..Default::default() };
    let (add_cfg, stream_cfg) = (cfg("add"), cfg("count_stream"));
    let t = std::thread::spawn(move || -> StepResult {
        let c = runagent::blocking::Client::new(add_cfg).map_err(fail("new"))?;
        let run = c.start_run(vec![40.into(), 2.into()], Map::new(), RunOptions::default()).map_err(fail("start_run"))?;
        let done = c.wait_run(&run.run_id, Duration::from_secs(30)).map_err(fail("wait_run"))?;
        ensure!(done.status == RunStatus::Completed && done.output == json!(42), "wait_run = {done:?}");
        ensure!(c.get_run(&run.run_id).map_err(fail("get_run"))?.status == RunStatus::Completed, "get_run");
        ensure!(c.cancel_run(&run.run_id).map_err(fail("cancel_run"))?.status == RunStatus::Completed, "cancel_run");
        let s = runagent::blocking::Client::new(stream_cfg).map_err(fail("new"))?;
        let st = s.run_stream_resumable(vec![], kw(json!({"n": 3}))).map_err(fail("run_stream_resumable"))?;
        let run_id = st.run_id().ok_or("no run id")?;
        let got: Result<Vec<Value>, Error> = st.collect();
        ensure!(got.as_ref().ok() == Some(&counts(3)), "run_stream_resumable: {got:?}");
        let got: Result<Vec<Value>, Error> = s.join_stream(&run_id, Some("0")).map_err(fail("join_stream"))?.collect();
        ensure!(got.as_ref().ok() == Some(&counts(3)[1..].to_vec()), "join_stream: {got:?}");
        Ok(())
    });
    tokio::task::spawn_blocking(move || t.join().unwrap_or_else(|_| Err("the thread panicked".into()))).await.map_err(|e| e.to_string())?
}

/// One server for every step (its start-up and deploy are most of the
/// time); each step is timed, and every failure reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_runs() {
    let t0 = Instant::now();
    let p = tokio::task::block_in_place(Platform::start);
    eprintln!("platform: server started and agent deployed in {:.2?}", t0.elapsed());
    let mut failures = Vec::new();
    macro_rules! step {
        ($name:ident) => {{
            let t = Instant::now();
            let r = match tokio::time::timeout(Duration::from_secs(90), $name(&p)).await {
                Ok(r) => r,
                Err(_) => Err("no end within 90s".to_string()),
            };
            eprintln!("step {}: {} ({:.2?})", stringify!($name), if r.is_ok() { "ok" } else { "FAILED" }, t.elapsed());
            if let Err(e) = r {
                failures.push(format!("{}: {e}", stringify!($name)));
            }
        }};
    }
    step!(start_wait);
    step!(errors);
    step!(idempotency_key);
    step!(retried_create_is_idempotent);
    step!(cancel_running);
    step!(persistent_memory);
    step!(resumable_through_cutting_proxy);
    step!(resumable_stream);
    step!(join_stream);
    step!(cancel_resumable_stream);
    step!(blocking_client);
    eprintln!("platform: all steps in {:.2?}", t0.elapsed());
    if !failures.is_empty() {
        let logs = p.logs();
        panic!("{} platform failures:\n{}\nserver log (tail):\n{logs}", failures.len(), failures.join("\n"));
    }
}

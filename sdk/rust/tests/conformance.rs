//! Runs every case of testdata/conformance/cases.json against the real
//! `runagent serve` (docs/sdk-contract.md, "Conformance suite"). With
//! RUNAGENT_CONFORMANCE_BASE_URL, RUNAGENT_CONFORMANCE_AGENT_ID and
//! RUNAGENT_CONFORMANCE_API_KEY, `conformance` runs against that deployed
//! agent instead (the Go end-to-end suite runs it so through a cluster's
//! gateway).
use runagent::{Client, Code, Config, Map, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn parse(text: &str) -> Value {
    runagent::decode::parse_json(text).expect("valid JSON")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("runagent-rust-{}-{}-{name}", std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The Go binary, built at most once per test run: `$RUNAGENT_BIN` when set,
/// else `bin/runagent` when it exists (and `RUNAGENT_FORCE_GO_BUILD` is unset),
/// else `CGO_ENABLED=0 go build -o <target tmp>/runagent ./cmd/runagent`.
fn binary(_tmp: &Path) -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("RUNAGENT_BIN") {
            return PathBuf::from(b);
        }
        let prebuilt = Path::new(REPO).join("bin/runagent");
        if prebuilt.exists() && std::env::var_os("RUNAGENT_FORCE_GO_BUILD").is_none() {
            return prebuilt;
        }
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runagent");
        let st = Command::new("go").args(["build", "-o"]).arg(&out).arg("./cmd/runagent")
            .current_dir(REPO).env("CGO_ENABLED", "0").status().expect("go build");
        assert!(st.success(), "go build failed");
        out
    }).clone()
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The whole process group (the server and its Python runner).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (xs, ys) = (x.to_string(), y.to_string());
            let int = |s: &str| !s.contains(['.', 'e', 'E']);
            if int(&xs) && int(&ys) { xs == ys } else { xs.parse::<f64>().ok() == ys.parse::<f64>().ok() }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

fn generated(spec: &Value) -> Value {
    if let Some(r) = spec.get("repeat").and_then(Value::as_str) {
        return Value::String(r.repeat(spec["count"].as_u64().unwrap() as usize));
    }
    if let Some(n) = spec.get("nest").and_then(Value::as_u64) {
        let mut v = Value::String("core".into());
        for _ in 0..n {
            v = Value::Array(vec![v]);
        }
        return v;
    }
    panic!("unknown generate spec {spec}");
}

/// Where the suite's agent is served: `runagent serve` here on a port, or
/// a deployed agent behind a base URL and an API key.
enum Target {
    Local(u16),
    Remote { base_url: String, api_key: String },
}

impl Target {
    fn config(&self, agent_id: &str, tag: &str) -> Config {
        let base = Config { agent_id: agent_id.into(), entrypoint_tag: tag.into(), ..Default::default() };
        match self {
            Target::Local(port) => Config { local: true, host: Some("127.0.0.1".into()), port: Some(*port), ..base },
            Target::Remote { base_url, api_key } => Config { base_url: Some(base_url.clone()), api_key: Some(api_key.clone()), ..base },
        }
    }
}

/// `runagent serve` of the suite's template with its serve_args, healthy:
/// the agent id, the port and the server (stopped when dropped).
fn serve_showcase(suite: &Value, tmp: &Path) -> (String, u16, Server) {
    let bin = binary(tmp);
    let agent = tmp.join("agent");
    let cache = tmp.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let out = Command::new(&bin).arg("init").arg(&agent).args(["--template", suite["template"].as_str().unwrap(), "--json"])
        .current_dir(tmp).env("RUNAGENT_CACHE_DIR", &cache).output().expect("runagent init");
    assert!(out.status.success(), "runagent init: {}", String::from_utf8_lossy(&out.stderr));
    let id = parse(std::str::from_utf8(&out.stdout).unwrap())["agent_id"].as_str().expect("agent_id").to_string();

    let port = free_port();
    let serve_args: Vec<String> = suite["serve_args"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let child = Command::new(&bin).arg("serve").arg(&agent).args(["--port", &port.to_string()]).args(&serve_args)
        .env("RUNAGENT_CACHE_DIR", &cache).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0)
        .spawn().expect("runagent serve");
    let mut server = Server { child };
    let t0 = Instant::now();
    while !healthy(port) {
        assert!(server.child.try_wait().unwrap().is_none(), "runagent serve exited during start-up");
        assert!(t0.elapsed() < Duration::from_secs(60), "runagent serve not healthy after 60s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (id, port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let suite = parse(&std::fs::read_to_string(Path::new(REPO).join("testdata/conformance/cases.json")).unwrap());
    let tmp = temp_dir("conformance");
    let (id, target, server) = match std::env::var("RUNAGENT_CONFORMANCE_BASE_URL") {
        Ok(base) => {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("RUNAGENT_CONFORMANCE_BASE_URL needs {k}"));
            (var("RUNAGENT_CONFORMANCE_AGENT_ID"), Target::Remote { base_url: base, api_key: var("RUNAGENT_CONFORMANCE_API_KEY") }, None)
        }
        Err(_) => {
            let (id, port, server) = serve_showcase(&suite, &tmp);
            (id, Target::Local(port), Some(server))
        }
    };
    let config = |tag: &str| target.config(&id, tag);

    let mut failures = Vec::new();
    let cases = suite["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    for c in cases {
        eprintln!("case: {}", c["name"].as_str().unwrap());
        let name = c["name"].as_str().unwrap();
        let tag = c["tag"].as_str().unwrap();
        let mut args: Vec<Value> = c.get("args").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(g) = c.get("generate").and_then(|g| g.get("args")).and_then(Value::as_array) {
            args = g.iter().map(generated).collect();
        }
        let kwargs: Map<String, Value> = c.get("kwargs").and_then(Value::as_object).cloned().unwrap_or_default();
        let client = Client::new(config(tag)).unwrap();
        let call = c.get("call").and_then(Value::as_str).unwrap_or(if tag.ends_with("_stream") { "run_stream" } else { "run" });
        let (mut value, mut chunks, mut err) = (Value::Null, Vec::new(), None);
        let work = async {
            if call == "run" {
                match client.run(args.clone(), kwargs.clone()).await {
                    Ok(v) => value = v,
                    Err(e) => err = Some(e),
                }
            } else {
                use futures_util::StreamExt;
                match client.run_stream(args.clone(), kwargs.clone()).await {
                    Ok(mut st) => {
                        while let Some(item) = st.next().await {
                            match item {
                                Ok(v) => chunks.push(v),
                                Err(e) if e.is_chunk_error() => {}
                                Err(e) => { err = Some(e); break; }
                            }
                        }
                    }
                    Err(e) => err = Some(e),
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), work).await.is_err() {
            failures.push(format!("{name}: no answer within 60s"));
            continue;
        }
        let e = &c["expect"];
        let mut fail = |m: String| failures.push(format!("{name}: {m}"));
        if let Some(want) = e.get("error") {
            let code = Code::parse(want["code"].as_str().unwrap());
            let contains = want.get("message_contains").and_then(Value::as_str).unwrap_or("");
            match &err {
                Some(got) if got.code == code && got.to_string().contains(contains) => {}
                other => fail(format!("error = {other:?}, want {code} containing {contains:?}")),
            }
        } else if let Some(got) = &err {
            fail(format!("unexpected error: {got}"));
        }
        if let Some(want) = e.get("value") {
            if !same(&value, want) {
                fail(format!("value = {value}, want {want}"));
            }
        } else if e.get("echo_args").and_then(Value::as_bool) == Some(true) {
            let want = serde_json::json!({"args": args, "kwargs": kwargs});
            if !same(&value, &want) {
                fail(format!("echo came back different ({} bytes sent)", want.to_string().len()));
            }
        }
        if let Some(want) = e.get("chunks") {
            if !same(&Value::Array(chunks.clone()), want) {
                fail(format!("chunks = {chunks:?}, want {want}"));
            }
        }
        if let Some(n) = e.get("chunk_count").and_then(Value::as_u64) {
            if chunks.len() as u64 != n {
                fail(format!("{} chunks, want {n}", chunks.len()));
            }
        }
    }
    // Dropping a stream closes the socket; the server stops the generator (its finally runs).
    let ticks = tmp.join("ticks.txt");
    let client = Client::new(config("tick_stream")).unwrap();
    let mut kw = Map::new();
    kw.insert("path".into(), Value::String(ticks.to_string_lossy().into_owned()));
    kw.insert("interval".into(), Value::from(0.05));
    {
        use futures_util::StreamExt;
        let mut st = client.run_stream(vec![], kw.clone()).await.unwrap();
        assert!(st.invocation_id().is_some());
        for _ in 0..3 {
            st.next().await.unwrap().unwrap();
        }
    }
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(&ticks).unwrap_or_default();
        if log.contains("cancelled") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            failures.push(format!("dropped stream: the generator was not stopped: {log:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The blocking client, from a plain thread.
    let add = config("add");
    let blocking = std::thread::spawn(move || {
        let c = runagent::blocking::Client::new(add).unwrap();
        let sum = c.run(vec![40.into(), 2.into()], Map::new()).unwrap();
        let mut kw = Map::new();
        kw.insert("n".into(), Value::from(3));
        // The guardrail: a plain tag with run_stream.
        assert_eq!(c.run_stream(vec![], Map::new()).unwrap_err().code, Code::Validation);
        let got: Result<Vec<Value>, _> = c.with_tag("count_stream").unwrap().run_stream(vec![], kw).unwrap().collect();
        (sum, got.unwrap())
    }).join().unwrap();
    if !same(&blocking.0, &Value::from(42)) || blocking.1.len() != 3 {
        failures.push(format!("blocking client: {blocking:?}"));
    }

    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{} conformance failures:\n{}", failures.len(), failures.join("\n"));
}

/// A call made while the server is down is retried until it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_server_restart() {
    let tmp = temp_dir("restart");
    let bin = binary(&tmp);
    let agent = tmp.join("agent");
    let cache = tmp.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let out = Command::new(&bin).arg("init").arg(&agent).args(["--template", "default", "--json"])
        .current_dir(&tmp).env("RUNAGENT_CACHE_DIR", &cache).output().expect("runagent init");
    assert!(out.status.success(), "runagent init: {}", String::from_utf8_lossy(&out.stderr));
    let id = parse(std::str::from_utf8(&out.stdout).unwrap())["agent_id"].as_str().unwrap().to_string();
    let port = free_port();
    let client = Client::new(Config {
        agent_id: id, entrypoint_tag: "minimal".into(), local: true, host: Some("127.0.0.1".into()), port: Some(port),
        retry: runagent::RetryPolicy { max_attempts: 30, initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500), max_elapsed: Some(Duration::from_secs(45)) },
        ..Default::default()
    }).unwrap();
    let mut kw = Map::new();
    kw.insert("message".into(), Value::from("are you back?"));
    let call = tokio::spawn(async move { client.run(vec![], kw).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished(), "the call ended while the server was down: {:?}", call.await);
    let child = Command::new(&bin).arg("serve").arg(&agent).args(["--port", &port.to_string()])
        .env("RUNAGENT_CACHE_DIR", &cache).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0)
        .spawn().expect("runagent serve");
    let server = Server { child };
    let got = tokio::time::timeout(Duration::from_secs(60), call).await.expect("no answer after the restart").unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
    let v = got.expect("the retried call failed");
    assert!(v.as_str().is_some_and(|s| !s.is_empty()), "result {v}");
}

use crate::client::{frame_error, http_error, parse_envelope};
use crate::decode::{decode_structured, number_f64, parse_json};
use crate::error::{classify_message, parse_retry_after};
use crate::*;
use std::time::{Duration, SystemTime};

/// Compares JSON values by value: integers exactly (by digits), other
/// numbers as f64, objects regardless of key order.
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (xs, ys) = (x.to_string(), y.to_string());
            let int = |s: &str| !s.contains(['.', 'e', 'E']);
            if int(&xs) && int(&ys) {
                xs == ys
            } else {
                number_f64(a) == number_f64(b)
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn serializer_vectors() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/serializer/vectors.json");
    let text = std::fs::read_to_string(path).expect("vectors.json");
    let vectors = parse_json(&text).unwrap();
    let vectors = vectors.as_array().unwrap();
    assert!(vectors.len() >= 100, "only {} vectors", vectors.len());
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let s = v["structured"].as_str().unwrap();
        let got = decode_structured(s).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(same(&got, &v["decoded"]), "{name}: got {got}, want {}", v["decoded"]);
        // The same value as a REST `data` field (a JSON string).
        let data = decode_data(&Value::String(s.to_string())).unwrap();
        assert!(same(&data, &v["decoded"]), "{name} as data");
    }
}

#[test]
fn big_integers_keep_their_digits() {
    let v = decode_structured(r#"{"type":"array","payload":"[1267650600228229401496703205376, -9223372036854775808, 18446744073709551616, 1.0]"}"#).unwrap();
    assert_eq!(v.to_string(), "[1267650600228229401496703205376,-9223372036854775808,18446744073709551616,1.0]");
    assert_eq!(v[1].as_i64(), Some(i64::MIN));
}

#[test]
fn non_finite_tokens() {
    let v = decode_structured(r#"{"type":"array","payload":"[NaN, Infinity, -Infinity, \"NaN Infinity\"]"}"#).unwrap();
    assert!(v[0].is_null());
    assert_eq!(number_f64(&v[1]), Some(f64::INFINITY));
    assert_eq!(number_f64(&v[2]), Some(f64::NEG_INFINITY));
    assert_eq!(v[3], "NaN Infinity");
}

#[test]
fn deep_nesting() {
    let n = 500;
    let payload = format!("{}\"core\"{}", "[".repeat(n), "]".repeat(n));
    let s = serde_json::json!({"type": "array", "payload": payload}).to_string();
    let mut v = &decode_structured(&s).unwrap();
    for _ in 0..n {
        v = &v[0];
    }
    assert_eq!(v, "core");
    let too_deep = format!("{}{}", "[".repeat(decode::MAX_DEPTH + 1), "]".repeat(decode::MAX_DEPTH + 1));
    assert!(parse_json(&too_deep).is_err());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for s in ["", "{", "[]", "42", r#"{"foo":1}"#, r#"{"type":"array","payload":"[1,"}"#, "\u{0}", r#"{"type":"object","payload":"{\"a\":"}"#] {
        let e = decode_structured(s).unwrap_err();
        assert_eq!(e.code, Code::Internal, "{s:?}");
    }
    // An unencoded string payload is the text itself.
    assert_eq!(decode_structured(r#"{"type":"string","payload":"plain text"}"#).unwrap(), "plain text");
    // Lenient data forms.
    assert_eq!(decode_data(&Value::Null).unwrap(), Value::Null);
    assert_eq!(decode_data(&serde_json::json!({"type":"integer","payload":"7"})).unwrap(), 7);
    assert_eq!(decode_data(&serde_json::json!([1])).unwrap(), serde_json::json!([1]));
}

#[test]
fn envelope_success_and_agent_error() {
    let ok = br#"{"success":true,"data":"{\"type\": \"integer\", \"payload\": \"42\"}","message":"ok","error":null,"request_id":"r1"}"#;
    assert_eq!(parse_envelope(200, None, ok).unwrap(), 42);
    let fail = br#"{"success":false,"data":null,"error":{"code":"INTERNAL_ERROR","message":"Agent execution failed: boom"},"request_id":"r2"}"#;
    let e = parse_envelope(200, None, fail).unwrap_err();
    assert_eq!((e.code.clone(), e.status, e.request_id.as_deref()), (Code::Internal, Some(200), Some("r2")));
    assert!(e.message.contains("boom"));
    let e = parse_envelope(200, None, b"<html>").unwrap_err();
    assert_eq!(e.code, Code::Internal);
    let e = parse_envelope(200, None, br#"{"success":false}"#).unwrap_err();
    assert_eq!(e.code, Code::Internal);
}

#[test]
fn http_status_mapping() {
    let cases = [
        (400, Code::Validation), (401, Code::Authentication), (403, Code::Permission), (404, Code::NotFound),
        (413, Code::Validation), (422, Code::Validation), (429, Code::RateLimitExceeded), (500, Code::Internal),
        (502, Code::AgentCrashed), (503, Code::Overloaded), (504, Code::Timeout), (418, Code::Internal),
        (409, Code::AlreadyExists),
    ];
    for (status, code) in cases {
        let e = http_error(status, None, b"");
        assert_eq!(e.code, code, "{status}");
        assert_eq!(e.status, Some(status));
        assert_eq!(e.is_retryable(), status == 429 || status == 503, "{status}");
    }
    // The envelope's code wins over the status.
    let e = http_error(404, Some(Duration::from_secs(2)), br#"{"success":false,"error":{"code":"VALIDATION_ERROR","message":"bad","field":"input_args"},"request_id":"x"}"#);
    assert_eq!((e.code.clone(), e.message.as_str(), e.field.as_deref()), (Code::Validation, "bad", Some("input_args")));
    assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
    // Unknown codes are kept.
    let e = http_error(500, None, br#"{"success":false,"error":{"code":"QUOTA","message":"m"}}"#);
    assert_eq!(e.code, Code::Other("QUOTA".into()));
    assert_eq!(e.code.as_str(), "QUOTA");
    // FastAPI's detail.
    let e = http_error(422, None, br#"{"detail":[{"loc":["body","x"],"msg":"field required"}]}"#);
    assert_eq!(e.code, Code::Validation);
    assert!(e.message.contains("field required"), "{}", e.message);
    assert!(e.to_string().starts_with("runagent: VALIDATION_ERROR (HTTP 422): "));
}

#[test]
fn code_round_trip() {
    for c in ["AUTHENTICATION_ERROR", "PERMISSION_ERROR", "VALIDATION_ERROR", "NOT_FOUND", "RATE_LIMIT_EXCEEDED",
              "TIMEOUT", "CONNECTION_ERROR", "AGENT_CRASHED", "OVERLOADED", "INTERNAL_ERROR", "CANCELLED",
              "RESOURCE_ALREADY_EXISTS"] {
        let code = Code::parse(c);
        assert!(!matches!(code, Code::Other(_)), "{c}");
        assert_eq!(code.as_str(), c);
    }
}

#[test]
fn websocket_error_frames() {
    let f = |j: &str| frame_error(&parse_json(j).unwrap());
    assert_eq!(f(r#"{"type":"error","detail":"Entrypoint x not found","code":"NOT_FOUND"}"#).code, Code::NotFound);
    assert_eq!(f(r#"{"type":"error","detail":"Entrypoint x not found"}"#).code, Code::NotFound);
    // The agent's own text is never classified.
    assert_eq!(f(r#"{"type":"error","error":"Streaming error: not found timeout"}"#).code, Code::Internal);
    assert_eq!(f(r#"{"type":"error","error":"Agent execution failed: rate limit"}"#).code, Code::Internal);
    assert_eq!(f(r#"{"type":"error","error":"call timed out","code":"TIMEOUT"}"#).code, Code::Timeout);
    let e = f(r#"{"type":"error","error":"Chunk serialization failed: bad"}"#);
    assert!(e.is_chunk_error());
    assert_eq!(e.code, Code::Internal);
    let e = f(r#"{"type":"error","error":"server overloaded"}"#);
    assert!(e.is_retryable() && e.code == Code::Overloaded);
    assert!(!f(r#"{"type":"error","error":"x","code":"INTERNAL_ERROR"}"#).is_retryable());
    assert_eq!(f(r#"{"type":"error"}"#).message, "stream failed");
    assert_eq!(classify_message("missing field input_args"), Code::Validation);
    assert_eq!(classify_message("agent crashed"), Code::AgentCrashed);
}

#[test]
fn retry_after_parsing() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after(" 0.5 ", now), Some(Duration::from_millis(500)));
    assert_eq!(parse_retry_after("0", now), None);
    assert_eq!(parse_retry_after("-1", now), None);
    assert_eq!(parse_retry_after("soon", now), None);
    let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
    assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(10)));
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(10));
    assert_eq!(parse_retry_after(&earlier, now), None);
}

#[test]
fn backoff_bounds() {
    let p = RetryPolicy::default();
    assert_eq!(p.max_attempts, 4);
    assert_eq!(p.max_elapsed, Some(Duration::from_secs(30)));
    let caps = [200, 400, 800, 1600, 3200, 5000, 5000];
    for (i, cap) in caps.iter().enumerate() {
        let n = i as u32 + 1;
        assert_eq!(p.backoff_cap(n), Duration::from_millis(*cap), "attempt {n}");
        let mut max_seen = Duration::ZERO;
        for _ in 0..2000 {
            let d = p.backoff(n);
            assert!(d <= Duration::from_millis(*cap));
            max_seen = max_seen.max(d);
        }
        // Full jitter: the draws spread over the whole range.
        assert!(max_seen > Duration::from_millis(*cap) / 2, "attempt {n}: max {max_seen:?}");
    }
    assert_eq!(p.backoff_cap(1000), Duration::from_secs(5));
}

fn failing(code: Code, retryable: bool, retry_after: Option<Duration>) -> Error {
    let mut e = Error::new(code, "x");
    e.retryable = retryable;
    e.retry_after = retry_after;
    e
}

#[tokio::test(start_paused = true)]
async fn retrier_attempts_and_budget() {
    use crate::retry::Retrier;
    // At most 4 attempts: 3 waits, then the last error.
    let mut r = Retrier::new(RetryPolicy::default(), None);
    for _ in 0..3 {
        r.wait(failing(Code::Connection, true, None)).await.unwrap();
    }
    assert_eq!(r.wait(failing(Code::Connection, true, None)).await.unwrap_err().code, Code::Connection);
    // Not retryable: at once.
    let mut r = Retrier::new(RetryPolicy::default(), None);
    assert_eq!(r.wait(failing(Code::NotFound, false, None)).await.unwrap_err().code, Code::NotFound);
    // Retry-After is honoured...
    let mut r = Retrier::new(RetryPolicy::default(), None);
    let t0 = tokio::time::Instant::now();
    r.wait(failing(Code::RateLimitExceeded, true, Some(Duration::from_secs(7)))).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(7));
    // ...unless it would pass the 30 s budget: the error comes back with it.
    let mut r = Retrier::new(RetryPolicy::default(), None);
    let e = r.wait(failing(Code::Overloaded, true, Some(Duration::from_secs(31)))).await.unwrap_err();
    assert_eq!(e.retry_after, Some(Duration::from_secs(31)));
    // ...or the caller's deadline.
    let dl = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut r = Retrier::new(RetryPolicy::default(), Some(dl));
    assert!(r.wait(failing(Code::Overloaded, true, Some(Duration::from_secs(2)))).await.is_err());
    // Switched off.
    let mut r = Retrier::new(RetryPolicy::none(), None);
    assert!(r.wait(failing(Code::Connection, true, None)).await.is_err());
}

#[test]
fn config_and_guardrails() {
    assert_eq!(Client::new(Config::default()).unwrap_err().code, Code::Validation);
    let c = |tag: &str| blocking::Client::new(Config {
        agent_id: "a".into(), entrypoint_tag: tag.into(), local: true, host: Some("127.0.0.1".into()), port: Some(1),
        retry: RetryPolicy::none(), ..Default::default() }).unwrap();
    assert_eq!(c("x_stream").run(vec![], Map::new()).unwrap_err().code, Code::Validation);
    assert_eq!(c("x").run_stream(vec![], Map::new()).unwrap_err().code, Code::Validation);
    // Nothing listens on port 1: a connection error, after no retry.
    assert_eq!(c("x").run(vec![], Map::new()).unwrap_err().code, Code::Connection);
    assert_eq!(c("x_stream").run_stream(vec![], Map::new()).unwrap_err().code, Code::Connection);
}

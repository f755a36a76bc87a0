//! Decoding of "structured strings" (docs/sdk-contract.md, "Decoding").
//!
//! Every `/run` result and every stream chunk is a string holding
//! `{"type": T, "payload": "<the value encoded as JSON>"}`. The outer JSON is
//! decoded, then the payload, into a [`serde_json::Value`]. The crate enables
//! serde_json's `arbitrary_precision`, so integers of any size keep their
//! exact digits and floats their text (`1.0` stays `1.0`).
//!
//! Python's non-JSON tokens in a payload: a bare `NaN` decodes as `null`;
//! a bare `Infinity` / `-Infinity` as the number `1e999` / `-1e999`
//! (serde_json cannot hold a non-finite float; [`number_f64`] turns it into
//! ±infinity). The server itself sends ±infinity as the strings
//! `"inf"`/`"-inf"`, which stay strings.
//!
//! Nesting is accepted up to [`MAX_DEPTH`] levels.
use crate::error::{Code, Error};
use serde::Deserialize;
use serde_json::Value;

/// The deepest nesting of arrays and objects the decoder accepts.
pub const MAX_DEPTH: usize = 2000;

/// Decodes a structured string: the outer JSON, then its payload.
pub fn decode_structured(s: &str) -> Result<Value, Error> {
    let outer = parse_json(s).map_err(|e| Error::malformed(format!("malformed structured value: {e}")))?;
    structured_value(&outer)
}

/// Decodes the outer object of a structured string.
fn structured_value(outer: &Value) -> Result<Value, Error> {
    let obj = match outer.as_object() {
        Some(o) if o.contains_key("type") || o.contains_key("payload") => o,
        _ => return Err(Error::malformed(r#"malformed structured value: no "type" or "payload""#)),
    };
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
    match obj.get("payload") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(inner)) => match parse_json(inner) {
            Ok(v) => Ok(v),
            Err(_) => {
                if let Some(fixed) = replace_non_finite(inner) {
                    if let Ok(v) = parse_json(&fixed) {
                        return Ok(v);
                    }
                }
                if ty == "string" {
                    // A string payload that was not JSON-encoded: the text itself.
                    return Ok(Value::String(inner.clone()));
                }
                Err(Error::malformed("malformed structured value: payload is not JSON"))
            }
        },
        // Not a string: an already decoded payload.
        Some(v) => Ok(v.clone()),
    }
}

/// Decodes the `data` of a `/run` envelope or the `content` of a data frame:
/// normally a JSON string holding a structured string; leniently also a
/// structured object, null, or a plain JSON value.
pub fn decode_data(raw: &Value) -> Result<Value, Error> {
    match raw {
        Value::Null => Ok(Value::Null),
        Value::String(s) => decode_structured(s),
        Value::Object(o) if o.get("type").is_some_and(Value::is_string) && o.contains_key("payload") => {
            structured_value(raw)
        }
        other => Ok(other.clone()),
    }
}

/// Parses JSON text into a Value, with nesting up to [`MAX_DEPTH`].
pub fn parse_json(s: &str) -> Result<Value, Error> {
    if depth(s.as_bytes()) > MAX_DEPTH {
        return Err(Error::new(Code::Internal, format!("JSON nested deeper than {MAX_DEPTH} levels")));
    }
    let mut de = serde_json::Deserializer::from_str(s);
    de.disable_recursion_limit();
    let v = Value::deserialize(&mut de).map_err(|e| Error::malformed(format!("malformed JSON value: {e}")))?;
    de.end().map_err(|e| Error::malformed(format!("malformed JSON value: {e}")))?;
    Ok(v)
}

/// The maximum nesting depth of JSON text (brackets outside strings).
fn depth(b: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut i) = (0usize, 0usize, false, 0);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'[' | b'{' => {
                    d += 1;
                    max = max.max(d);
                }
                b']' | b'}' => d = d.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    max
}

/// Rewrites the bare tokens NaN, Infinity, -Infinity outside strings as
/// null, 1e999, -1e999. None when nothing changed.
pub(crate) fn replace_non_finite(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 8);
    let (mut last, mut i, mut in_str, mut changed) = (0, 0, false, false);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rep = match c {
            b'"' => {
                in_str = true;
                None
            }
            b'N' => Some(("NaN", "null")),
            b'I' => Some(("Infinity", "1e999")),
            b'-' => Some(("-Infinity", "-1e999")),
            _ => None,
        };
        if let Some((tok, repl)) = rep {
            if b[i..].starts_with(tok.as_bytes()) {
                out.push_str(&s[last..i]);
                out.push_str(repl);
                i += tok.len();
                last = i;
                changed = true;
                continue;
            }
        }
        i += 1;
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// A number's value as f64, including the ±infinity of a bare `Infinity`
/// (which [`serde_json::Number::as_f64`] refuses). None for non-numbers.
pub fn number_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.to_string().parse::<f64>().ok(),
        _ => None,
    }
}

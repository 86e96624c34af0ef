//! Reading the scripts' replies: typed errors for a reply of the wrong shape.

use redis::{RedisResult, Value};

use crate::error::{Error, Result};

pub(super) fn protocol(script: &'static str, detail: impl Into<String>) -> Error {
    Error::Protocol {
        script,
        detail: detail.into(),
    }
}

pub(super) fn array(script: &'static str, v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(protocol(
            script,
            format!("expected an array, got {other:?}"),
        )),
    }
}

pub(super) fn fixed<const N: usize>(script: &'static str, items: Vec<Value>) -> Result<[Value; N]> {
    let len = items.len();
    items
        .try_into()
        .map_err(|_| protocol(script, format!("expected {N} items, got {len}")))
}

pub(super) fn string(script: &'static str, v: Value) -> Result<String> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|e| protocol(script, format!("string is not UTF-8: {e}")))
        }
        Value::SimpleString(s) => Ok(s),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(protocol(
            script,
            format!("expected a string, got {other:?}"),
        )),
    }
}

/// Lua hands numbers back either as integers or, where they came from a hash
/// field, as their decimal text; both are accepted.
pub(super) fn int(script: &'static str, v: Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(n),
        Value::BulkString(b) => {
            let text = String::from_utf8_lossy(&b);
            if text.is_empty() {
                return Ok(0);
            }
            text.parse::<i64>()
                .or_else(|_| text.parse::<f64>().map(|f| f as i64))
                .map_err(|_| protocol(script, format!("expected an integer, got {text:?}")))
        }
        Value::Nil => Ok(0),
        other => Err(protocol(
            script,
            format!("expected an integer, got {other:?}"),
        )),
    }
}

pub(super) fn status(script: &'static str, v: Value) -> Result<i32> {
    let n = int(script, v)?;
    i32::try_from(n).map_err(|_| protocol(script, format!("status {n} out of range")))
}

/// True when a script call failed because Redis did not know the script.
pub(super) fn is_noscript(r: &RedisResult<Value>) -> bool {
    matches!(r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// A Redis bulk string, for the parsers' tests.
#[cfg(test)]
pub(super) fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

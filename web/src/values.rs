//! Mutation arguments between JavaScript and Rust: the JSON the glue writes for a JS value and
//! reads back, and its bounds.
//!
//! JSON alone cannot say which number is an integer, nor carry bytes or a bigint, so the glue
//! (`toWire`/`fromWire` in am.js) tags what plain JSON would blur:
//!
//! | JS                            | JSON                          | [`Value`]   |
//! |-------------------------------|-------------------------------|-------------|
//! | `null`                        | `null`                        | `Null`      |
//! | `true`                        | `true`                        | `Bool`      |
//! | a safe integer (not `-0`)     | `7`                           | `Int`       |
//! | a `bigint` within i64         | `{"$i": "9007199254740993"}`  | `Int`       |
//! | any other number              | `{"$f": 0.5}`, `{"$f": "NaN"}`| `Float`     |
//! | a string                      | `"text"`                      | `Str`       |
//! | a `Uint8Array`                | `{"$b": [1, 2]}`              | `Bytes`     |
//! | an array                      | `[...]`                       | `List`      |
//! | a plain object or a `Map`     | `{"$m": {...}}`               | `Map`       |
//!
//! Nesting, argument counts and name lengths are bounded as on the wire, so what a page sends
//! is what a node would accept.

use std::collections::BTreeMap;

use asyncmachine::machine::value::{MAX_ARGS, MAX_DEPTH, MAX_KEY_LEN};
use asyncmachine::machine::{Args, Value};
use serde_json::{Map, Number, Value as Json, json};

/// Why a JSON value is not an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The arguments of a mutation, from `{"name": tagged value, ...}` (or `null`: none).
pub fn args_from_json(json: &Json) -> Result<Args, BadValue> {
    let map = match json {
        Json::Null => return Ok(Args::new()),
        Json::Object(map) => map,
        _ => {
            return Err(BadValue(
                "arguments must be an object of names to values".into(),
            ));
        }
    };
    if map.len() > MAX_ARGS {
        return Err(BadValue(format!(
            "{} arguments; a mutation carries at most {MAX_ARGS}",
            map.len()
        )));
    }
    let mut args = Args::new();
    for (name, value) in map {
        if name.len() > MAX_KEY_LEN {
            return Err(BadValue(format!(
                "an argument name of {} bytes is over the limit of {MAX_KEY_LEN}",
                name.len()
            )));
        }
        args.insert(name.clone(), value_from_json(value, 0, name)?);
    }
    Ok(args)
}

/// Arguments as tagged JSON, for the glue to turn back into JS values.
pub fn args_to_json(args: &Args) -> Json {
    Json::Object(
        args.iter()
            .map(|(k, v)| (k.to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_from_json(json: &Json, depth: usize, path: &str) -> Result<Value, BadValue> {
    let deeper = |depth: usize| {
        if depth + 1 > MAX_DEPTH {
            Err(BadValue(format!(
                "{path} nests deeper than {MAX_DEPTH} levels, the protocol's limit"
            )))
        } else {
            Ok(depth + 1)
        }
    };
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => {
            let inner = deeper(depth)?;
            let list = items
                .iter()
                .enumerate()
                .map(|(i, v)| value_from_json(v, inner, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?;
            Value::List(list)
        }
        Json::Object(map) => tagged(map, depth, path, deeper)?,
    })
}

fn tagged(
    map: &Map<String, Json>,
    depth: usize,
    path: &str,
    deeper: impl Fn(usize) -> Result<usize, BadValue>,
) -> Result<Value, BadValue> {
    let bad = || {
        BadValue(format!(
            "{path}: an object from the glue must have one tag ($i, $f, $b or $m)"
        ))
    };
    let (tag, inner) = match map.iter().next() {
        Some(entry) if map.len() == 1 => entry,
        _ => return Err(bad()),
    };
    match (tag.as_str(), inner) {
        ("$i", Json::String(text)) => text.parse::<i64>().map(Value::Int).map_err(|_| {
            BadValue(format!(
                "{path} = {text} is outside Int's range (a signed 64-bit integer)"
            ))
        }),
        ("$f", Json::Number(n)) => Ok(Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        ("$f", Json::String(special)) => match special.as_str() {
            "NaN" => Ok(Value::Float(f64::NAN)),
            "Infinity" => Ok(Value::Float(f64::INFINITY)),
            "-Infinity" => Ok(Value::Float(f64::NEG_INFINITY)),
            "-0" => Ok(Value::Float(-0.0)),
            _ => Err(bad()),
        },
        ("$b", Json::Array(bytes)) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .map(Value::Bytes)
            .ok_or_else(|| BadValue(format!("{path}: bytes must be numbers 0-255"))),
        ("$m", Json::Object(entries)) => {
            let inner = deeper(depth)?;
            let mut out = BTreeMap::new();
            for (k, v) in entries {
                out.insert(
                    k.clone(),
                    value_from_json(v, inner, &format!("{path}.{k}"))?,
                );
            }
            Ok(Value::Map(out))
        }
        _ => Err(bad()),
    }
}

/// A value as tagged JSON.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        // Beyond 2^53 a JS number is not exact: the glue makes those bigints.
        Value::Int(i) if i.unsigned_abs() < (1 << 53) => Json::Number((*i).into()),
        Value::Int(i) => json!({ "$i": i.to_string() }),
        Value::Float(f) => match Number::from_f64(*f) {
            Some(n) if !(*f == 0.0 && f.is_sign_negative()) => json!({ "$f": n }),
            _ if f.is_nan() => json!({ "$f": "NaN" }),
            _ if *f == f64::INFINITY => json!({ "$f": "Infinity" }),
            _ if *f == f64::NEG_INFINITY => json!({ "$f": "-Infinity" }),
            _ => json!({ "$f": "-0" }),
        },
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => json!({ "$b": b }),
        Value::List(items) => Json::Array(items.iter().map(value_to_json).collect()),
        Value::Map(map) => json!({
            "$m": map.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect::<Map<_, _>>()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let args = Args::new()
            .with("null", Value::Null)
            .with("bool", true)
            .with("int", -7i64)
            .with("big", i64::MAX)
            .with("float", 0.5f64)
            .with("whole_float", 2.0f64)
            .with("nan", f64::NAN)
            .with("inf", f64::NEG_INFINITY)
            .with("neg_zero", -0.0f64)
            .with("str", "ü")
            .with("bytes", Value::Bytes(vec![0, 255]))
            .with(
                "list",
                Value::List(vec![Value::Int(1), Value::Str("a".into())]),
            )
            .with(
                "map",
                Value::Map(BTreeMap::from([("k".to_owned(), Value::Bool(false))])),
            );
        let json = args_to_json(&args);
        assert_eq!(json["big"], json!({ "$i": "9223372036854775807" }));
        assert_eq!(json["whole_float"], json!({ "$f": 2.0 }));
        let back = args_from_json(&json).expect("valid");
        assert_eq!(back.len(), args.len());
        for (k, v) in args.iter() {
            let got = back.get(k).expect("present");
            match (v, got) {
                (Value::Float(a), Value::Float(b)) if a.is_nan() => assert!(b.is_nan()),
                (Value::Float(a), Value::Float(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{k}")
                }
                _ => assert_eq!(v, got, "{k}"),
            }
        }
    }

    #[test]
    fn bounds_are_the_wire_bounds() {
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        assert!(args_from_json(&json!({ "ok": deep.clone() })).is_ok());
        let e = args_from_json(&json!({ "x": [deep] })).expect_err("too deep");
        assert!(e.0.contains("deeper than 32"), "{e}");
        let many: Map<String, Json> = (0..=MAX_ARGS).map(|i| (i.to_string(), json!(i))).collect();
        assert!(args_from_json(&Json::Object(many)).is_err());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(args_from_json(&json!({ long: 1 })).is_err());
        assert!(args_from_json(&json!({ "x": { "$i": "99999999999999999999" } })).is_err());
        assert!(args_from_json(&json!({ "x": { "plain": 1 } })).is_err());
        assert!(args_from_json(&json!({ "x": { "$b": [256] } })).is_err());
        assert!(args_from_json(&json!([1])).is_err());
    }
}

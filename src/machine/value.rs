//! Mutation arguments: typed values that any language can produce and read.
//!
//! Arguments cross the wire to other languages (the browser client among them), so they are a
//! closed set of plain data types, never Rust-specific blobs.
//!
//! Lists and maps nest, so a value is the one recursive type a peer sends: decoding one is
//! bounded by [`MAX_DEPTH`] while it decodes (a hand-written `Deserialize` carries the depth
//! down), so a hostile argument nested 10,000 deep costs an error, not the stack. Values built
//! locally are not checked: only what crosses the wire is.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// How deep lists and maps may nest in one decoded value: a scalar is depth 0, `[1]` depth 1,
/// `[[1]]` depth 2. Deeper values are a decoding error (PROTOCOL.md, "Limits"); 32 levels are
/// far more than any argument needs and a few kilobytes of stack to decode.
pub const MAX_DEPTH: usize = 32;

/// Most named arguments in one mutation from the wire.
pub const MAX_ARGS: usize = 256;

/// Longest argument name from the wire, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Elements reserved up front for a decoded list, whatever count it claims: a claimed count is
/// only a promise, so the rest grows as elements really arrive.
const LIST_PREALLOC: usize = 64;

/// One argument value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    /// No value (JSON `null`).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Str(String),
    /// Raw bytes (a JSON array of numbers when shown as JSON).
    Bytes(Vec<u8>),
    /// A list; lists and maps nest at most [`MAX_DEPTH`] levels on the wire.
    List(Vec<Value>),
    /// Values by key, ordered by key.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// How deep lists and maps nest in this value (0 for a scalar). Walks with a heap stack, so
    /// even a value nested past any limit is measured without deep recursion.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut pending = vec![(self, 0)];
        while let Some((value, depth)) = pending.pop() {
            match value {
                Value::List(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
                Value::Map(map) => pending.extend(map.values().map(|v| (v, depth + 1))),
                _ => continue,
            }
            deepest = deepest.max(depth + 1);
        }
        deepest
    }

    /// The integer, if this is an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The number, if this is a `Float` or an `Int` (converted, possibly losing precision).
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The boolean, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The text, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if this is `Bytes`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// A value typed from text a person wrote (a command line): an integer if it reads as one
    /// (`3`, `-7`), else a float (`0.5`, `1e3`, `inf`), else a boolean (`true`, `false`), else
    /// the text itself as a string (`on`, `"3"` with its quotes). Never `Null`, bytes, lists
    /// or maps.
    pub fn from_text(text: &str) -> Value {
        if let Ok(i) = text.parse::<i64>() {
            Value::Int(i)
        } else if let Ok(f) = text.parse::<f64>() {
            Value::Float(f)
        } else if let Ok(b) = text.parse::<bool>() {
            Value::Bool(b)
        } else {
            Value::Str(text.to_owned())
        }
    }
}

/// Parses one named argument as a person writes it, `key=value` (e.g. `am-node add --arg
/// op=3`): the key is the text before the first `=`, the value the rest, typed by
/// [`Value::from_text`].
pub fn parse_arg(text: &str) -> Result<(String, Value), NotKeyValue> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| NotKeyValue(text.to_owned()))?;
    Ok((key.to_owned(), Value::from_text(value)))
}

/// Text given as a named argument has no `=` in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {0:?} is not key=value; write it as NAME=VALUE, e.g. op=3")]
pub struct NotKeyValue(pub String);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
            Value::Bytes(v) => write!(f, "<{} bytes>", v.len()),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(map) => fmt_map(map, f),
        }
    }
}

fn fmt_map(map: &BTreeMap<String, Value>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("{")?;
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{k}: {v}")?;
    }
    f.write_str("}")
}

/// Decoding, with the depth carried down: the derived `Deserialize` would recurse as deep as the
/// input nests. The wire form is the derived one (an externally tagged enum), so encodings and
/// the other languages' codecs are unchanged.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ValueSeed { depth: 0 }.deserialize(deserializer)
    }
}

/// The variants in declaration order: their index is the tag on the wire.
const VARIANTS: &[&str] = &[
    "Null", "Bool", "Int", "Float", "Str", "Bytes", "List", "Map",
];

#[derive(Clone, Copy)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    List,
    Map,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KindVisitor)
    }
}

struct KindVisitor;

impl Visitor<'_> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value variant (index 0..8 or name)")
    }

    fn visit_u64<E: de::Error>(self, index: u64) -> Result<Kind, E> {
        let kinds = [
            Kind::Null,
            Kind::Bool,
            Kind::Int,
            Kind::Float,
            Kind::Str,
            Kind::Bytes,
            Kind::List,
            Kind::Map,
        ];
        usize::try_from(index)
            .ok()
            .and_then(|i| kinds.get(i).copied())
            .ok_or_else(|| {
                de::Error::invalid_value(
                    de::Unexpected::Unsigned(index),
                    &"variant index 0 <= i < 8",
                )
            })
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Kind, E> {
        match VARIANTS.iter().position(|v| *v == name) {
            Some(i) => self.visit_u64(i as u64),
            None => Err(de::Error::unknown_variant(name, VARIANTS)),
        }
    }
}

/// A value whose enclosing lists and maps are `depth` deep.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: usize,
}

impl ValueSeed {
    /// The seed for the children of a list or map at this level, or the error that stops before
    /// anything of it is read.
    fn enter<E: de::Error>(self) -> Result<ValueSeed, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "an argument nests lists and maps deeper than {MAX_DEPTH} levels, the protocol's limit; send flatter arguments"
            )));
        }
        Ok(ValueSeed { depth })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_enum("Value", VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an argument value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (kind, variant) = data.variant::<Kind>()?;
        Ok(match kind {
            Kind::Null => {
                variant.unit_variant()?;
                Value::Null
            }
            Kind::Bool => Value::Bool(variant.newtype_variant()?),
            Kind::Int => Value::Int(variant.newtype_variant()?),
            Kind::Float => Value::Float(variant.newtype_variant()?),
            Kind::Str => Value::Str(variant.newtype_variant()?),
            Kind::Bytes => Value::Bytes(variant.newtype_variant_seed(BytesSeed)?),
            Kind::List => Value::List(variant.newtype_variant_seed(ListSeed(self.enter()?))?),
            Kind::Map => Value::Map(variant.newtype_variant_seed(MapSeed(self.enter()?))?),
        })
    }
}

/// The items of a list, each one level deeper than the list.
struct ListSeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        let mut items = Vec::with_capacity(claimed.min(LIST_PREALLOC));
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(items)
    }
}

/// A byte list, read as bytes: the codec then counts its claimed length against its allocation
/// limit, where a list of `u8`s would reserve a megabyte for any claim first. The bytes on the
/// wire are the same either way.
pub(crate) struct BytesSeed;

impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(self)
    }
}

impl<'de> Visitor<'de> for BytesSeed {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    /// Self-describing formats (JSON) write bytes as a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(LIST_PREALLOC));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

/// The entries of a map, each value one level deeper than the map.
struct MapSeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of values by string keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = BTreeMap::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(self.0)?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

macro_rules! value_from {
    ($($ty:ty => $variant:ident via $conv:expr),* $(,)?) => {
        $(impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant($conv(v))
            }
        })*
    };
}

value_from! {
    bool => Bool via std::convert::identity,
    i64 => Int via std::convert::identity,
    i32 => Int via i64::from,
    u32 => Int via i64::from,
    f64 => Float via std::convert::identity,
    String => Str via std::convert::identity,
    &str => Str via str::to_owned,
    Vec<u8> => Bytes via std::convert::identity,
    Vec<Value> => List via std::convert::identity,
    BTreeMap<String, Value> => Map via std::convert::identity,
}

/// Named arguments of a mutation, ordered by key so that encodings are deterministic. From the
/// wire, at most [`MAX_ARGS`] of them, named in at most [`MAX_KEY_LEN`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Args(BTreeMap<String, Value>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ArgsVisitor)
    }
}

struct ArgsVisitor;

impl<'de> Visitor<'de> for ArgsVisitor {
    type Value = Args;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {MAX_ARGS} named arguments")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Args, A::Error> {
        let too_many = |n: usize| {
            de::Error::custom(format_args!(
                "a mutation with {n} arguments is over the protocol's limit of {MAX_ARGS}"
            ))
        };
        if let Some(claimed) = access.size_hint().filter(|&n| n > MAX_ARGS) {
            return Err(too_many(claimed));
        }
        let mut args = BTreeMap::new();
        while let Some(key) = access.next_key::<String>()? {
            if key.len() > MAX_KEY_LEN {
                return Err(de::Error::custom(format_args!(
                    "an argument name of {} bytes is over the protocol's limit of {MAX_KEY_LEN}",
                    key.len()
                )));
            }
            if args.len() == MAX_ARGS {
                return Err(too_many(MAX_ARGS + 1));
            }
            let value = access.next_value_seed(ValueSeed { depth: 0 })?;
            args.insert(key, value);
        }
        Ok(Args(args))
    }
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an argument, builder style: `Args::new().with("op", 2)`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Adds an argument, replacing one with the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(key.into(), value.into());
    }

    /// The argument with this key, or `None`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many arguments there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The arguments ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Args {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Args(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Display for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_map(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"List":[{"List":[ ... null ... ]}]}`, `depth` lists deep, as serde's JSON writes a value.
    fn nested_json(depth: usize) -> String {
        let mut json = "{\"List\":[".repeat(depth);
        json.push_str("\"Null\"");
        json.push_str(&"]}".repeat(depth));
        json
    }

    /// The bound lives in `Deserialize`, so it holds for every format that reads values, not
    /// only the wire's: a JSON or TOML argument is refused past the same depth.
    #[test]
    fn every_format_reads_values_within_the_depth_limit() {
        let at_limit: Value = serde_json::from_str(&nested_json(MAX_DEPTH)).expect("decodes");
        assert_eq!(at_limit.depth(), MAX_DEPTH);
        assert_eq!(
            serde_json::to_string(&at_limit).expect("encodes"),
            nested_json(MAX_DEPTH),
            "the wire form is the derived one"
        );
        let past = serde_json::from_str::<Value>(&nested_json(MAX_DEPTH + 1))
            .expect_err("one level past the limit");
        assert!(past.to_string().contains("deeper than 32 levels"), "{past}");
        let args = format!("{{\"a\":{}}}", nested_json(MAX_DEPTH + 1));
        assert!(serde_json::from_str::<Args>(&args).is_err());

        let toml_at_limit = format!("a = {}", toml_list(MAX_DEPTH));
        let table: Args = toml::from_str(&toml_at_limit).expect("decodes");
        assert_eq!(table.get("a").map(Value::depth), Some(MAX_DEPTH));
        let toml_past = format!("a = {}", toml_list(MAX_DEPTH + 1));
        let error = toml::from_str::<Args>(&toml_past).expect_err("past the limit");
        assert!(
            error.to_string().contains("deeper than 32 levels"),
            "{error}"
        );
    }

    /// `{ List = [{ List = [ ... "Null" ... ] }] }` in TOML's inline form.
    fn toml_list(depth: usize) -> String {
        let mut toml = "{ List = [".repeat(depth);
        toml.push_str("\"Null\"");
        toml.push_str(&"] }".repeat(depth));
        toml
    }

    #[test]
    fn depth_counts_lists_and_maps_without_recursing() {
        assert_eq!(Value::Int(1).depth(), 0);
        assert_eq!(Value::List(vec![]).depth(), 1);
        let map = Value::Map(BTreeMap::from([(
            "k".to_string(),
            Value::List(vec![Value::Null, Value::List(vec![])]),
        )]));
        assert_eq!(map.depth(), 3);
        // Deep enough that a recursive walk would need far more stack than a test thread has
        // in debug builds; built and dropped without recursion too.
        let mut deep = Value::Null;
        for _ in 0..100_000 {
            deep = Value::List(vec![deep]);
        }
        assert_eq!(deep.depth(), 100_000);
        let mut rest = vec![deep];
        while let Some(Value::List(items)) = rest.pop() {
            rest.extend(items);
        }
    }

    #[test]
    fn text_is_typed_as_an_integer_a_float_a_boolean_or_else_a_string() {
        assert_eq!(Value::from_text("3"), Value::Int(3));
        assert_eq!(Value::from_text("-7"), Value::Int(-7));
        assert_eq!(Value::from_text("0.5"), Value::Float(0.5));
        assert_eq!(Value::from_text("1e3"), Value::Float(1000.0));
        assert_eq!(Value::from_text("true"), Value::Bool(true));
        assert_eq!(Value::from_text("false"), Value::Bool(false));
        assert_eq!(Value::from_text("on"), Value::Str("on".into()));
        assert_eq!(Value::from_text("\"3\""), Value::Str("\"3\"".into()));
        assert_eq!(Value::from_text(""), Value::Str(String::new()));
        // Past i64, a number is still a number.
        assert_eq!(
            Value::from_text("9223372036854775808"),
            Value::Float(9_223_372_036_854_775_808.0)
        );
    }

    #[test]
    fn an_argument_splits_at_its_first_equals_sign() {
        assert_eq!(parse_arg("op=3"), Ok(("op".into(), Value::Int(3))));
        assert_eq!(
            parse_arg("who=a=b"),
            Ok(("who".into(), Value::Str("a=b".into())))
        );
        assert_eq!(
            parse_arg("empty="),
            Ok(("empty".into(), Value::Str(String::new())))
        );
        let error = parse_arg("op").expect_err("no =");
        assert_eq!(error, NotKeyValue("op".into()));
        assert!(error.to_string().contains("is not key=value"), "{error}");
    }
}

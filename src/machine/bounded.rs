//! Bounded decoding of lists and strings from a peer, for every type that travels: a list's
//! claimed count is refused over its limit before anything is reserved for it, and at most
//! [`PREALLOC`] items are reserved up front whatever it claims; a string over its limit is
//! refused as soon as it is read. `proto::limits` builds the messages' bounds from these, and
//! the schema's own fields (its groups) use them too, since a schema travels in messages.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Deserialize, DeserializeSeed, SeqAccess, Visitor};

/// Longest name from a peer, in bytes: client ids, source names, ancestry ids, payload names,
/// group names, tags, a parent id.
pub const MAX_NAME_LEN: usize = 1024;

/// Items reserved up front for any decoded list, whatever count it claims: a claimed count is
/// only a promise, so the list grows as items really arrive.
pub const PREALLOC: usize = 64;

/// `what` of `len` units is over `max`: the error a field's bound raises.
pub(crate) fn over<E: de::Error>(what: &str, len: usize, max: usize, unit: &str) -> E {
    E::custom(format_args!(
        "{what} of {len} {unit} is over the protocol's limit of {max}"
    ))
}

/// A list of `T` with at most `max` items.
pub(crate) struct BoundedSeq<T> {
    what: &'static str,
    max: usize,
    item: PhantomData<T>,
}

impl<T> BoundedSeq<T> {
    pub(crate) fn new(what: &'static str, max: usize) -> Self {
        BoundedSeq {
            what,
            max,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at most {} items)", self.what, self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > self.max {
            return Err(over(self.what, claimed, self.max, "items"));
        }
        let mut items = Vec::with_capacity(claimed.min(PREALLOC));
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                return Err(over(self.what, self.max + 1, self.max, "items"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// A string of at most `MAX` bytes. Its bytes are already in the frame when this runs, and the
/// codec's allocation limit follows the frame's size, so checking after reading costs nothing
/// a frame could not.
#[derive(Debug)]
pub(crate) struct BoundedString<const MAX: usize>(pub(crate) String);

impl<'de, const MAX: usize> Deserialize<'de> for BoundedString<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.len() > MAX {
            return Err(over("a name", s.len(), MAX, "bytes"));
        }
        Ok(BoundedString(s))
    }
}

/// A string of at most `max` bytes, named `what` in the error.
pub(crate) fn string<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
    max: usize,
) -> Result<String, D::Error> {
    let s = String::deserialize(deserializer)?;
    if s.len() > max {
        return Err(over(what, s.len(), max, "bytes"));
    }
    Ok(s)
}

/// At most `max` strings of at most `MAX` bytes each.
pub(crate) fn strings<'de, D: Deserializer<'de>, const MAX: usize>(
    deserializer: D,
    what: &'static str,
    max: usize,
) -> Result<Vec<String>, D::Error> {
    let items = BoundedSeq::<BoundedString<MAX>>::new(what, max).deserialize(deserializer)?;
    Ok(items.into_iter().map(|s| s.0).collect())
}

//! State groups: named sets of a schema's states (Go's `SetGroups`), to switch over mutually
//! exclusive states ([`StateSource::switch_group`](super::StateSource::switch_group)) or check
//! several at once. A group is part of the schema's definition ([`SchemaDef::groups`]): it is
//! validated with the schema, covered by its hash and carried wherever the schema goes, so a
//! mirror at any depth of a tree has its source's groups.
//!
//! What a group may hold is bounded here rather than in `proto` because a schema travels in
//! messages: at most [`MAX_GROUPS`] groups, each named in at most [`MAX_NAME_LEN`] bytes and
//! listing at most [`MAX_STATES`] states. A schema past those bounds is refused when it is
//! built, so that every valid schema can be sent, and a peer's is refused while it decodes.
//!
//! [`SchemaDef::groups`]: super::SchemaDef::groups

use rustc_hash::FxHashMap;

use serde::de::DeserializeSeed;
use serde::{Deserialize, Deserializer, Serialize};

use super::bounded::{BoundedSeq, MAX_NAME_LEN, string};
use super::schema::{MAX_STATES, SchemaError};

/// Most groups a schema may have.
pub const MAX_GROUPS: usize = 1024;

/// One group as a person writes it: a name and the names of its states, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    /// The group's name, not empty, at most 1024 bytes.
    #[serde(deserialize_with = "group_name")]
    pub name: String,
    /// The names of its states, in order; each must be a state of the schema.
    #[serde(deserialize_with = "members")]
    pub states: Vec<String>,
}

impl GroupDef {
    /// A group named `name` of these states.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        states: I,
    ) -> Self {
        GroupDef {
            name: name.into(),
            states: states.into_iter().map(Into::into).collect(),
        }
    }
}

/// A schema's groups, at most [`MAX_GROUPS`] of them.
pub(crate) fn bounded<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<GroupDef>, D::Error> {
    BoundedSeq::new("a schema's groups", MAX_GROUPS).deserialize(deserializer)
}

fn group_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    string(deserializer, "a group's name", MAX_NAME_LEN)
}

/// The states of a group: names the schema validates, so only their count is bounded here (as
/// the names of states are, by the frame and the allocation limit).
fn members<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    BoundedSeq::new("a group's states", MAX_STATES).deserialize(deserializer)
}

/// The groups with their states' positions, in the order given; or what is wrong with them.
pub(crate) fn resolve(
    groups: &[GroupDef],
    index: &FxHashMap<String, usize>,
) -> Result<Vec<(String, Vec<usize>)>, SchemaError> {
    if groups.len() > MAX_GROUPS {
        return Err(SchemaError::TooManyGroups(groups.len()));
    }
    let mut resolved: Vec<(String, Vec<usize>)> = Vec::with_capacity(groups.len());
    for group in groups {
        let name = &group.name;
        if name.is_empty() {
            return Err(SchemaError::EmptyGroupName);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(SchemaError::GroupNameTooLong(name.len()));
        }
        if resolved.iter().any(|(n, _)| n == name) {
            return Err(SchemaError::DuplicateGroup(name.clone()));
        }
        if group.states.len() > MAX_STATES {
            return Err(SchemaError::TooManyGroupStates {
                group: name.clone(),
                count: group.states.len(),
            });
        }
        let members = group
            .states
            .iter()
            .map(|state| {
                index
                    .get(state)
                    .copied()
                    .ok_or_else(|| SchemaError::UnknownGroupState {
                        group: name.clone(),
                        state: state.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        resolved.push((name.clone(), members));
    }
    Ok(resolved)
}

/// The groups' part of the schema hash (PROTOCOL.md, "Hashes"): nothing for a schema without
/// groups, so its hash is what it was before groups travelled; else a `ff` byte (never in
/// UTF-8, so never the start of a state's name), then each group's name and its states as a
/// count and names, as the states' relation lists are hashed.
pub(crate) fn hash(groups: &[GroupDef], feed: &mut impl FnMut(&[u8])) {
    if groups.is_empty() {
        return;
    }
    feed(&[0xff]);
    for group in groups {
        feed(group.name.as_bytes());
        feed(&[0]);
        feed(&(group.states.len() as u32).to_le_bytes());
        for state in &group.states {
            feed(state.as_bytes());
            feed(&[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Schema, SchemaDef, StateDef};

    fn def(groups: Vec<GroupDef>) -> SchemaDef {
        SchemaDef {
            states: vec![StateDef::new("A"), StateDef::new("B"), StateDef::new("C")],
            groups,
        }
    }

    #[test]
    fn groups_resolve_to_positions_in_the_order_given() {
        let schema = Schema::new(def(vec![
            GroupDef::new("Pair", ["C", "A"]),
            GroupDef::new("Empty", Vec::<String>::new()),
        ]))
        .expect("valid");
        let groups: Vec<(&str, &[usize])> = schema.groups().collect();
        assert_eq!(groups, [("Pair", &[2, 0][..]), ("Empty", &[][..])]);
        // with_group replaces a group in place and keeps the definition whole.
        let again = schema.with_group("Pair", &["B"]).expect("known");
        assert_eq!(again.group("Pair"), Some(&[1][..]));
        assert_eq!(again.def().groups[0], GroupDef::new("Pair", ["B"]));
        assert_eq!(again.def().groups.len(), 2);
    }

    #[test]
    fn bad_groups_are_refused_with_the_reason() {
        let cases = [
            (
                vec![GroupDef::new("G", ["A", "Nope"])],
                SchemaError::UnknownGroupState {
                    group: "G".into(),
                    state: "Nope".into(),
                },
            ),
            (
                vec![GroupDef::new("G", ["A"]), GroupDef::new("G", ["B"])],
                SchemaError::DuplicateGroup("G".into()),
            ),
            (vec![GroupDef::new("", ["A"])], SchemaError::EmptyGroupName),
            (
                vec![GroupDef::new("n".repeat(MAX_NAME_LEN + 1), ["A"])],
                SchemaError::GroupNameTooLong(MAX_NAME_LEN + 1),
            ),
            (
                vec![GroupDef::new("G", vec!["A"; MAX_STATES + 1])],
                SchemaError::TooManyGroupStates {
                    group: "G".into(),
                    count: MAX_STATES + 1,
                },
            ),
            (
                (0..=MAX_GROUPS)
                    .map(|i| GroupDef::new(format!("G{i}"), ["A"]))
                    .collect(),
                SchemaError::TooManyGroups(MAX_GROUPS + 1),
            ),
        ];
        for (groups, expected) in cases {
            assert_eq!(Schema::new(def(groups)), Err(expected));
        }
        let named = Schema::new(def(vec![GroupDef::new("n".repeat(MAX_NAME_LEN), ["A"])]));
        assert!(named.is_ok(), "a name at the limit is fine");
    }

    /// A schema with other groups is another schema: a mirror that has the states but not the
    /// groups gets the schema sent again. Without groups, the hash is the one from before.
    #[test]
    fn groups_are_in_the_hash_only_when_there_are_any() {
        let hash = |groups| Schema::new(def(groups)).expect("valid").hash();
        let plain = hash(vec![]);
        let plain_def = Schema::builder()
            .state(StateDef::new("A"))
            .state(StateDef::new("B"))
            .state(StateDef::new("C"))
            .build()
            .expect("valid");
        assert_eq!(plain, plain_def.hash());
        let one = hash(vec![GroupDef::new("G", ["A", "B"])]);
        assert_ne!(one, plain);
        assert_ne!(
            one,
            hash(vec![GroupDef::new("G", ["B", "A"])]),
            "order counts"
        );
        assert_ne!(
            one,
            hash(vec![GroupDef::new("H", ["A", "B"])]),
            "names count"
        );
        assert_ne!(
            hash(vec![GroupDef::new("G", Vec::<String>::new())]),
            plain,
            "an empty group is a group"
        );
        assert_eq!(one, hash(vec![GroupDef::new("G", ["A", "B"])]));
    }

    /// On the wire a schema's groups are bounded as they decode: their count, each name, each
    /// one's states.
    #[test]
    fn decoding_bounds_the_groups() {
        let encode = |def: &SchemaDef| {
            bincode::serde::encode_to_vec(def, bincode::config::standard()).expect("encodes")
        };
        let decode = |bytes: &[u8]| {
            bincode::serde::decode_from_slice::<SchemaDef, _>(bytes, bincode::config::standard())
                .map(|(d, _)| d)
                .map_err(|e| e.to_string())
        };
        let within = def(vec![GroupDef::new("n".repeat(MAX_NAME_LEN), ["A", "B"])]);
        assert_eq!(decode(&encode(&within)), Ok(within));
        let cases = [
            (
                def((0..=MAX_GROUPS)
                    .map(|i| GroupDef::new(format!("G{i}"), ["A"]))
                    .collect()),
                "a schema's groups of 1025 items",
            ),
            (
                def(vec![GroupDef::new("n".repeat(MAX_NAME_LEN + 1), ["A"])]),
                "a group's name of 1025 bytes",
            ),
            (
                def(vec![GroupDef::new("G", vec!["A"; MAX_STATES + 1])]),
                "a group's states of 4097 items",
            ),
        ];
        for (past, expected) in cases {
            let error = decode(&encode(&past)).expect_err("past a limit");
            assert!(error.contains(expected), "{error}");
        }
    }
}

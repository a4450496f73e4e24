//! Schemas: the ordered states of a machine with their relations and flags.
//!
//! A [`SchemaDef`] is plain data (built in Rust with [`StateDef`]'s builder methods, or loaded
//! with serde from a topology file); [`Schema`] is its validated form, with relations resolved
//! to state positions, the `require` order of handlers computed and a stable hash. Nothing
//! here runs a transition: that is `resolve`'s job.
//!
//! Differs from asyncmachine on purpose: a state listing itself in a relation is refused with
//! [`SchemaError::SelfRelation`], where Go drops the entry silently; a schema that says
//! something impossible is a mistake to report, not to mend.
//!
//! Relation lookups ([`Schema::relations_of`], [`Schema::relations_between`],
//! [`Schema::inbound_relations_of`]) answer what asyncmachine's resolver answers, with one
//! difference: inbound relations list each state once, in schema order, where Go lists a state
//! once per relation kind, in its map's random order.
//!
//! State groups ([`SchemaDef::groups`], [`Schema::with_group`]) are named sets of states, in
//! the order they were given, as asyncmachine's `SetGroups` makes them ([`super::groups`]).
//! They belong to the definition: validated with it, in its hash and on the wire, so a mirror
//! has its source's groups. A schema without groups hashes as it did before groups travelled.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::bounded::MAX_NAME_LEN;
use super::groups::{self, GroupDef, MAX_GROUPS};

/// The name of the state that every schema has, activated by errors and panics in handlers.
pub const EXCEPTION: &str = "Exception";

/// Most states a schema may have; keeps state positions inside a `u32` on the wire.
pub const MAX_STATES: usize = 4096;

/// One state's definition, as a person writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    /// The state's name: unique in the schema and not empty; a peer's schema is refused when
    /// a name is over 1024 bytes.
    pub name: String,
    /// May only be active while all of these are active (or become active in the same
    /// transition).
    #[serde(default)]
    pub require: Vec<String>,
    /// Activating this state also tries to activate these (optional: if they are refused, this
    /// state still goes ahead).
    #[serde(default)]
    pub add: Vec<String>,
    /// Activating this state deactivates these, and they cannot be activated while it stays.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Handlers of this state run after the handlers of these states.
    #[serde(default)]
    pub after: Vec<String>,
    /// Tried after every transition that changed the clock.
    #[serde(default)]
    pub auto: bool,
    /// Activating it while active is a new activation: its tick grows by 2 and handlers run.
    #[serde(default)]
    pub multi: bool,
}

impl StateDef {
    /// A state named `name` with no relations, neither auto nor multi.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds states to [`require`](Self::require): this state may only be active while they are.
    pub fn require<I: IntoIterator<Item = S>, S: Into<String>>(mut self, states: I) -> Self {
        self.require.extend(states.into_iter().map(Into::into));
        self
    }

    /// Adds states to [`add`](Self::add): activating this state also tries to activate them.
    #[allow(
        clippy::should_implement_trait,
        reason = "named after the relation, as in files"
    )]
    pub fn add<I: IntoIterator<Item = S>, S: Into<String>>(mut self, states: I) -> Self {
        self.add.extend(states.into_iter().map(Into::into));
        self
    }

    /// Adds states to [`remove`](Self::remove): activating this state deactivates them.
    pub fn remove<I: IntoIterator<Item = S>, S: Into<String>>(mut self, states: I) -> Self {
        self.remove.extend(states.into_iter().map(Into::into));
        self
    }

    /// Adds states to [`after`](Self::after): this state's handlers run after theirs.
    pub fn after<I: IntoIterator<Item = S>, S: Into<String>>(mut self, states: I) -> Self {
        self.after.extend(states.into_iter().map(Into::into));
        self
    }

    /// Makes the state [`auto`](Self::auto): tried after every transition that changed the clock.
    pub fn auto(mut self) -> Self {
        self.auto = true;
        self
    }

    /// Makes the state [`multi`](Self::multi): activating it while active activates it again.
    pub fn multi(mut self) -> Self {
        self.multi = true;
        self
    }
}

/// A schema as plain data: what topology files and the wire carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDef {
    /// The states in order: a state's position here is its position in the clock.
    pub states: Vec<StateDef>,
    /// Named sets of states (Go's `SetGroups`), in order: see [`super::groups`].
    #[serde(default, deserialize_with = "groups::bounded")]
    pub groups: Vec<GroupDef>,
}

impl SchemaDef {
    /// A definition of these states and no groups.
    pub fn of_states(states: Vec<StateDef>) -> Self {
        SchemaDef {
            states,
            groups: Vec::new(),
        }
    }
}

/// What is wrong with a schema definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A state's name is empty.
    #[error("a state has an empty name; give every state a name")]
    EmptyName,
    /// Two states have the same name.
    #[error("state {0:?} is defined twice; state names must be unique")]
    DuplicateState(String),
    /// A relation names a state the schema does not define.
    #[error(
        "state {state:?} lists unknown state {target:?} in `{relation}`; define it or fix the name"
    )]
    UnknownState {
        /// The state whose relation it is.
        state: String,
        /// Which relation.
        relation: Relation,
        /// The name it lists that is not defined.
        target: String,
    },
    /// A state lists itself in a relation.
    #[error("state {state:?} lists itself in `{relation}`; remove that entry")]
    SelfRelation {
        /// The state.
        state: String,
        /// The relation that lists it.
        relation: Relation,
    },
    /// The `after` relations form a cycle (the states on it).
    #[error("the `after` relations form a cycle through {0:?}; handlers cannot be ordered")]
    AfterCycle(Vec<String>),
    /// More than [`MAX_STATES`] states (the count, `Exception` included).
    #[error("the schema has {0} states; at most {MAX_STATES} are supported")]
    TooManyStates(usize),
    /// A group's name is empty.
    #[error("a group has an empty name; give every group a name")]
    EmptyGroupName,
    /// A group's name is longer than the limit (its length in bytes).
    #[error("a group's name is {0} bytes long; at most {MAX_NAME_LEN} are supported")]
    GroupNameTooLong(usize),
    /// Two groups have the same name.
    #[error("group {0:?} is defined twice; group names must be unique")]
    DuplicateGroup(String),
    /// More than [`MAX_GROUPS`] groups (the count).
    #[error("the schema has {0} groups; at most {MAX_GROUPS} are supported")]
    TooManyGroups(usize),
    /// A group lists more than [`MAX_STATES`] states.
    #[error("group {group:?} lists {count} states; at most {MAX_STATES} are supported")]
    TooManyGroupStates {
        /// The group.
        group: String,
        /// How many states it lists.
        count: usize,
    },
    /// A group lists a state the schema does not define.
    #[error("group {group:?} lists unknown state {state:?}; define it or fix the name")]
    UnknownGroupState {
        /// The group.
        group: String,
        /// The name it lists that is not defined.
        state: String,
    },
}

/// A name the schema does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}; check the name against the schema")]
pub struct UnknownState(pub String);

/// A kind of relation between two states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `require`: may only be active while the targets are.
    Require,
    /// `add`: activating it also tries to activate the targets.
    Add,
    /// `remove`: activating it deactivates the targets and blocks them while it stays.
    Remove,
    /// `after`: its handlers run after the targets'.
    After,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::Require => "require",
            Relation::Add => "add",
            Relation::Remove => "remove",
            Relation::After => "after",
        })
    }
}

/// A state's relations resolved to positions in the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub require: Vec<usize>,
    pub add: Vec<usize>,
    pub remove: Vec<usize>,
    pub after: Vec<usize>,
    pub auto: bool,
    pub multi: bool,
}

/// A validated schema. States are addressed by their position (schema order), which is also
/// their position in the clock.
///
/// Built from a [`SchemaDef`] with [`Schema::new`], state by state with [`Schema::builder`],
/// or deserialized (it validates as it deserializes, as topology files load it):
///
/// ```
/// use asyncmachine::machine::{Schema, SchemaDef, SchemaError, StateDef, EXCEPTION};
///
/// let schema = Schema::builder()
///     .state(StateDef::new("Ready").require(["Connected"]))
///     .state(StateDef::new("Connected"))
///     .state(StateDef::new("Offline").remove(["Connected"]))
///     .build()?;
/// // `Exception` is appended, so the schema has four states.
/// assert_eq!(schema.len(), 4);
/// assert_eq!(schema.index("Connected"), Some(1));
/// assert_eq!(schema.name(3), EXCEPTION);
///
/// // A definition from a file: the same fields, in TOML or JSON.
/// let def: SchemaDef = toml::from_str(r#"
///     [[states]]
///     name = "A"
///     require = ["B"]
/// "#)?;
/// // B is not defined: refused with the state, the relation and the name.
/// assert!(matches!(Schema::new(def), Err(SchemaError::UnknownState { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SchemaDef", into = "SchemaDef")]
pub struct Schema {
    def: SchemaDef,
    /// Names to positions. Fx hashing: a lookup per named mutation is on the hot path, and
    /// a schema is bounded ([`MAX_STATES`]) and hashed once, when it is built.
    index: FxHashMap<String, usize>,
    resolved: Vec<Resolved>,
    /// Each state's place in the depth-first post-order of the `require` graph (required
    /// states first); `None` for states outside it, and for all when `require` has a cycle.
    require_rank: Vec<Option<u32>>,
    /// Whether any state has an `after` relation: sorting skips its pass when none has (a
    /// plan sorts two lists per transition).
    any_after: bool,
    hash: u64,
    exception: usize,
    /// The definition's groups as state positions, in the order given.
    groups: Vec<(String, Vec<usize>)>,
}

impl Schema {
    /// A builder that adds states one by one; see [`SchemaBuilder`].
    pub fn builder() -> SchemaBuilder {
        SchemaBuilder::default()
    }

    /// Validates a definition. `Exception` is appended as a multi state when the definition
    /// lacks it, and made multi when it has it.
    pub fn new(mut def: SchemaDef) -> Result<Self, SchemaError> {
        match def.states.iter_mut().find(|s| s.name == EXCEPTION) {
            Some(exception) => exception.multi = true,
            None => def.states.push(StateDef::new(EXCEPTION).multi()),
        }
        if def.states.len() > MAX_STATES {
            return Err(SchemaError::TooManyStates(def.states.len()));
        }
        let mut index = FxHashMap::with_capacity_and_hasher(def.states.len(), Default::default());
        for (i, state) in def.states.iter().enumerate() {
            if state.name.is_empty() {
                return Err(SchemaError::EmptyName);
            }
            if index.insert(state.name.clone(), i).is_some() {
                return Err(SchemaError::DuplicateState(state.name.clone()));
            }
        }
        let lookup = |state: &StateDef, relation: Relation, names: &[String]| {
            let mut out = Vec::with_capacity(names.len());
            for target in names {
                let Some(&i) = index.get(target) else {
                    return Err(SchemaError::UnknownState {
                        state: state.name.clone(),
                        relation,
                        target: target.clone(),
                    });
                };
                if *target == state.name {
                    return Err(SchemaError::SelfRelation {
                        state: state.name.clone(),
                        relation,
                    });
                }
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            Ok(out)
        };
        let mut resolved = Vec::with_capacity(def.states.len());
        for state in &def.states {
            resolved.push(Resolved {
                require: lookup(state, Relation::Require, &state.require)?,
                add: lookup(state, Relation::Add, &state.add)?,
                remove: lookup(state, Relation::Remove, &state.remove)?,
                after: lookup(state, Relation::After, &state.after)?,
                auto: state.auto,
                multi: state.multi,
            });
        }
        check_after_cycles(&def, &resolved)?;
        let groups = groups::resolve(&def.groups, &index)?;
        let require_rank = require_order(&resolved);
        let any_after = resolved.iter().any(|r| !r.after.is_empty());
        let exception = index[EXCEPTION];
        let hash = schema_hash(&def);
        Ok(Schema {
            def,
            index,
            resolved,
            require_rank,
            any_after,
            hash,
            exception,
            groups,
        })
    }

    /// Number of states, `Exception` included.
    pub fn len(&self) -> usize {
        self.def.states.len()
    }

    /// Always `false` for a built schema (it holds `Exception` at least).
    pub fn is_empty(&self) -> bool {
        self.def.states.is_empty()
    }

    /// Position of a state by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Name of the state at a position. Panics on a position outside the schema, like slice
    /// indexing: positions come from this schema.
    pub fn name(&self, idx: usize) -> &str {
        &self.def.states[idx].name
    }

    /// The states' names in schema order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.def.states.iter().map(|s| s.name.as_str())
    }

    /// The definition of the state at a position, or `None` outside the schema.
    pub fn state(&self, idx: usize) -> Option<&StateDef> {
        self.def.states.get(idx)
    }

    /// The definition this schema was validated from (with `Exception` added).
    pub fn def(&self) -> &SchemaDef {
        &self.def
    }

    /// Whether this schema keeps every state of `old` at its position: `old`'s names come
    /// first here, in the same order (what [`Machine::set_schema`](super::Machine::set_schema)
    /// allows, and what a clock, a waiter or a grant of positions of `old` stays valid under).
    /// Equal schemas extend each other.
    pub fn extends(&self, old: &Schema) -> bool {
        old.len() <= self.len() && old.names().zip(self.names()).all(|(a, b)| a == b)
    }

    /// A stable 64-bit hash of the definition (FNV-1a over a canonical encoding, see
    /// PROTOCOL.md): equal definitions hash equal on every platform and version.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Position of the `Exception` state.
    pub fn exception(&self) -> usize {
        self.exception
    }

    pub(crate) fn resolved(&self, idx: usize) -> &Resolved {
        &self.resolved[idx]
    }

    /// Sorts states into handler order, as asyncmachine does: first by the depth-first
    /// post-order of the `require` graph (a state after the states it requires; states outside
    /// that graph first), keeping the given order among equals; then a state listed in
    /// another's `after` is moved before it. The second pass compares only direct `after`
    /// links, with an insertion sort, so that it orders exactly as the Go original does.
    pub fn sort_states(&self, states: &mut [usize]) {
        if states.len() < 2 {
            return;
        }
        states.sort_by_key(|&s| self.require_rank[s].map_or(-1, i64::from));
        if !self.any_after {
            return;
        }
        for i in 1..states.len() {
            let mut j = i;
            while j > 0 && self.runs_before(states[j], states[j - 1]) {
                states.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    /// Whether `a`'s handlers must run before `b`'s by a direct `after` link.
    fn runs_before(&self, a: usize, b: usize) -> bool {
        !self.resolved[a].after.contains(&b) && self.resolved[b].after.contains(&a)
    }

    /// A state's relations by kind, in asyncmachine's order: add, require, remove, after.
    fn relation_lists(&self, state: usize) -> [(Relation, &Vec<usize>); 4] {
        let r = &self.resolved[state];
        [
            (Relation::Add, &r.add),
            (Relation::Require, &r.require),
            (Relation::Remove, &r.remove),
            (Relation::After, &r.after),
        ]
    }

    /// The kinds of relation the state has to any state, in asyncmachine's order: add,
    /// require, remove, after (Go's `RelationsOf`).
    pub fn relations_of(&self, state: &str) -> Result<Vec<Relation>, UnknownState> {
        let from = self.known(state)?;
        Ok(self
            .relation_lists(from)
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(relation, _)| relation)
            .collect())
    }

    /// The kinds of relation from one state to another, in the order of
    /// [`relations_of`](Self::relations_of) (Go's `RelationsBetween`); outbound only.
    pub fn relations_between(&self, from: &str, to: &str) -> Result<Vec<Relation>, UnknownState> {
        let (from, to) = (self.known(from)?, self.known(to)?);
        Ok(self
            .relation_lists(from)
            .into_iter()
            .filter(|(_, list)| list.contains(&to))
            .map(|(relation, _)| relation)
            .collect())
    }

    /// The states that have a relation of any kind to the state, each once, in schema order
    /// (Go's `InboundRelationsOf`, which repeats a state per relation kind in random order).
    pub fn inbound_relations_of(&self, state: &str) -> Result<Vec<&str>, UnknownState> {
        let to = self.known(state)?;
        Ok((0..self.len())
            .filter(|&from| {
                self.relation_lists(from)
                    .iter()
                    .any(|(_, list)| list.contains(&to))
            })
            .map(|from| self.name(from))
            .collect())
    }

    fn known(&self, state: &str) -> Result<usize, UnknownState> {
        self.index(state)
            .ok_or_else(|| UnknownState(state.to_owned()))
    }

    /// This schema with a named group of states (Go's `SetGroups`), used to switch over
    /// mutually exclusive states or check several at once. A group of an existing name replaces
    /// it in place. The group is part of the definition ([`SchemaDef::groups`]), so the hash
    /// changes with it and mirrors get it.
    pub fn with_group(self, name: impl Into<String>, states: &[&str]) -> Result<Self, SchemaError> {
        let group = GroupDef::new(name, states.iter().copied());
        let mut def = self.def;
        match def.groups.iter_mut().find(|g| g.name == group.name) {
            Some(slot) => *slot = group,
            None => def.groups.push(group),
        }
        Schema::new(def)
    }

    /// The positions of a group's states, in the order given.
    pub fn group(&self, name: &str) -> Option<&[usize]> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, members)| members.as_slice())
    }

    /// Every group with its states' positions, in the order the groups were added (Go's
    /// `Groups`).
    pub fn groups(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.groups
            .iter()
            .map(|(name, members)| (name.as_str(), members.as_slice()))
    }

    /// Positions of the named states, or the first unknown name.
    pub fn indices<'a>(&self, names: &[&'a str]) -> Result<Vec<usize>, &'a str> {
        names.iter().map(|n| self.index(n).ok_or(*n)).collect()
    }
}

impl TryFrom<SchemaDef> for Schema {
    type Error = SchemaError;

    fn try_from(def: SchemaDef) -> Result<Self, Self::Error> {
        Schema::new(def)
    }
}

impl From<Schema> for SchemaDef {
    fn from(schema: Schema) -> Self {
        schema.def
    }
}

/// Builds a schema state by state: `Schema::builder().state(StateDef::new("A")).build()`.
#[derive(Debug, Default, Clone)]
pub struct SchemaBuilder {
    def: SchemaDef,
}

impl SchemaBuilder {
    /// Adds a state after those added before (its position is their count).
    pub fn state(mut self, state: StateDef) -> Self {
        self.def.states.push(state);
        self
    }

    /// Validates the states added, as [`Schema::new`] does.
    pub fn build(self) -> Result<Schema, SchemaError> {
        Schema::new(self.def)
    }
}

/// `after` cycles are errors: the handlers of the states in one cannot be ordered.
fn check_after_cycles(def: &SchemaDef, resolved: &[Resolved]) -> Result<(), SchemaError> {
    let after: Vec<Vec<usize>> = resolved.iter().map(|r| r.after.clone()).collect();
    if topo_sort(&after).is_some() {
        return Ok(());
    }
    let cyclic = cycle_members(&after)
        .into_iter()
        .map(|i| def.states[i].name.clone());
    Err(SchemaError::AfterCycle(cyclic.collect()))
}

/// Depth-first post-order of the `require` graph: from each state that requires others (in
/// schema order), visit its requirements in the order listed, and number a state once all it
/// requires is numbered. A cycle leaves every state unranked: the order then falls back to
/// the `after` pass alone (two states may require each other).
fn require_order(resolved: &[Resolved]) -> Vec<Option<u32>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = resolved.len();
    let mut rank = vec![None; n];
    let mut mark = vec![Mark::New; n];
    let mut next = 0u32;
    for root in (0..n).filter(|&s| !resolved[s].require.is_empty()) {
        if mark[root] != Mark::New {
            continue;
        }
        // (state, how many of its requirements were visited)
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::Open;
        while let Some((s, visited)) = stack.last_mut() {
            let s = *s;
            match resolved[s].require.get(*visited) {
                Some(&r) => {
                    *visited += 1;
                    match mark[r] {
                        Mark::New => {
                            mark[r] = Mark::Open;
                            stack.push((r, 0));
                        }
                        Mark::Open => return vec![None; n],
                        Mark::Done => {}
                    }
                }
                None => {
                    mark[s] = Mark::Done;
                    rank[s] = Some(next);
                    next += 1;
                    stack.pop();
                }
            }
        }
    }
    rank
}

/// Kahn's algorithm; `deps[i]` lists the states that must come before `i`. Among ready states
/// the lowest position goes first, so the order is deterministic.
fn topo_sort(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = deps.len();
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &dependents[i] {
            pending[j] -= 1;
            if pending[j] == 0 {
                ready.insert(j);
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// States left over when Kahn's algorithm stalls: the members of (or behind) a cycle.
fn cycle_members(deps: &[Vec<usize>]) -> Vec<usize> {
    let mut alive = vec![true; deps.len()];
    loop {
        let removable: Vec<usize> = (0..deps.len())
            .filter(|&i| alive[i] && deps[i].iter().all(|&d| !alive[d]))
            .collect();
        if removable.is_empty() {
            break;
        }
        for i in removable {
            alive[i] = false;
        }
    }
    (0..deps.len()).filter(|&i| alive[i]).collect()
}

/// FNV-1a 64 over the canonical encoding documented in PROTOCOL.md: for each state in order,
/// its name, a flags byte, then the four relation lists (require, add, remove, after), each as a
/// count followed by names; every string is its UTF-8 bytes followed by a 0 byte, every count
/// a little-endian u32; then the groups, when there are any ([`groups::hash`]).
fn schema_hash(def: &SchemaDef) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for state in &def.states {
        feed(state.name.as_bytes());
        feed(&[0]);
        feed(&[u8::from(state.auto) | (u8::from(state.multi) << 1)]);
        for list in [&state.require, &state.add, &state.remove, &state.after] {
            feed(&(list.len() as u32).to_le_bytes());
            for name in list {
                feed(name.as_bytes());
                feed(&[0]);
            }
        }
    }
    groups::hash(&def.groups, &mut feed);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(schema: &Schema, mut idx: Vec<usize>) -> Vec<&str> {
        schema.sort_states(&mut idx);
        idx.into_iter().map(|i| schema.name(i)).collect()
    }

    #[test]
    fn a_schema_extends_the_ones_whose_states_it_starts_with() {
        let build = |names: &[&str]| {
            let mut builder = Schema::builder();
            for name in names {
                builder = builder.state(StateDef::new(*name));
            }
            builder.build().expect("valid")
        };
        let old = build(&["A", "B", EXCEPTION]);
        assert!(old.extends(&old));
        assert!(build(&["A", "B", EXCEPTION, "C"]).extends(&old));
        // Built without it, Exception comes last: B's successor moved.
        assert!(!build(&["A", "B", "C"]).extends(&old));
        assert!(!build(&["B", "A", EXCEPTION, "C"]).extends(&old));
        assert!(!build(&["A", EXCEPTION]).extends(&old));
    }

    #[test]
    fn exception_is_added_as_multi() {
        let schema = Schema::builder()
            .state(StateDef::new("A"))
            .build()
            .expect("valid");
        assert_eq!(schema.len(), 2);
        assert_eq!(schema.name(schema.exception()), EXCEPTION);
        assert!(schema.state(schema.exception()).expect("exists").multi);
    }

    #[test]
    fn declared_exception_is_forced_multi_and_kept_in_place() {
        let schema = Schema::builder()
            .state(StateDef::new(EXCEPTION))
            .state(StateDef::new("A"))
            .build()
            .expect("valid");
        assert_eq!(schema.exception(), 0);
        assert!(schema.resolved(0).multi);
        assert_eq!(schema.len(), 2);
    }

    #[test]
    fn invalid_definitions_are_refused_with_the_reason() {
        let dup = Schema::builder()
            .state(StateDef::new("A"))
            .state(StateDef::new("A"))
            .build();
        assert_eq!(dup, Err(SchemaError::DuplicateState("A".into())));

        let unknown = Schema::builder()
            .state(StateDef::new("A").require(["B"]))
            .build();
        let err = unknown.expect_err("unknown state");
        assert_eq!(
            err.to_string(),
            "state \"A\" lists unknown state \"B\" in `require`; define it or fix the name"
        );

        let selfish = Schema::builder()
            .state(StateDef::new("A").remove(["A"]))
            .build();
        assert!(matches!(selfish, Err(SchemaError::SelfRelation { .. })));

        let empty = Schema::builder().state(StateDef::new("")).build();
        assert_eq!(empty, Err(SchemaError::EmptyName));

        let cycle = Schema::builder()
            .state(StateDef::new("A").after(["B"]))
            .state(StateDef::new("B").after(["A"]))
            .state(StateDef::new("C"))
            .build();
        assert_eq!(
            cycle,
            Err(SchemaError::AfterCycle(vec!["A".into(), "B".into()]))
        );
    }

    #[test]
    fn handler_order_is_require_post_order_then_after() {
        // Go: the resolver part of TestRequireOrder.
        let schema = Schema::builder()
            .state(StateDef::new("A").require(["B", "C"]))
            .state(StateDef::new("B").require(["D"]))
            .state(StateDef::new("C"))
            .state(StateDef::new("D"))
            .build()
            .expect("valid");
        for given in [vec![0, 1, 2, 3], vec![2, 3, 0, 1], vec![3, 0, 2, 1]] {
            assert_eq!(names(&schema, given), ["D", "B", "C", "A"]);
        }
        let schema = Schema::builder()
            .state(StateDef::new("A").after(["C"]))
            .state(StateDef::new("B").require(["D"]))
            .state(StateDef::new("C"))
            .state(StateDef::new("D"))
            .build()
            .expect("valid");
        assert_eq!(names(&schema, vec![0, 1, 2, 3]), ["C", "A", "D", "B"]);
        assert_eq!(names(&schema, vec![3, 2, 1, 0]), ["C", "A", "D", "B"]);
    }

    #[test]
    fn mutual_requires_are_allowed_and_keep_the_given_order() {
        let schema = Schema::builder()
            .state(StateDef::new("A").require(["B"]))
            .state(StateDef::new("B").require(["A"]))
            .build()
            .expect("mutual require is valid");
        assert_eq!(names(&schema, vec![1, 0]), ["B", "A"]);
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Schema::builder()
            .state(StateDef::new("A").multi())
            .build()
            .expect("valid");
        let b = Schema::builder()
            .state(StateDef::new("A").multi())
            .build()
            .expect("valid");
        let c = Schema::builder()
            .state(StateDef::new("A"))
            .build()
            .expect("valid");
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        // Pinned (computed independently from the documented encoding): a change here breaks
        // every deployed peer's schema negotiation.
        assert_eq!(a.hash(), 0x8864_dac3_c2d9_0f99, "hash {:#x}", a.hash());
    }

    #[test]
    fn loads_from_serde_data_and_validates() {
        let def = SchemaDef::of_states(vec![
            StateDef::new("A").add(["B"]),
            StateDef::new("B").auto(),
        ]);
        let bytes =
            bincode::serde::encode_to_vec(&def, bincode::config::standard()).expect("encodes");
        let (schema, _): (Schema, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .expect("decodes");
        assert_eq!(schema.index("B"), Some(1));
        assert!(schema.resolved(1).auto);

        let bad = SchemaDef::of_states(vec![StateDef::new("A").add(["Nope"])]);
        let bytes =
            bincode::serde::encode_to_vec(&bad, bincode::config::standard()).expect("encodes");
        let decoded: Result<(Schema, usize), _> =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard());
        assert!(decoded.is_err(), "an invalid schema must not decode");
    }
}

//! The `[schemas]` of a topology file: inline or from schema files, built into schemas, with
//! a schema error at the line of the state it is about.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use crate::machine::{Schema, SchemaDef, SchemaError, StateDef};

use super::spec::{SchemaFileSpec, SchemaSpec};
use super::toml_file::TomlFile;
use super::{Cx, TopologyError};

/// Schemas: every `[schemas]` entry built, from its inline states or its schema file, by name.
pub(super) fn schemas(
    cx: &Cx<'_>,
    base: &Path,
    written: &BTreeMap<String, Spanned<SchemaSpec>>,
) -> Result<HashMap<String, Arc<Schema>>, TopologyError> {
    let mut schemas = HashMap::new();
    for (name, schema) in written {
        let span = schema.span();
        let written = schema.get_ref();
        let schema = match (&written.file, written.states.is_empty()) {
            (Some(file), true) => {
                let full = base.join(file.get_ref());
                let source = TomlFile::read(&full).map_err(|e| {
                    cx.err(
                        file.span(),
                        format!("cannot read schema file {}: {e}", full.display()),
                        "the path is relative to the topology file",
                    )
                })?;
                // Errors in a schema file point into that file.
                let file_cx = Cx { source };
                let states: SchemaFileSpec = file_cx.toml()?;
                if states.states.is_empty() {
                    return Err(file_cx.err(
                        0..0,
                        format!("schema file for {name:?} has no states"),
                        "list them as [[states]] tables with a `name` each",
                    ));
                }
                build_schema(&file_cx, name, &states.states, 0..0)?
            }
            (None, false) => build_schema(cx, name, &written.states, span)?,
            (Some(_), false) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has both `states` and `file`"),
                    "keep one of them",
                ));
            }
            (None, true) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has no states"),
                    "list its states, or point `file` at a schema file",
                ));
            }
        };
        schemas.insert(name.clone(), Arc::new(schema));
    }
    Ok(schemas)
}

/// A schema from its states, with an error at the line of the state it is about.
fn build_schema(
    cx: &Cx<'_>,
    name: &str,
    states: &[Spanned<StateDef>],
    whole: Range<usize>,
) -> Result<Schema, TopologyError> {
    let def = SchemaDef::of_states(states.iter().map(|s| s.get_ref().clone()).collect());
    Schema::new(def).map_err(|e| {
        let span = state_of_error(&e, states).unwrap_or(whole);
        cx.err(span, format!("schema {name:?}: {e}"), schema_hint(&e))
    })
}

fn state_of_error(e: &SchemaError, states: &[Spanned<StateDef>]) -> Option<Range<usize>> {
    let named =
        |name: &str, nth: usize| states.iter().filter(|s| s.get_ref().name == name).nth(nth);
    let span = match e {
        SchemaError::EmptyName => states.iter().find(|s| s.get_ref().name.is_empty()),
        // The second definition is the one to look at.
        SchemaError::DuplicateState(n) => named(n, 1),
        SchemaError::UnknownState { state, .. } | SchemaError::SelfRelation { state, .. } => {
            named(state, 0)
        }
        SchemaError::AfterCycle(cycle) => cycle.first().and_then(|n| named(n, 0)),
        _ => None,
    };
    span.map(Spanned::span)
}

fn schema_hint(e: &SchemaError) -> &'static str {
    match e {
        SchemaError::EmptyName => "give every state a `name`",
        SchemaError::DuplicateState(_) => "rename or remove one of the two",
        SchemaError::UnknownState { .. } => {
            "add that state to the schema, or fix its name in the relation"
        }
        SchemaError::SelfRelation { .. } => "remove the state from its own relation list",
        SchemaError::AfterCycle(_) => "drop one `after` entry of the cycle",
        _ => "split the machine's states over two machines",
    }
}

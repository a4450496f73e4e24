//! Ported tests of states, mutations and relations.

use asyncmachine::machine::{
    Args, MutationError, Outcome, Relation, Schema, StateDef, StateSource, UnknownState,
};

use crate::helpers::{History, assert_states, machine, no_rels, no_rels_but};

/// Go: TestSingleStateActive (machine_test.go)
#[test]
fn single_state_active() {
    let m = no_rels(&["A"]);
    assert_states(&m, &["A"]);
}

/// Go: TestMultipleStatesActive (machine_test.go)
#[test]
fn multiple_states_active() {
    let m = no_rels(&["A"]);
    m.add(&["B"], Args::new()).expect("known states");
    assert_states(&m, &["A", "B"]);
}

/// Go: TestExposeAllStateNames (machine_test.go)
#[test]
fn expose_all_state_names() {
    let m = no_rels(&["A"]);
    let names: Vec<String> = m.schema().names().map(str::to_owned).collect();
    assert_eq!(names, ["A", "B", "C", "D", "Exception"]);
}

/// Go: TestStateSet (machine_test.go)
#[test]
fn state_set() {
    let m = no_rels(&["A"]);
    m.set(&["B"], Args::new()).expect("known states");
    assert_states(&m, &["B"]);
}

/// Go: TestStateAdd (machine_test.go)
#[test]
fn state_add() {
    let m = no_rels(&["A"]);
    m.add(&["B"], Args::new()).expect("known states");
    assert_states(&m, &["A", "B"]);
}

/// Go: TestStateRemove (machine_test.go)
#[test]
fn state_remove() {
    let m = no_rels(&["B", "C"]);
    m.remove(&["C"], Args::new()).expect("known states");
    assert_states(&m, &["B"]);
}

/// Go: TestPanicWhenStateIsUnknown (machine_test.go). Rust: an error, not a panic.
#[test]
fn panic_when_state_is_unknown() {
    let m = no_rels(&["A"]);
    assert_eq!(
        m.set(&["E"], Args::new()),
        Err(MutationError::UnknownState("E".into()))
    );
    assert_states(&m, &["A"]);
}

/// Go: TestTransitionToActiveState (machine_test.go)
#[test]
fn transition_to_active_state() {
    let m = no_rels(&["A", "B"]);
    let history = History::track(&m);
    m.set(&["A"], Args::new()).expect("known states");
    assert_states(&m, &["A"]);
    assert_eq!(history.count("AExit"), 0);
}

/// Go: TestRemoveRelation (machine_test.go)
#[test]
fn remove_relation() {
    let m = no_rels_but(vec![StateDef::new("C").remove(["D"])], &["D"]);
    m.add(&["C"], Args::new()).expect("known states");
    assert_states(&m, &["C"]);
}

/// Go: TestRemoveRelationSimultaneous (machine_test.go)
#[test]
fn remove_relation_simultaneous() {
    let m = no_rels_but(vec![StateDef::new("C").remove(["D"])], &["D"]);
    assert_eq!(m.set(&["C", "D"], Args::new()), Ok(Outcome::Canceled));
    assert_states(&m, &["D"]);
}

/// Go: TestRemoveRelationCrossBlocking (machine_test.go), its four cases.
#[test]
fn remove_relation_cross_blocking() {
    let cross = || {
        no_rels_but(
            vec![
                StateDef::new("C").remove(["D"]),
                StateDef::new("D").remove(["C"]),
            ],
            &["D"],
        )
    };
    // Set de-activates the old one, both ways.
    for both_ways in [false, true] {
        let m = cross();
        m.set(&["C"], Args::new()).expect("known states");
        assert_states(&m, &["C"]);
        if both_ways {
            m.set(&["D"], Args::new()).expect("known states");
            assert_states(&m, &["D"]);
        }
    }
    // Add de-activates the old one, both ways.
    for both_ways in [false, true] {
        let m = cross();
        m.add(&["C"], Args::new()).expect("known states");
        assert_states(&m, &["C"]);
        if both_ways {
            m.add(&["D"], Args::new()).expect("known states");
            assert_states(&m, &["D"]);
        }
    }
}

/// Go: TestAddRelation (machine_test.go)
#[test]
fn add_relation() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").remove(["D"]),
            StateDef::new("C").add(["D"]),
        ],
        &[],
    );
    m.set(&["C"], Args::new()).expect("known states");
    assert_states(&m, &["C", "D"]);
    m.set(&["A", "C"], Args::new()).expect("known states");
    assert_states(&m, &["A", "C"]);
}

/// Go: TestRequireRelation (machine_test.go)
#[test]
fn require_relation() {
    let m = no_rels_but(vec![StateDef::new("C").require(["D"])], &["A"]);
    m.set(&["C", "D"], Args::new()).expect("known states");
    assert_states(&m, &["C", "D"]);
}

/// Go: TestRequireRelationWhenRequiredIsntActive (machine_test.go)
#[test]
fn require_relation_when_required_isnt_active() {
    let m = no_rels_but(vec![StateDef::new("C").require(["D"])], &["A"]);
    assert_eq!(m.set(&["C", "A"], Args::new()), Ok(Outcome::Canceled));
    assert_states(&m, &["A"]);
}

/// Go: TestRemoveMultiImplied (machine_test.go)
#[test]
fn remove_multi_implied() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").multi().add(["B"]).require(["C"]),
            StateDef::new("B").require(["C"]),
        ],
        &["A", "B", "C"],
    );
    m.remove(&["B"], Args::new()).expect("known states");
    assert_states(&m, &["A", "C"]);
}

/// Go: TestRegressionRemoveCrossBlockedByImplied (machine_test.go)
#[test]
fn regression_remove_cross_blocked_by_implied() {
    let m = machine(vec![
        StateDef::new("A").remove(["B"]),
        StateDef::new("B").remove(["A"]),
        StateDef::new("Z").add(["B"]),
    ]);
    m.set(&["Z"], Args::new()).expect("known states");
    assert_states(&m, &["Z", "B"]);
}

/// Go: TestRegressionImpliedBlockByBeingRemoved (machine_test.go)
#[test]
fn regression_implied_block_by_being_removed() {
    let m = machine(vec![
        StateDef::new("Dry").remove(["Wet"]),
        StateDef::new("Water").add(["Wet"]).remove(["Dry"]),
        StateDef::new("Wet").require(["Water"]),
    ]);
    m.set(&["Dry"], Args::new()).expect("known states");
    m.set(&["Water"], Args::new()).expect("known states");
    assert_states(&m, &["Water", "Wet"]);
}

/// Go: TestGetStateRelations (machine_test.go). Go asks the resolver; the schema answers here.
#[test]
fn get_state_relations() {
    let m = machine(vec![
        StateDef::new("A").add(["B"]).require(["B"]).auto(),
        StateDef::new("B"),
    ]);
    let of = m.schema().relations_of("A").expect("all states are known");
    assert_eq!(of, [Relation::Add, Relation::Require]);
    assert_eq!(m.schema().relations_of("B"), Ok(vec![]));
}

/// Go: TestGetRelationsBetweenStates (machine_test.go)
#[test]
fn get_relations_between_states() {
    let m = machine(vec![
        StateDef::new("A").add(["B"]).require(["C"]).auto(),
        StateDef::new("B"),
        StateDef::new("C"),
    ]);
    let between = m.schema().relations_between("A", "B");
    assert_eq!(between, Ok(vec![Relation::Add]));
}

/// Go: TestGetRelationsBetween (machine_test.go). Go edits the schema of a running machine;
/// here the relations are given when it is built. Unknown states are `UnknownState` errors.
#[test]
fn get_relations_between() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").add(["B", "C"]).after(["B"]),
            StateDef::new("B").remove(["C"]).add(["A"]),
            StateDef::new("C").after(["D"]),
            StateDef::new("D").require(["A"]),
        ],
        &[],
    );
    let schema = m.schema();
    let rels = |from, to| schema.relations_between(from, to).expect("known states");
    assert_eq!(rels("A", "B"), [Relation::Add, Relation::After]);
    assert_eq!(rels("B", "C"), [Relation::Remove]);
    assert_eq!(rels("C", "D"), [Relation::After]);
    assert_eq!(rels("D", "A"), [Relation::Require]);
    assert_eq!(
        schema.relations_between("Unknown1", "A"),
        Err(UnknownState("Unknown1".into()))
    );
    assert_eq!(
        schema.relations_between("A", "Unknown1"),
        Err(UnknownState("Unknown1".into()))
    );
}

/// Go's `InboundRelationsOf` has no test of its own in Go; this pins ours: each state once,
/// in schema order (Go repeats a state per relation kind, in its map's random order).
#[test]
fn inbound_relations_of() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").add(["B", "C"]).after(["B"]),
            StateDef::new("B").remove(["C"]).add(["A"]),
            StateDef::new("C").after(["D"]),
            StateDef::new("D").require(["A"]),
        ],
        &[],
    );
    let schema = m.schema();
    assert_eq!(schema.inbound_relations_of("A"), Ok(vec!["B", "D"]));
    assert_eq!(schema.inbound_relations_of("C"), Ok(vec!["A", "B"]));
    assert_eq!(schema.inbound_relations_of("Exception"), Ok(vec![]));
    assert_eq!(
        schema.inbound_relations_of("Nope"),
        Err(UnknownState("Nope".into()))
    );
}

/// Go: TestSetStates (machine_test.go). Go edits the schema map and passes the names; here the
/// new schema is the current definition with the relations changed and `E` added at the end
/// (after `Exception`, which our schemas hold as a state). Go's `SchemaVer` is the length.
#[test]
fn set_states() {
    let m = no_rels(&["A", "C"]);
    let mut def = m.schema().def().clone();
    for state in &mut def.states {
        match state.name.as_str() {
            "A" => *state = StateDef::new("A").multi(),
            "B" => *state = StateDef::new("B").remove(["C"]),
            "D" => *state = StateDef::new("D").add(["E"]),
            _ => {}
        }
    }
    def.states.push(StateDef::new("E"));
    let version = m.schema().len();
    m.set_schema(Schema::new(def).expect("valid schema"))
        .expect("an enlarged schema is taken");
    assert_ne!(version, m.schema().len(), "the schema's version changed");

    m.set(&["A", "B", "D"], Args::new()).expect("known states");
    assert_states(&m, &["A", "B", "D", "E"]);
}

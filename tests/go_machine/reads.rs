//! Ported tests of the clock and reads.

use asyncmachine::machine::{
    Args, MutationKind, Relation, Schema, SchemaError, StateDef, StateSource, is_active,
};

use crate::helpers::{assert_states, no_rels, no_rels_but};

/// Go: TestTime (machine_test.go). Go's `Time.After` and `Time.Sum` are written out here
/// (part 3 of issue 14).
#[test]
fn time() {
    let m = no_rels_but(vec![StateDef::new("B").multi()], &[]);
    let abcd = ["A", "B", "C", "D"];
    // (mutation, called states, active states after, ticks of A B C D after)
    type Step = (
        MutationKind,
        &'static [&'static str],
        &'static [&'static str],
        [u64; 4],
    );
    let steps: [Step; 7] = [
        (MutationKind::Add, &["A", "B"], &["A", "B"], [1, 1, 0, 0]),
        (MutationKind::Add, &["A", "B"], &["A", "B"], [1, 3, 0, 0]),
        (
            MutationKind::Add,
            &["A", "B", "C"],
            &["A", "B", "C"],
            [1, 5, 1, 0],
        ),
        (MutationKind::Set, &["D"], &["D"], [2, 6, 2, 1]),
        (MutationKind::Add, &["D", "C"], &["D", "C"], [2, 6, 3, 1]),
        (MutationKind::Remove, &["B", "C"], &["D"], [2, 6, 4, 1]),
        (
            MutationKind::Add,
            &["A", "B"],
            &["D", "A", "B"],
            [3, 7, 4, 1],
        ),
    ];
    for (kind, called, active, ticks) in steps {
        match kind {
            MutationKind::Add => m.add(called, Args::new()),
            MutationKind::Remove => m.remove(called, Args::new()),
            MutationKind::Set => m.set(called, Args::new()),
        }
        .expect("known states");
        assert_states(&m, active);
        assert_eq!(m.time(&abcd), ticks, "after {kind} {called:?}");
    }
    let before = m.time(&abcd);
    m.add(&["C"], Args::new()).expect("known states");
    let now = m.time(&abcd);
    assert_states(&m, &["A", "B", "D", "C"]);
    assert_eq!(now, [3, 7, 5, 1]);
    let after = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(x, y)| x >= y) && a != b;
    assert!(after(&now, &before));
    assert!(!after(&before, &now));
    assert_eq!(m.clock().iter().sum::<u64>(), 16);
}

/// Go: TestClock (machine_test.go). Go's `Clock` map is the names zipped with `time`.
#[test]
fn clock() {
    let m = no_rels_but(vec![StateDef::new("B").multi()], &[]);
    m.add(&["A", "B"], Args::new()).expect("known states");
    m.add(&["A", "B"], Args::new()).expect("known states");
    m.add(&["A", "B", "C"], Args::new()).expect("known states");
    m.set(&["D"], Args::new()).expect("known states");
    m.add(&["D", "C"], Args::new()).expect("known states");
    m.remove(&["B", "C"], Args::new()).expect("known states");
    m.add(&["A", "B"], Args::new()).expect("known states");
    assert_states(&m, &["D", "A", "B"]);
    let names: Vec<String> = m.schema().names().map(str::to_owned).collect();
    let clock: Vec<(String, u64)> = names.into_iter().zip(m.clock()).collect();
    let expected = [("A", 3), ("B", 7), ("C", 4), ("D", 1), ("Exception", 0)];
    assert_eq!(clock, expected.map(|(n, t)| (n.to_owned(), t)));
    assert_eq!(m.time(&["A", "B"]), [3, 7]);
    assert_eq!(m.tick("A"), 3);
}

/// Go: TestIs (machine_test.go)
#[test]
fn is() {
    let m = no_rels(&["A", "B"]);
    assert!(m.is(&["A", "B"]));
    assert!(!m.is(&["A", "B", "C"]));
}

/// Go: TestNot (machine_test.go)
#[test]
fn not() {
    let m = no_rels(&["A", "B"]);
    assert!(!m.not(&["A", "B"]));
    assert!(!m.not(&["A", "B", "C"]), "A B C is partially active");
    assert!(m.not(&["D"]));
}

/// Go: TestAny (machine_test.go). Go's `Any(groups...)` (some group fully active) is written
/// out with `is`; Go's `Any1` is our `any`.
#[test]
fn any() {
    let m = no_rels(&["A", "B"]);
    let any_group = |groups: &[&[&str]]| groups.iter().any(|g| m.is(g));
    assert!(any_group(&[&["A", "B"], &["C"]]));
    assert!(any_group(&[&["A", "B", "C"], &["A"]]));
    assert!(m.any(&["A", "B"]));
    assert!(!any_group(&[&["C"]]));
    assert!(!m.any(&["C"]));
}

/// Go: TestSwitch (machine_test.go)
#[test]
fn switch() {
    let m = no_rels(&["A"]);
    assert_eq!(m.switch(&["A", "B"]), Some("A"));
    assert_eq!(m.switch(&["C", "B"]), None);
}

/// Go: TestIsActiveTick (mach_misc_test.go)
#[test]
fn is_active_tick() {
    assert!(is_active(1));
    assert!(!is_active(0));
    assert!(!is_active(6548734));
    assert!(is_active(6548735));
}

/// Go: TestMutationTypeString (mach_misc_test.go). Go's internal `eval` type has no
/// counterpart.
#[test]
fn mutation_type_string() {
    assert_eq!(MutationKind::Add.to_string(), "add");
    assert_eq!(MutationKind::Remove.to_string(), "remove");
    assert_eq!(MutationKind::Set.to_string(), "set");
}

/// Go: TestRelationString (mach_misc_test.go)
#[test]
fn relation_string() {
    assert_eq!(Relation::After.to_string(), "after");
    assert_eq!(Relation::Add.to_string(), "add");
    assert_eq!(Relation::Require.to_string(), "require");
    assert_eq!(Relation::Remove.to_string(), "remove");
}

/// Go: TestParseStruct (mach_misc_test.go). Go drops a state's relations to itself when it
/// parses a schema; here they are refused with the reason, deliberately (see the `schema`
/// module docs): a schema that says something impossible is a mistake to report, not to mend.
#[test]
fn parse_struct() {
    let selfish = Schema::builder()
        .state(StateDef::new("A").remove(["A", "B", "C"]).add(["C"]))
        .state(StateDef::new("B"))
        .state(StateDef::new("C"))
        .build();
    assert!(matches!(
        selfish,
        Err(SchemaError::SelfRelation {
            relation: Relation::Remove,
            ..
        })
    ));
    let clean = Schema::builder()
        .state(StateDef::new("A").remove(["B"]).add(["C"]))
        .state(StateDef::new("B"))
        .state(StateDef::new("C"))
        .build()
        .expect("valid");
    let a = clean.state(0).expect("A");
    assert_eq!(
        (a.remove.clone(), a.add.clone()),
        (vec!["B".into()], vec!["C".into()])
    );
    assert!(a.after.is_empty());
}

//! Ported tests of the clock and reads.

use asyncmachine::machine::{
    Args, Machine, MutationError, MutationKind, Outcome, Relation, Schema, SchemaError, StateDef,
    StateSource, is_active,
};

use crate::helpers::{assert_states, machine, no_rels, no_rels_but};

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

/// Go: TestHas (machine_test.go)
#[test]
fn has() {
    let m = no_rels(&[]);
    assert!(!m.has(&["A", "Err"]));
    assert!(!m.has1("Err"));
    assert!(m.has(&["A", "A", "B"]));
    let names: Vec<String> = m.schema().names().map(str::to_owned).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(m.has(&names));
    assert!(m.has(&["A", "B"]));
    assert!(m.has1("Exception"));
    assert_eq!(m.index("C"), Some(2));
    assert_eq!(m.index("Err"), None);
}

/// Go: TestIsClock (machine_test.go). Go's `Clock` map is a list of (name, tick) pairs here.
#[test]
fn is_clock() {
    let m = no_rels(&[]);
    let mut clock_a = vec![("A", m.tick("A"))];
    let names = ["A", "B", "C", "D", "Exception"];
    let clock_all: Vec<(&str, u64)> = names.into_iter().zip(m.clock()).collect();
    m.add(&["A", "B"], Args::new()).expect("known states");
    assert!(!m.is_clock(&clock_all));
    assert!(!m.is_clock(&clock_a));
    clock_a[0].1 += 1;
    assert!(m.is_clock(&clock_a));
}

/// Go: TestIsTime (machine_test.go). Go's `nil` for every state is the schema's names here.
#[test]
fn is_time() {
    let m = no_rels(&[]);
    let names = ["A", "B", "C", "D", "Exception"];
    let time_a = m.time(&["A"]);
    let time_all = m.clock();
    assert!(m.is_time(&time_a, &["A"]));
    assert!(m.is_time(&time_all, &names));
    m.add(&["A", "B"], Args::new()).expect("known states");
    assert!(!m.is_time(&time_a, &["A"]));
    assert!(!m.is_time(&time_all, &names));
    assert!(m.is_time(&[1, 1], &["A", "B"]));
    assert!(!m.is_time(&[1], &["A", "B"]), "the lengths differ");
    assert_eq!(m.time_sum(&names), 2);
    assert_eq!(m.time_sum(&["B", "C"]), 1);
}

/// Go: TestCountActive (machine_test.go). Go counts `ActiveStates(states)`.
#[test]
fn count_active() {
    let m = no_rels(&[]);
    m.add(&["A"], Args::new()).expect("known states");
    assert_eq!(m.count_active(&["A", "B"]), 1);
    assert!(m.not1("B"));
    assert!(!m.not1("A"));
    assert!(m.any_of(&[&["A", "B"], &["A"]]));
    assert!(!m.any_of(&[&["A", "B"], &["C"]]));
}

/// Go: TestToggle (machine_test.go). `toggle` is a provided method of `StateSource` and
/// returns its mutation future; a local machine's is ready at once.
#[tokio::test]
async fn toggle() {
    let m = no_rels(&[]);
    let toggled = m.toggle(&["A"], Args::new()).await;
    assert_eq!(toggled, Ok(Outcome::Executed));
    assert!(m.is1("A"));
    m.toggle(&["A"], Args::new()).await.expect("known state");
    assert!(!m.is1("A"));

    // Several states: removed only when all are active.
    let m = no_rels(&["A"]);
    m.toggle(&["A", "B"], Args::new())
        .await
        .expect("known states");
    assert_states(&m, &["A", "B"]);
    m.toggle(&["A", "B"], Args::new())
        .await
        .expect("known states");
    assert_states(&m, &[]);
    assert_eq!(
        m.toggle(&["Nope"], Args::new()).await,
        Err(MutationError::UnknownState("Nope".into()))
    );
}

/// Go's `assertString`: the same lines, each trimmed, ignoring blank ones.
#[track_caller]
fn assert_lines(actual: &str, expected: &str) {
    let lines = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(lines(actual), lines(expected));
}

/// Go: TestInspect (machine_test.go). Go's `NewRels` schema; Go's second dump, with `nil`
/// states, follows the order `VerifyStates` gave, passed explicitly here.
#[test]
fn inspect() {
    let m = machine(vec![
        StateDef::new("A").auto().require(["C"]),
        StateDef::new("B").multi().add(["C"]),
        StateDef::new("C").after(["D"]),
        StateDef::new("D").add(["C", "B"]),
    ]);
    m.set(&["A", "C"], Args::new()).expect("known states");
    let expected = "
        1 A
            |Tick     1
            |Auto     true
            |Require  C
        0 B
            |Tick     0
            |Multi    true
            |Add      C
        1 C
            |Tick     1
            |After    D
        0 D
            |Tick     0
            |Add      C B
        0 Exception
            |Tick     0
            |Multi    true
    ";
    assert_lines(&m.inspect(&[]), expected);
    assert_lines(&m.inspect(&["A", "B", "C", "D", "Exception"]), expected);
    m.remove(&["C"], Args::new()).expect("known states");
    m.add(&["B"], Args::new()).expect("known states");
    m.add(&["D"], Args::new()).expect("known states");
    let expected = "
        0 Exception
            |Tick     0
            |Multi    true
        1 A
            |Tick     3
            |Auto     true
            |Require  C
        1 B
            |Tick     1
            |Multi    true
            |Add      C
        1 C
            |Tick     3
            |After    D
        1 D
            |Tick     1
            |Add      C B
    ";
    assert_lines(&m.inspect(&["Exception", "A", "B", "C", "D"]), expected);
    m.dispose();
    assert_eq!(
        m.inspect(&[]),
        "",
        "a disposed machine answers empty, as in Go"
    );
}

/// Go: TestString (machine_test.go)
#[test]
fn string() {
    let m = no_rels(&["A", "B"]);
    assert_eq!(m.summary(), "(A:1 B:1)");
    assert_eq!(m.summary_all(), "(A:1 B:1) [C:0 D:0 Exception:0]");
    m.dispose();
    assert_eq!(m.summary(), "");
    assert_eq!(m.summary_all(), "");
}

/// Go: TestGroups (machine_test.go). Go builds the groups from struct definitions (the
/// schema's own groups `self`, `TestGroups1Def`, `TestGroups0Def` come from the embedded
/// structs); here they are given by name, in the same order. `Exception` is written first,
/// where Go's sorting puts it, so the positions match.
#[test]
fn groups() {
    let schema = Schema::builder()
        .state(StateDef::new("Exception"))
        .state(StateDef::new("State00"))
        .state(StateDef::new("State01"))
        .state(StateDef::new("State10"))
        .state(StateDef::new("State11"))
        .state(StateDef::new("State20"))
        .state(StateDef::new("State21"))
        .build()
        .expect("valid")
        .with_group("Group0", &["State20", "State21"])
        .and_then(|s| s.with_group("GroupTestNameBar", &["State11", "State20"]))
        .and_then(|s| s.with_group("self", &["State20", "State21"]))
        .and_then(|s| s.with_group("TestGroups1Def", &["State10", "State11"]))
        .and_then(|s| s.with_group("TestGroups0Def", &["State00", "State01"]))
        .expect("known states");
    let groups: Vec<(&str, &[usize])> = schema.groups().collect();
    let expected: [(&str, &[usize]); 5] = [
        ("Group0", &[5, 6]),
        ("GroupTestNameBar", &[4, 5]),
        ("self", &[5, 6]),
        ("TestGroups1Def", &[3, 4]),
        ("TestGroups0Def", &[1, 2]),
    ];
    assert_eq!(groups, expected);
    assert_eq!(schema.group("Group0"), Some(&[5, 6][..]));
    assert_eq!(schema.group("Nope"), None);
    assert_eq!(
        schema.clone().with_group("Bad", &["State99"]).err(),
        Some(SchemaError::UnknownGroupState {
            group: "Bad".into(),
            state: "State99".into()
        })
    );

    // Groups serve `switch_group`, answered from the clock.
    let m = Machine::new(schema);
    assert_eq!(m.switch_group("GroupTestNameBar"), None);
    m.add(&["State20"], Args::new()).expect("known state");
    assert_eq!(
        m.switch_group("GroupTestNameBar").as_deref(),
        Some("State20")
    );
    m.add(&["State11"], Args::new()).expect("known state");
    assert_eq!(
        m.switch_group("GroupTestNameBar").as_deref(),
        Some("State11")
    );
    assert_eq!(m.switch_group("Nope"), None);
}

/// Go: TestOpts (machine_test.go). The parent and tags are the builder's; Go's log level and
/// stack-trace options have no counterpart (logs go to `tracing`), and the queue limit has no
/// getter (its effect is tested in tests/machine.rs).
#[test]
fn opts() {
    let m = no_rels(&[]);
    assert_eq!(m.parent_id(), None);
    assert!(m.tags().is_empty());
    let empty = Schema::builder().build().expect("valid");
    let m2 = Machine::builder(empty)
        .parent(m.id())
        .tags(["a", "b"])
        .queue_limit(10)
        .build();
    assert_eq!(m2.parent_id().as_deref(), Some(m.id()));
    assert_eq!(m2.tags(), ["a", "b"]);
    m2.set_tags(["c"]);
    assert_eq!(m2.tags(), ["c"]);
}

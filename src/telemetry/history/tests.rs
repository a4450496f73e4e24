use super::*;
use crate::machine::StateDef;
use crate::telemetry::record::{MachineRef, SentRecord, TransitionRecord};

fn at(node: &str) -> MachineRef {
    MachineRef {
        node: node.into(),
        machine: "demo".into(),
    }
}

fn machine(node: &str, clock: Vec<u64>) -> Record {
    Record::Machine(MachineRecord {
        at: at(node),
        id: node.into(),
        parent_id: None,
        upstream: None,
        listen: vec![],
        states: vec![StateDef::new("A"), StateDef::new("B")],
        clock,
        queue_tick: 0,
        time_us: 0,
        dropped: 0,
    })
}

fn transition(node: &str, clock: Vec<u64>, called: &[&str], origin: Option<&str>) -> Record {
    Record::Transition(TransitionRecord {
        at: at(node),
        time_us: 0,
        kind: origin.map(|_| "add".into()).or(Some("add".into())),
        called: called.iter().map(|s| s.to_string()).collect(),
        args: vec![],
        args_dropped: 0,
        outcome: "executed".into(),
        auto: false,
        queue_tick: 1,
        clock,
        changed: vec![1],
        errors: vec![],
        origin: origin.map(str::to_owned),
        dropped: 0,
    })
}

fn update(node: &str, clock: Vec<u64>) -> Record {
    let Record::Transition(mut t) = transition(node, clock, &[], None) else {
        unreachable!()
    };
    t.kind = None;
    t.outcome = "update".into();
    Record::Transition(t)
}

fn sent(node: &str, called: &[&str], origin: Option<&str>) -> Record {
    Record::Sent(SentRecord {
        at: at(node),
        time_us: 0,
        kind: "add".into(),
        called: called.iter().map(|s| s.to_string()).collect(),
        args: vec![],
        args_dropped: 0,
        origin: origin.map(str::to_owned),
        dropped: 0,
    })
}

#[test]
fn time_travel_gives_every_machines_clock_at_an_entry() {
    let mut h = History::new(100);
    let s1 = h.ingest(machine("root", vec![0, 0]), 1).expect("entry");
    h.ingest(machine("leaf", vec![0, 0]), 1);
    let s3 = h
        .ingest(transition("root", vec![0, 1], &["B"], None), 2)
        .expect("entry");
    let s4 = h.ingest(update("leaf", vec![0, 1]), 3).expect("entry");
    assert_eq!(h.clocks_at(s1).get("root/demo"), Some(&vec![0, 0]));
    assert!(!h.clocks_at(s1).contains_key("leaf/demo"));
    let at3 = h.clocks_at(s3);
    assert_eq!(
        (at3["root/demo"].clone(), at3["leaf/demo"].clone()),
        (vec![0, 1], vec![0, 0])
    );
    assert_eq!(h.clocks_at(s4)["leaf/demo"], vec![0, 1]);
    // Stepping: back from the leaf's update is the root's transition, across machines.
    let all = Filter::default();
    assert_eq!(h.step(s4, false, &all), Some(s3));
    assert_eq!(h.step(s3, true, &all), Some(s4));
    assert_eq!(h.step(s4, true, &all), None);
    let leaf_only = Filter {
        machine: Some("leaf/demo".into()),
        ..Filter::default()
    };
    assert_eq!(h.step(s4, false, &leaf_only), None);
    assert_eq!(
        h.machine("leaf/demo").map(|m| m.clock.clone()),
        Some(vec![0, 1])
    );
}

#[test]
fn the_bound_evicts_the_oldest_and_keeps_their_clocks_for_time_travel() {
    let mut h = History::new(2);
    h.ingest(machine("root", vec![0, 0]), 1);
    h.ingest(transition("root", vec![0, 1], &["B"], None), 2);
    h.ingest(transition("root", vec![0, 3], &["B"], None), 3);
    let last = h
        .ingest(transition("root", vec![1, 3], &["A"], None), 4)
        .expect("entry");
    assert_eq!(h.entries().len(), 2);
    assert_eq!(h.evicted(), 2);
    // Before the oldest kept entry: the clock of the last evicted one.
    assert_eq!(h.clocks_at(0)["root/demo"], vec![0, 1]);
    assert_eq!(h.clocks_at(last)["root/demo"], vec![1, 3]);
    assert!(h.entry(1).is_none());
    assert_eq!(h.entry(last).map(|e| e.seq), Some(last));
}

#[test]
fn filters_by_machine_state_kind_and_outcome() {
    let mut h = History::new(100);
    h.ingest(machine("root", vec![0, 0]), 1);
    h.ingest(transition("root", vec![0, 1], &["B"], None), 2);
    h.ingest(update("leaf", vec![0, 1]), 3);
    h.ingest(sent("leaf", &["A"], None), 4);
    let count = |f: Filter| h.query(0, &f, 100).len();
    assert_eq!(count(Filter::default()), 4);
    assert_eq!(
        count(Filter {
            machine: Some("leaf/demo".into()),
            ..Filter::default()
        }),
        2
    );
    assert_eq!(
        count(Filter {
            kind: Some("update".into()),
            ..Filter::default()
        }),
        1
    );
    assert_eq!(
        count(Filter {
            kind: Some("sent".into()),
            ..Filter::default()
        }),
        1
    );
    assert_eq!(
        count(Filter {
            outcome: Some("executed".into()),
            ..Filter::default()
        }),
        1
    );
    // B changed on the root (named through its schema) and A was sent by the leaf.
    assert_eq!(
        count(Filter {
            state: Some("B".into()),
            ..Filter::default()
        }),
        1
    );
    assert_eq!(
        count(Filter {
            state: Some("A".into()),
            ..Filter::default()
        }),
        1
    );
    assert_eq!(h.query(2, &Filter::default(), 1).len(), 1);
}

#[test]
fn hops_follow_the_sent_records_back_to_the_first_client() {
    let mut h = History::new(100);
    h.ingest(sent("leaf", &["B"], Some("cli")), 1);
    h.ingest(sent("mid2", &["B"], Some("leaf")), 1);
    h.ingest(sent("other", &["B"], Some("x")), 1);
    let t = h
        .ingest(transition("root", vec![0, 1], &["B"], Some("mid1")), 2)
        .expect("entry");
    // mid1's record arrives after the root's transition: a different connection.
    h.ingest(sent("mid1", &["B"], Some("mid2")), 3);
    assert_eq!(h.hops(t), vec!["mid1", "mid2", "leaf", "cli"]);
    let local = h
        .ingest(transition("root", vec![0, 3], &["B"], None), 4)
        .expect("entry");
    assert!(h.hops(local).is_empty());
}

#[test]
fn export_then_import_gives_the_same_history() {
    let mut h = History::new(3);
    h.ingest(machine("root", vec![0, 0]), 1);
    h.ingest(transition("root", vec![0, 1], &["B"], None), 2);
    h.ingest(sent("leaf", &["B"], None), 3);
    h.ingest(update("leaf", vec![0, 1]), 4);
    let lines: Vec<String> = h.export_lines().collect();
    let back = History::import_lines(lines.iter().map(|l| l.as_bytes()), 3).expect("imports");
    let again: Vec<String> = back.export_lines().collect();
    assert_eq!(lines, again);
    assert_eq!(
        back.entries().cloned().collect::<Vec<_>>(),
        h.entries().cloned().collect::<Vec<_>>()
    );
    assert_eq!(back.clocks_at(3), h.clocks_at(3));
    assert_eq!(back.next_seq(), h.next_seq());
}

#[test]
fn a_bad_dump_is_refused_with_the_line() {
    let no_header = [br#"{"d":"base","key":"a/b","clock":[]}"#.as_slice()];
    assert_eq!(
        History::import_lines(no_header, 10).err(),
        Some(DumpError::NoHeader)
    );
    let mut h = History::new(10);
    h.ingest(machine("root", vec![0, 0]), 1);
    let mut lines: Vec<String> = h.export_lines().collect();
    lines.insert(1, "{not json".into());
    assert!(matches!(
        History::import_lines(lines.iter().map(|l| l.as_bytes()), 10),
        Err(DumpError::Line { line: 2, .. })
    ));
    let future = br#"{"d":"header","format":"am-dbg-dump","version":9,"next_seq":1,"evicted":0}"#;
    assert_eq!(
        History::import_lines([future.as_slice()], 10).err(),
        Some(DumpError::Version(9))
    );
}

/// A dump's numbers are input: a `next_seq` at the end of u64 is refused with the reason
/// (taking entries after it would overflow), and one at the bound takes no more entries.
#[test]
fn a_dump_numbered_at_the_end_of_u64_is_refused() {
    let header = |next_seq: u64, evicted: u64| {
        format!(
            r#"{{"d":"header","format":"am-dbg-dump","version":1,"next_seq":{next_seq},"evicted":{evicted}}}"#
        )
    };
    let max = header(u64::MAX, 0);
    match History::import_lines([max.as_bytes()], 10) {
        Err(DumpError::Line { line: 1, error }) => assert!(error.contains("next_seq"), "{error}"),
        other => panic!("{other:?}"),
    }
    let last = header(MAX_SEQ, u64::MAX);
    let mut h = History::import_lines([last.as_bytes()], 1).expect("imports");
    assert_eq!(h.ingest(machine("root", vec![0, 0]), 1), Some(MAX_SEQ));
    assert_eq!(
        h.ingest(machine("root", vec![0, 1]), 2),
        None,
        "past the bound"
    );
    assert_eq!(h.evicted(), u64::MAX);
}

/// Names a sender invents fill no memory past the bounds: a node or a machine past them is
/// refused with the reason, while those known are still taken; a dump past them is refused.
#[test]
fn nodes_and_machines_past_the_bounds_are_refused() {
    use crate::proto::message::NodeStatus;
    let status = |node: &str| {
        Record::Status(StatusRecord {
            node: node.into(),
            time_ms: 1,
            listen: vec![],
            status: NodeStatus::default(),
        })
    };
    let mut h = History::new(100).with_bounds(2, 2);
    for node in ["a", "b", "c"] {
        h.ingest(status(node), 1);
        h.ingest(machine(node, vec![0, 0]), 1);
    }
    assert_eq!(h.nodes().count(), 2);
    assert_eq!(h.machines().count(), 2);
    assert_eq!(h.refused(), 2);
    assert!(matches!(
        h.admits(&status("c")),
        Err(HistoryError::TooManyNodes(2, ref n)) if n == "c"
    ));
    let err = h
        .admits(&transition("c", vec![0, 1], &["B"], None))
        .expect_err("past the bound");
    assert!(err.to_string().contains("c/demo"), "{err}");
    // The known ones go on.
    assert!(h.ingest(status("a"), 2).is_none() && h.refused() == 2);
    assert!(
        h.ingest(transition("b", vec![0, 1], &["B"], None), 2)
            .is_some()
    );

    let lines: Vec<String> = h.export_lines().collect();
    let small = History::new(100).with_bounds(1, 2);
    match History::import_lines_into(lines.iter().map(|l| l.as_bytes()), small) {
        Err(DumpError::Line { error, .. }) => assert!(error.contains("nodes"), "{error}"),
        other => panic!("{other:?}"),
    }
    let same = History::import_lines_into(
        lines.iter().map(|l| l.as_bytes()),
        History::new(100).with_bounds(2, 2),
    )
    .expect("imports");
    assert_eq!(same.machines().count(), 2);
}

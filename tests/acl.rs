//! Per-client permissions: which states a client sees, which it may mutate; refusals say who
//! may do what.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, MutationError, Outcome, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorError};
use asyncmachine::proto::message::RefusalKind;
use asyncmachine::server::ServerConfig;
use common::*;

fn rules(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_and_change_only_what_they_may() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let config = ServerConfig {
        see: rules(&[("*", &["A", "B"]), ("writer", &["B"])]),
        mutate: rules(&[("*", &[]), ("writer", &["B"])]),
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine.clone()), config, "tcp").await;
    let writer = mirror(&endpoint, "writer").await;
    let reader = mirror(&endpoint, "reader").await;

    // The writer may change B, and only B.
    assert_eq!(
        within("writer B", writer.add(&["B"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    match within("writer A", writer.add(&["A"], Args::new())).await {
        Err(MutationError::Refused(reason)) => {
            assert_eq!(
                reason,
                "client \"writer\" may not mutate A; it may mutate: B"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(machine.not(&["A"]), "a refused mutation does not run");
    // The reader falls under "*": may change nothing.
    match within("reader A", reader.add(&["A"], Args::new())).await {
        Err(MutationError::Refused(reason)) => {
            assert!(reason.ends_with("it may mutate: nothing"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // What each sees: the writer only B, the reader A and B, nobody C.
    machine.add(&["A", "C"], Args::new()).expect("taken in");
    within("reader sees A", reader.when(&["A", "B"]))
        .await
        .expect("waits");
    assert!(!reader.is1("C"), "C is not visible to the reader");
    assert!(writer.is1("B"));
    assert!(
        !writer.is1("A") && !writer.is1("C"),
        "the writer sees only B"
    );
    assert!(
        server
            .stats()
            .refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_on_the_allow_list_get_in() {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let config = ServerConfig {
        allow_ids: Some(vec!["listed".into()]),
        ..ServerConfig::default()
    };
    let (server, endpoint) = serve(Arc::new(machine), config, "tcp").await;
    let stranger = within(
        "stranger",
        Mirror::connect(&endpoint, mirror_config("stranger")),
    )
    .await;
    match stranger {
        Err(MirrorError::Refused { kind, reason, .. }) => {
            assert_eq!(kind, RefusalKind::Acl);
            assert!(
                reason.contains("\"stranger\"") && reason.contains("allow-list"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected an ACL refusal, got {other}"),
        Ok(_) => panic!("a client off the allow-list got in"),
    }
    let listed = mirror(&endpoint, "listed").await;
    assert_eq!(listed.connection(), ConnState::Ready);
    let ids: Vec<String> = server.clients().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["listed"]);
}

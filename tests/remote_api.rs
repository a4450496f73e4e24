//! The parts of the Api a mirror asks its source for, through a tree of depth 3 (a root
//! machine, mirror `a` of it served, mirror `b` of `a` served, mirror `c` of `b`): `when_args`
//! answered by the root (and ordered before the leaf's later mutations), `err` and
//! `add_err_state` reaching the root, waits withdrawn at every hop, refusals passed down. Run
//! over several transports.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use asyncmachine::machine::{
    Args, Machine, MutationError, Outcome, Schema, StateDef, StateSource, WaitError,
};
use asyncmachine::mirror::ConnState;
use asyncmachine::proto::acl::Acl;
use asyncmachine::server::{Server, ServerConfig};
use common::*;

fn machine() -> Machine {
    let schema = Schema::builder()
        .state(StateDef::new("Start"))
        .state(StateDef::new("Tick").multi())
        .state(StateDef::new("NetErr").require(["Exception"]))
        .state(StateDef::new("Fail"))
        .build()
        .expect("valid schema");
    Machine::builder(schema).id("root").build()
}

fn poll_now<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

pub async fn when_args_at_depth_three_resolves_for_its_arguments_only(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    let mut wait = tree.c.when_args("Tick", Args::new().with("id", 2));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;

    tree.root
        .add(&["Tick"], Args::new().with("id", 1))
        .expect("known state");
    converged(&tree.c, &tree.root.clock()).await;
    assert_eq!(
        tree.root.waiter_count(),
        1,
        "other arguments leave it waiting"
    );
    assert!(poll_now(&mut wait).is_pending());

    tree.root
        .add(&["Tick"], Args::new().with("id", 2).with("more", true))
        .expect("known state");
    assert_eq!(within("the wait to end", wait).await, Ok(()));
    assert_eq!(tree.root.waiter_count(), 0);
}

pub async fn a_mutation_sent_after_a_wait_reaches_the_root_behind_it(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    // Not waited for at the root: every hop registers the wait before it runs what came
    // after it.
    let wait = tree.c.when_args("Tick", Args::new().with("id", 4));
    let added = within("add", tree.c.add(&["Tick"], Args::new().with("id", 4))).await;
    assert_eq!(added, Ok(Outcome::Executed));
    assert_eq!(within("the wait to end", wait).await, Ok(()));
    assert_eq!(tree.root.waiter_count(), 0);
}

pub async fn the_roots_last_error_reaches_a_leaf(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    tree.root
        .on_state("Fail", |_| Err::<(), _>("boom at the root"))
        .expect("known state");
    assert_eq!(within("err", tree.c.err()).await, Ok(None));
    tree.root.add(&["Fail"], Args::new()).expect("known state");
    assert!(tree.root.is_err());
    assert_eq!(
        within("err", tree.c.err()).await,
        Ok(Some("boom at the root".to_owned()))
    );
}

pub async fn add_err_state_from_a_leaf_reaches_the_root(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    let added = within(
        "add_err_state",
        tree.c
            .add_err_state("NetErr", &"link down", Args::new().with("hop", 3)),
    )
    .await;
    assert_eq!(added, Ok(Outcome::Executed));
    assert!(tree.root.is(&["NetErr", "Exception"]));
    assert_eq!(tree.root.last_error().as_deref(), Some("link down"));
    assert!(
        tree.c.is(&["NetErr", "Exception"]),
        "the leaf sees it on return"
    );
    assert_eq!(
        within("err", tree.c.err()).await,
        Ok(Some("link down".to_owned()))
    );
    let again = within("add_err", tree.c.add_err(&"later", Args::new())).await;
    assert_eq!(again, Ok(Outcome::Executed));
    assert_eq!(tree.root.last_error().as_deref(), Some("later"));
}

pub async fn a_withdrawn_wait_is_gone_at_every_hop(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    let wait = tree.c.when_args("Tick", Args::new().with("id", 1));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;
    let canceled = wait.until(std::future::ready(())).await;
    assert_eq!(canceled, Err(WaitError::Canceled));
    eventually("the root's waiter to go", || tree.root.waiter_count() == 0).await;

    let dropped = tree.c.when_args("Tick", Args::new().with("id", 2));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;
    drop(dropped);
    eventually("the root's waiter to go", || tree.root.waiter_count() == 0).await;

    // The hops still answer the waits that stay.
    let kept = tree.c.when_args("Tick", Args::new().with("id", 3));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;
    tree.root
        .add(&["Tick"], Args::new().with("id", 3))
        .expect("known state");
    assert_eq!(within("the kept wait", kept).await, Ok(()));
}

pub async fn a_hop_that_may_not_see_refuses_and_the_reason_comes_down(scheme: &str) {
    let acl = Acl {
        see: [("b".to_owned(), vec!["Start".to_owned(), "Tick".to_owned()])].into(),
        ..Acl::default()
    };
    let tree = chain(
        machine(),
        scheme,
        ServerConfig {
            acl,
            ..ServerConfig::default()
        },
    )
    .await;
    let refused = within(
        "a refused wait",
        tree.c.when_args("NetErr", Args::new().with("id", 1)),
    )
    .await;
    assert!(
        matches!(&refused, Err(WaitError::Refused(r)) if r.contains("\"b\" may not see state NetErr")),
        "{refused:?}"
    );
    let err = within("a refused err", tree.c.err()).await;
    assert!(
        matches!(&err, Err(MutationError::Refused(r)) if r.contains("may not see Exception")),
        "{err:?}"
    );
    // What b may see, it may wait on.
    let allowed = tree.c.when_args("Tick", Args::new().with("id", 1));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;
    tree.root
        .add(&["Tick"], Args::new().with("id", 1))
        .expect("known state");
    assert_eq!(within("the allowed wait", allowed).await, Ok(()));
}

pub async fn a_wait_outlives_a_restart_of_the_hop_below_it(scheme: &str) {
    let mut tree = chain(machine(), scheme, ServerConfig::default()).await;
    let wait = tree.c.when_args("Tick", Args::new().with("id", 7));
    eventually("the wait to reach the root", || {
        tree.root.waiter_count() == 1
    })
    .await;

    let mut link = tree.c.connection_changes();
    let b_server = tree.servers.pop().expect("b's server");
    b_server.shutdown(Duration::from_secs(5)).await;
    within(
        "c to lose b",
        link.wait_for(|s| *s == ConnState::Disconnected),
    )
    .await
    .expect("watch");
    eventually("the wait to be withdrawn with the link", || {
        tree.root.waiter_count() == 0
    })
    .await;

    // b served again on the same address: c reconnects and sends the wait again.
    let server = Server::new(ServerConfig {
        transport: transport(),
        ..ServerConfig::default()
    });
    server
        .add_source("worker", Arc::new(tree.b.clone()))
        .expect("first source");
    within("rebind", async {
        // The old listener's address may take a moment to free.
        while server.listen(&tree.b_at.without_machine()).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    tree.servers.push(server);
    eventually("the wait to reach the root again", || {
        tree.root.waiter_count() == 1
    })
    .await;
    tree.root
        .add(&["Tick"], Args::new().with("id", 7))
        .expect("known state");
    assert_eq!(within("the wait to end", wait).await, Ok(()));
}

macro_rules! transports {
    ($($transport:ident),* $(,)?) => {$(
        mod $transport {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(stringify!($transport)).await;
                    }
                };
            }
            case!(when_args_at_depth_three_resolves_for_its_arguments_only);
            case!(a_mutation_sent_after_a_wait_reaches_the_root_behind_it);
            case!(the_roots_last_error_reaches_a_leaf);
            case!(add_err_state_from_a_leaf_reaches_the_root);
            case!(a_withdrawn_wait_is_gone_at_every_hop);
            case!(a_hop_that_may_not_see_refuses_and_the_reason_comes_down);
            case!(a_wait_outlives_a_restart_of_the_hop_below_it);
        }
    )*};
}

transports!(tcp, ws, quic);

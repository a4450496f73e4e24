//! A root whose schema grows at run time (`Machine::set_schema`), through a tree of depth 3
//! (root <- a <- b <- c, each mirror served to the next): every mirror takes the new schema
//! without reconnecting, waits on the old states keep working, and the new states can be read,
//! waited on and mutated from the leaf. Run over several transports.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use asyncmachine::machine::{
    Args, EXCEPTION, Machine, Outcome, Schema, StateDef, StateSource, WaitError,
};
use asyncmachine::server::{Server, ServerConfig};
use common::*;

fn states(extra: bool) -> Schema {
    let mut builder = Schema::builder()
        .state(StateDef::new("Start"))
        .state(StateDef::new("Tick").multi())
        .state(StateDef::new(EXCEPTION).multi());
    if extra {
        builder = builder
            .state(StateDef::new("Ready").require(["Start"]))
            .state(StateDef::new("Late").multi());
    }
    builder.build().expect("valid schema")
}

fn root() -> Machine {
    Machine::builder(states(false)).id("root").build()
}

pub async fn a_grown_schema_reaches_a_leaf_without_a_reconnect(scheme: &str) {
    let tree = chain(root(), scheme, ServerConfig::default()).await;
    let root = &tree.root;
    let mirrors = [&tree.a, &tree.b, &tree.c];
    let leaf = mirrors[2];
    root.add(&["Start"], Args::new()).expect("known state");
    converged(leaf, &root.clock()).await;
    // Waits of the old schema, at the leaf: one on its clock, one asked of the root.
    let tick = leaf.when_ticks("Tick", 1);
    let args = leaf.when_args("Tick", Args::new().with("n", 2));
    let removed = leaf.when_not(&["Start"]);
    // A remote wait counts activations from when the root has it: its request travels up
    // three hops while the new schema below travels down, and an activation before it gets
    // there is not seen. Up before the change, it is a wait of the old schema at every hop.
    eventually("the wait to reach the root", || root.waiter_count() == 1).await;

    root.set_schema(states(true)).expect("an enlargement");
    for m in mirrors {
        eventually("the new schema", || m.schema().len() == 5).await;
    }
    converged(leaf, &root.clock()).await;
    for m in mirrors {
        assert_eq!(m.schema().hash(), root.schema().hash(), "{}", m.id());
        assert_eq!(
            m.stats().reconnects.load(Ordering::Relaxed),
            0,
            "{} kept its connection",
            m.id()
        );
    }

    // The waits of the old schema are still there, and end as they would have.
    root.add(&["Tick"], Args::new().with("n", 2))
        .expect("known state");
    assert_eq!(within("the clock wait", tick).await, Ok(()));
    assert_eq!(within("the remote wait", args).await, Ok(()));

    // The new states work from the leaf: a mutation up to the root, a wait on one of them.
    let late = leaf.when(&["Late"]);
    let out = within("add Ready", leaf.add(&["Ready"], Args::new())).await;
    assert_eq!(out, Ok(Outcome::Executed));
    assert!(root.is1("Ready"));
    assert!(leaf.is1("Ready"), "the leaf sees it on return");
    root.add(&["Late"], Args::new()).expect("known state");
    assert_eq!(within("a wait on a new state", late).await, Ok(()));
    root.remove(&["Start"], Args::new()).expect("known state");
    assert_eq!(within("the wait for Start to go", removed).await, Ok(()));
    converged(leaf, &root.clock()).await;
}

pub async fn a_schema_that_moves_states_ends_the_waits_of_the_old_one(scheme: &str) {
    // A served mirror's source restarted with another schema: what the old positions meant is
    // gone, so its clients reconnect for the new schema and their waits end.
    let Chain {
        root,
        root_at,
        c: leaf,
        servers,
        ..
    } = chain(root(), scheme, ServerConfig::default()).await;
    let leaf = &leaf;
    let wait = leaf.when(&["Tick"]);
    let remote = leaf.when_args("Tick", Args::new());
    eventually("the wait to reach the root", || root.waiter_count() == 1).await;
    servers[0].shutdown(std::time::Duration::from_secs(5)).await;
    let moved = Schema::builder()
        .state(StateDef::new("Tick").multi())
        .state(StateDef::new("Start"))
        .build()
        .expect("valid schema");
    let restarted = Machine::new(moved);
    let server = Server::new(ServerConfig {
        transport: transport(),
        ..ServerConfig::default()
    });
    server
        .add_source("worker", Arc::new(restarted.clone()))
        .expect("first source");
    within("rebind", async {
        // The old listener's address may take a moment to free.
        while server.listen(&root_at.without_machine()).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        within("the clock wait", wait).await,
        Err(WaitError::Disposed)
    );
    assert_eq!(
        within("the remote wait", remote).await,
        Err(WaitError::Disposed)
    );
    eventually("the leaf's new schema", || {
        leaf.schema().hash() == restarted.schema().hash()
    })
    .await;
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
            case!(a_grown_schema_reaches_a_leaf_without_a_reconnect);
            case!(a_schema_that_moves_states_ends_the_waits_of_the_old_one);
        }
    )*};
}

transports!(tcp, ws);

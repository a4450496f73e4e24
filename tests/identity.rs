//! A source's groups, tags and parent id through a tree of depth 3 (root <- a <- b <- c, each
//! mirror served to the next): the leaf answers them as the root does and `switch_group` at the
//! leaf follows the root's clock; a root that comes back with other groups passes them down to
//! the leaf without the hops below the first reconnecting. Run over several transports.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, Schema, StateDef, StateSource};
use asyncmachine::mirror::Mirror;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;
use common::*;

/// A traffic light and a switch, with the groups `groups` names.
fn schema(groups: &[(&str, &[&str])]) -> Schema {
    let mut schema = Schema::builder()
        .state(StateDef::new("Red").remove(["Yellow", "Green"]))
        .state(StateDef::new("Yellow").remove(["Red", "Green"]))
        .state(StateDef::new("Green").remove(["Red", "Yellow"]))
        .state(StateDef::new("On").remove(["Off"]))
        .state(StateDef::new("Off").remove(["On"]))
        .build()
        .expect("valid schema");
    for (name, states) in groups {
        schema = schema.with_group(*name, states).expect("known states");
    }
    schema
}

const LIGHTS: (&str, &[&str]) = ("Lights", &["Red", "Yellow", "Green"]);
const SWITCH: (&str, &[&str]) = ("Switch", &["On", "Off"]);

fn root(groups: &[(&str, &[&str])], tags: &[&str]) -> Machine {
    Machine::builder(schema(groups))
        .id("root")
        .parent("owner")
        .tags(tags.iter().copied())
        .build()
}

/// The root, its server and where it serves, and the mirrors a <- b <- c with their servers
/// (which must live as long as the mirrors are used).
struct Tree {
    root: Machine,
    root_at: Endpoint,
    root_server: Server,
    mirrors: Vec<Mirror>,
    _servers: Vec<Server>,
}

async fn tree(scheme: &str, root: Machine) -> Tree {
    let (root_server, root_at) =
        serve(Arc::new(root.clone()), ServerConfig::default(), scheme).await;
    let mut at = root_at.clone();
    let mut servers = Vec::new();
    let mut mirrors = Vec::new();
    for id in ["a", "b", "c"] {
        let m = mirror(&at, id).await;
        if id != "c" {
            let (server, next) = serve(Arc::new(m.clone()), ServerConfig::default(), scheme).await;
            servers.push(server);
            at = next;
        }
        mirrors.push(m);
    }
    Tree {
        root,
        root_at,
        root_server,
        mirrors,
        _servers: servers,
    }
}

fn groups_of(source: &dyn StateSource) -> Vec<(String, Vec<usize>)> {
    source
        .schema()
        .groups()
        .map(|(name, states)| (name.to_owned(), states.to_vec()))
        .collect()
}

pub async fn the_leaf_answers_the_roots_groups_tags_and_parent_id(scheme: &str) {
    let tree = tree(scheme, root(&[LIGHTS, SWITCH], &["worker", "eu"])).await;
    let expected = vec![
        ("Lights".to_owned(), vec![0, 1, 2]),
        ("Switch".to_owned(), vec![3, 4]),
    ];
    assert_eq!(groups_of(&tree.root), expected);
    for m in &tree.mirrors {
        assert_eq!(groups_of(m), expected, "at {}", m.id());
        assert_eq!(
            m.schema().hash(),
            tree.root.schema().hash(),
            "at {}",
            m.id()
        );
        assert_eq!(m.parent_id().as_deref(), Some("owner"), "at {}", m.id());
        assert_eq!(m.tags(), ["worker", "eu"], "at {}", m.id());
    }
    let leaf = &tree.mirrors[2];
    assert_eq!(leaf.switch_group("Lights"), None);

    // switch_group at the leaf follows the root's clock.
    for (light, switch) in [("Green", "On"), ("Red", "Off"), ("Yellow", "On")] {
        tree.root
            .add(&[light, switch], Args::new())
            .expect("known states");
        converged(leaf, &tree.root.clock()).await;
        assert_eq!(leaf.switch_group("Lights").as_deref(), Some(light));
        assert_eq!(leaf.switch_group("Switch").as_deref(), Some(switch));
        assert_eq!(
            leaf.switch_group("Lights"),
            tree.root.switch_group("Lights")
        );
    }
    assert_eq!(leaf.switch_group("Nope"), None);
}

pub async fn groups_of_a_root_that_came_back_reach_the_leaf(scheme: &str) {
    let mut tree = tree(scheme, root(&[LIGHTS], &["v1"])).await;
    tree.root.add(&["Green"], Args::new()).expect("known");
    let leaf = tree.mirrors[2].clone();
    converged(&leaf, &tree.root.clock()).await;
    assert_eq!(leaf.switch_group("Lights").as_deref(), Some("Green"));
    assert_eq!(leaf.switch_group("Switch"), None);

    // The root comes back with the same states and another group.
    tree.root_server.shutdown(Duration::from_secs(5)).await;
    let again = root(&[SWITCH, LIGHTS], &["v2"]);
    again.add(&["On", "Red"], Args::new()).expect("known");
    let server = Server::new(ServerConfig {
        transport: transport(),
        ..ServerConfig::default()
    });
    server
        .add_source("worker", Arc::new(again.clone()))
        .expect("first source");
    within("rebind", async {
        // The old listener's address may take a moment to free.
        while server
            .listen(&tree.root_at.without_machine())
            .await
            .is_err()
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    tree.root_server = server;
    tree.root = again;

    converged(&leaf, &tree.root.clock()).await;
    within("the new groups at the leaf", async {
        while leaf.switch_group("Switch").is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(groups_of(&leaf), groups_of(&tree.root));
    assert_eq!(leaf.switch_group("Switch").as_deref(), Some("On"));
    assert_eq!(leaf.switch_group("Lights").as_deref(), Some("Red"));
    // Only the first hop reconnected; the groups went on down as a schema change.
    let a = &tree.mirrors[0];
    // Counted when its session is ready, which may be just after the leaf heard the change.
    within("a's reconnect counted", async {
        while a.stats().reconnects.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    for m in &tree.mirrors[1..] {
        assert_eq!(
            m.stats().reconnects.load(Ordering::Relaxed),
            0,
            "{} reconnected",
            m.id()
        );
    }
    // The first hop took the new root's tags with its welcome (the hops below it take them
    // at their next handshake: tags travel in welcomes only).
    assert_eq!(a.tags(), ["v2"]);
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
            case!(the_leaf_answers_the_roots_groups_tags_and_parent_id);
            case!(groups_of_a_root_that_came_back_reach_the_leaf);
        }
    )*};
}

transports!(tcp, ws, quic);

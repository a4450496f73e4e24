//! Topology parsing and validation: what is accepted, and that every mistake is reported with
//! its line and a hint.

use std::time::Duration;

use super::*;

const TREE: &str = r#"
[schemas.demo]
states = [
  { name = "Start" },
  { name = "Flag", require = ["Start"] },
  { name = "Tick", multi = true },
]

[[nodes]]
name = "root"
listen = ["tcp://0.0.0.0:7700"]
push_interval_ms = 5
limits = { max_clients = 50, idle_timeout_ms = 2000 }
acl = { token = "t", allow = ["mid"] }

[[nodes.machines]]
name = "demo"
schema = "demo"
driver = { every_ms = 100, toggle = ["Flag"], add = ["Tick"] }

[[nodes]]
name = "mid"
listen = ["tcp://127.0.0.1:7701"]

[[nodes.machines]]
name = "demo"
upstream = "root"
token = "t"

[[nodes]]
name = "leaf"

[[nodes.machines]]
name = "copy"
upstream = "mid/demo"
track = ["Flag"]
compression = false
retry_deadline_ms = 250
retry_max_waiting = 10
"#;

fn parse_str(text: &str) -> Result<Topology, TopologyError> {
    parse(Path::new("test.toml"), text)
}

fn error(text: &str) -> TopologyError {
    parse_str(text).expect_err("must be refused")
}

#[test]
fn a_tree_resolves_upstreams_schemas_and_settings() {
    let t = parse_str(TREE).expect("valid");
    assert_eq!(t.nodes.len(), 3);
    let root = t.node("root").expect("root");
    assert_eq!(root.machines[0].kind, MachineKind::Root);
    assert_eq!(
        root.limits.min_push_interval,
        Some(Duration::from_millis(5))
    );
    assert_eq!(
        (root.limits.max_clients, root.limits.idle_timeout),
        (50, Duration::from_secs(2))
    );
    assert_eq!(
        (root.acl.token.as_deref(), root.acl.allow_ids.as_deref()),
        (Some("t"), Some(&["mid".to_owned()][..]))
    );
    let mid = t.node("mid").expect("mid");
    match &mid.machines[0].kind {
        MachineKind::Mirror {
            upstream, token, ..
        } => {
            assert_eq!(
                upstream.to_string(),
                "tcp://127.0.0.1:7700/demo",
                "wildcard binds are reached on loopback"
            );
            assert_eq!(token.as_deref(), Some("t"));
        }
        other => panic!("mid mirrors root, got {other:?}"),
    }
    assert_eq!(
        root.downstream,
        ["mid"],
        "the nodes below are pushed to first"
    );
    assert_eq!(mid.downstream, ["leaf"]);
    let leaf = t.node("leaf").expect("leaf");
    assert!(leaf.listen.is_empty());
    assert!(leaf.downstream.is_empty());
    match &leaf.machines[0].kind {
        MachineKind::Mirror {
            upstream,
            track,
            compression,
            ..
        } => {
            assert_eq!(upstream.to_string(), "tcp://127.0.0.1:7701/demo");
            assert_eq!(track.as_deref(), Some(&["Flag".to_owned()][..]));
            assert!(!compression);
        }
        other => panic!("leaf mirrors mid, got {other:?}"),
    }
    match (&mid.machines[0].kind, &leaf.machines[0].kind) {
        (MachineKind::Mirror { retry: mid, .. }, MachineKind::Mirror { retry: leaf, .. }) => {
            assert_eq!(*mid, crate::proto::session::RetryPolicy::default());
            assert_eq!(
                (leaf.deadline, leaf.max_waiting),
                (Duration::from_millis(250), 10)
            );
        }
        other => panic!("mirrors, got {other:?}"),
    }
    assert_eq!(
        leaf.machines[0].schema.hash(),
        root.machines[0].schema.hash(),
        "schema follows the chain"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let text = TREE.replace("push_interval_ms = 5", "push_intervall_ms = 5");
    let e = error(&text);
    assert_eq!(e.line, 12, "{e}");
    assert!(e.message.contains("push_intervall_ms"), "{e}");
    assert!(e.hint.contains("README"), "{e}");
    let e = error(&TREE.replace(
        "{ name = \"Tick\", multi = true }",
        "{ name = \"Tick\", multy = true }",
    ));
    assert_eq!(e.line, 6, "{e}");
    assert!(e.to_string().starts_with("test.toml:6: "), "{e}");
}

/// The relay's configuration is read by the same loader: see relay::config's tests.
#[test]
fn an_unknown_key_at_the_start_of_line_3_is_reported_on_line_3() {
    let e = error("[[nodes]]\nname = \"a\"\nlisten_on = []\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(
        e.to_string()
            .starts_with("test.toml:3: unknown field `listen_on`"),
        "{e}"
    );
}

#[test]
fn bad_references_are_errors_with_their_line_and_a_hint() {
    let cases = [
        (
            TREE.replace("upstream = \"root\"", "upstream = \"rooot\""),
            27,
            "not in this file",
        ),
        (
            TREE.replace("upstream = \"mid/demo\"", "upstream = \"mid/nope\""),
            35,
            "no machine \"nope\"",
        ),
        (
            TREE.replace("schema = \"demo\"\ndriver", "schema = \"dmeo\"\ndriver"),
            18,
            "unknown schema",
        ),
        (
            TREE.replace("toggle = [\"Flag\"]", "toggle = [\"Flga\"]"),
            19,
            "unknown state \"Flga\"",
        ),
        (
            TREE.replace(
                "listen = [\"tcp://127.0.0.1:7701\"]",
                "listen = [\"tcp://0.0.0.0:7700\"]",
            ),
            23,
            "same port",
        ),
        (
            TREE.replace(
                "listen = [\"tcp://127.0.0.1:7701\"]",
                "listen = [\"tcp://127.0.0.1\"]",
            ),
            23,
            "host:port",
        ),
        (
            TREE.replace(
                "listen = [\"tcp://127.0.0.1:7701\"]",
                "listen = [\"tcp://127.0.0.1:0\"]",
            ),
            35,
            "port 0",
        ),
        (
            TREE.replace("upstream = \"mid/demo\"", "upstream = \"tcp://h:1/x\""),
            35,
            "outside this file",
        ),
        (
            TREE.replace("name = \"leaf\"", "name = \"mid\""),
            31,
            "defined twice",
        ),
    ];
    for (text, line, needle) in cases {
        let e = error(&text);
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
        assert!(!e.hint.is_empty(), "{e:?}");
    }
}

#[test]
fn upstream_loops_are_refused() {
    let text = r#"
[schemas.s]
states = [{ name = "A" }]

[[nodes]]
name = "a"
listen = ["tcp://127.0.0.1:7801"]
machines = [{ name = "m", upstream = "b" }]

[[nodes]]
name = "b"
listen = ["tcp://127.0.0.1:7802"]
machines = [{ name = "m", upstream = "a" }]
"#;
    let e = error(text);
    assert!(e.message.contains("loops"), "{e}");
    assert!(
        e.message.contains("a/m -> b/m -> a/m") || e.message.contains("b/m -> a/m -> b/m"),
        "{e}"
    );
}

#[test]
fn missing_pieces_say_what_to_add() {
    let e = error("[schemas.s]\nstates = [{ name = \"A\" }]\n");
    assert!(e.message.contains("no nodes"), "{e}");
    let e = error("[[nodes]]\nname = \"a\"\nmachines = [{ name = \"m\" }]\n");
    assert!(e.message.contains("neither `schema` nor `upstream`"), "{e}");
    let e = error(
        "[schemas.s]\nstates = [{ name = \"A\", require = [\"B\"] }]\n[[nodes]]\nname = \"a\"\nmachines = [{ name = \"m\", schema = \"s\" }]\n",
    );
    assert!(e.message.contains("unknown state \"B\""), "{e}");
    assert_eq!(e.line, 2, "the state's line: {e}");
}

#[test]
fn tls_and_acl_keys_are_parsed() {
    let text = TREE.replace(
        "acl = { token = \"t\", allow = [\"mid\"] }",
        "acl = { token = \"t\", allow = [\"mid\"] }\ntls = { cert = \"c.pem\", key = \"k.pem\", ca = \"ca.pem\", client_auth = true }",
    );
    let t = parse_str(&text).expect("valid");
    let tls = t.node("root").and_then(|n| n.tls.clone()).expect("tls");
    assert_eq!(
        (tls.cert.as_deref(), tls.ca.as_deref(), tls.client_auth),
        (Some("c.pem"), Some("ca.pem"), true)
    );
    let e = error(&text.replace("cert = \"c.pem\", ", "cert = \"\", "));
    assert!(e.message.contains("empty path"), "{e}");
}

#[test]
fn acl_rules_are_parsed_and_checked_against_the_schemas() {
    let text = TREE.replace(
        "acl = { token = \"t\", allow = [\"mid\"] }",
        "acl = { token = \"t\", allow = [\"mid\"], see = { \"*\" = [\"Start\"], mid = [\"Start\", \"Flag\"] }, mutate = { mid = [\"Flag\"] } }",
    );
    let t = parse_str(&text).expect("valid");
    let root = t.node("root").expect("root");
    assert_eq!(root.acl.see.get("mid").map(Vec::len), Some(2));
    assert_eq!(
        root.acl.mutate.get("mid").map(|v| v.as_slice()),
        Some(&["Flag".to_owned()][..])
    );
    let e = error(&text.replace(
        "mutate = { mid = [\"Flag\"] }",
        "mutate = { mid = [\"Flgg\"] }",
    ));
    assert!(e.message.contains("unknown state \"Flgg\""), "{e}");
    assert_eq!(e.line, 14, "the acl's line: {e}");
}

/// Every kind of mistake: its line, a word of its message, a word of its hint.
#[track_caller]
fn refused(text: &str, line: usize, message: &str, hint: &str) {
    let e = error(text);
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(message), "{e:?} lacks {message:?}");
    assert!(e.hint.contains(hint), "{e:?}: the hint lacks {hint:?}");
    assert!(e.to_string().contains("\n  hint: "), "{e}");
}

#[test]
fn files_that_cannot_work_are_refused_at_load_time() {
    // A mirror of a machine of its own node: its server would refuse it as a loop, forever.
    refused(
        &TREE.replace(
            "[[nodes.machines]]\nname = \"demo\"\nupstream = \"root\"",
            "[[nodes.machines]]\nname = \"own\"\nschema = \"demo\"\n\n[[nodes.machines]]\nname = \"demo\"\nupstream = \"mid/own\"",
        ),
        31,
        "a machine of its own node",
        "another node",
    );
    for (key, value) in [
        ("max_frame", "0"),
        ("max_clients", "0"),
        ("handshake_timeout_ms", "0"),
        ("idle_timeout_ms", "0"),
        ("keepalive_ms", "0"),
    ] {
        refused(
            &TREE.replace(
                "limits = { max_clients = 50, idle_timeout_ms = 2000 }",
                &format!("limits = {{ {key} = {value} }}"),
            ),
            13,
            &format!("limits.{key} = 0"),
            "default",
        );
    }
    // One port written two ways, a wildcard over a specific address, an admin on a listener.
    let mid = "listen = [\"tcp://127.0.0.1:7701\"]";
    for (listen, line) in [
        (
            "listen = [\"tcp://localhost:7701\", \"ws://127.0.0.1:7701\"]",
            23,
        ),
        (
            "listen = [\"tcp://127.0.0.1:7701\", \"tls://0.0.0.0:7701\"]",
            23,
        ),
        ("listen = [\"ws://127.0.0.1:7700\"]", 23),
    ] {
        refused(&TREE.replace(mid, listen), line, "same port", "own port");
    }
    refused(
        &TREE.replace(mid, &format!("{mid}\nadmin = \"localhost:7701\"")),
        24,
        "admin localhost:7701 takes the same port as tcp://127.0.0.1:7701",
        "own port",
    );
    // Another protocol or another address is another port.
    let t = parse_str(&TREE.replace(
        mid,
        "listen = [\"tcp://127.0.0.1:7701\", \"quic://127.0.0.1:7701\", \"tcp://127.0.0.2:7701\"]\ntls = { cert = \"c.pem\", key = \"k.pem\" }",
    ))
    .expect("valid");
    assert_eq!(t.node("mid").map(|n| n.listen.len()), Some(3));
    refused(
        &TREE.replace(mid, &format!("{mid}\nadmin = \"9100\"")),
        24,
        "not host:port",
        "127.0.0.1:9100",
    );
}

#[test]
fn tls_tables_are_checked_against_what_the_node_does() {
    // Only a CA: a node that connects and verifies, and presents nothing.
    let text = TREE.replace(
        "[[nodes]]\nname = \"leaf\"",
        "[[nodes]]\nname = \"leaf\"\ntls = { ca = \"ca.pem\" }",
    );
    let t = parse_str(&text).expect("a tls table with just `ca`");
    let tls = t.node("leaf").and_then(|n| n.tls.clone()).expect("tls");
    assert_eq!((tls.cert, tls.ca.as_deref()), (None, Some("ca.pem")));
    // A TLS listener needs a certificate and key.
    let mid = "listen = [\"tcp://127.0.0.1:7701\"]";
    refused(
        &TREE.replace(
            mid,
            "listen = [\"tls://127.0.0.1:7701\"]\ntls = { ca = \"ca.pem\" }",
        ),
        23,
        "needs this node's certificate and key",
        "cert = ",
    );
    refused(
        &TREE.replace(mid, "listen = [\"wss://127.0.0.1:7701\"]"),
        23,
        "needs this node's certificate and key",
        "am-node certs",
    );
    // A mirror over TLS needs a CA to verify its upstream with.
    refused(
        &TREE.replace(
            mid,
            "listen = [\"quic://127.0.0.1:7701\"]\ntls = { cert = \"m.pem\", key = \"m.key\", ca = \"ca.pem\" }",
        ),
        36,
        "no CA to verify the upstream",
        "ca = ",
    );
    refused(
        &text.replace("tls = { ca = \"ca.pem\" }", "tls = { cert = \"x.pem\" }"),
        32,
        "without the other",
        "both",
    );
    refused(
        &text.replace("tls = { ca = \"ca.pem\" }", "tls = { client_auth = true }"),
        32,
        "names no `ca`",
        "ca = ",
    );
}

#[test]
fn every_kind_of_error_has_its_line_and_a_hint() {
    // Wrong types, garbage, a duplicate machine, a duplicate key.
    refused(
        &TREE.replace("push_interval_ms = 5", "push_interval_ms = \"5\""),
        12,
        "invalid type",
        "type",
    );
    refused(
        &TREE.replace("name = \"mid\"", "name = mid"),
        22,
        "",
        "TOML",
    );
    refused(
        &TREE.replace("name = \"copy\"", "name = \"copy\"\nname = \"copy\""),
        35,
        "duplicate key",
        "once",
    );
    refused(
        &TREE.replace(
            "name = \"copy\"",
            "name = \"copy\"\nupstream = \"mid/demo\"\n\n[[nodes.machines]]\nname = \"copy\"",
        ),
        38,
        "two machines named \"copy\"",
        "unique",
    );
    refused(
        &TREE.replace("driver = { every_ms = 100,", "driver = { every_ms = 0,"),
        19,
        "every_ms",
        "every_ms = 500",
    );
    // Schema errors point at the state they are about.
    refused(
        &TREE.replace("{ name = \"Tick\", multi = true }", "{ name = \"Start\" }"),
        6,
        "defined twice",
        "rename",
    );
    refused(
        &TREE.replace(
            "{ name = \"Flag\", require = [\"Start\"] }",
            "{ name = \"Flag\", require = [\"Flag\"] }",
        ),
        5,
        "itself",
        "remove",
    );
    refused(
        &TREE.replace(
            "{ name = \"Flag\", require = [\"Start\"] }",
            "{ name = \"Flag\", add = [\"Nope\"] }",
        ),
        5,
        "unknown state \"Nope\"",
        "add that state",
    );
}

#[test]
fn errors_in_a_schema_file_point_into_that_file() {
    let dir = std::env::temp_dir().join(format!("am-topology-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema = dir.join("s.toml");
    std::fs::write(
        &schema,
        "[[states]]\nname = \"A\"\n\n[[states]]\nname = \"B\"\nrequire = [\"C\"]\n",
    )
    .expect("written");
    let text = "[schemas.s]\nfile = \"s.toml\"\n\n[[nodes]]\nname = \"n\"\nmachines = [{ name = \"m\", schema = \"s\" }]\n";
    let e = parse(&dir.join("t.toml"), text).expect_err("B requires an unknown state");
    assert_eq!(
        (e.file.as_str(), e.line),
        (schema.to_str().unwrap_or_default(), 4),
        "{e}"
    );
    assert!(e.message.contains("unknown state \"C\""), "{e}");
    std::fs::write(&schema, "[[states]]\nname = 1\n").expect("written");
    let e = parse(&dir.join("t.toml"), text).expect_err("a number for a name");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.hint.contains("type"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_outside_upstream_through_a_relay_carries_the_relay_token() {
    let text = TREE.replace(
        "upstream = \"mid/demo\"",
        "upstream = \"ws://127.0.0.1:7480/demo?token=r%20t\"\nschema = \"demo\"",
    );
    let t = parse_str(&text).expect("valid");
    match &t.node("leaf").expect("leaf").machines[0].kind {
        MachineKind::Mirror { upstream, .. } => {
            assert_eq!(upstream.machine.as_deref(), Some("demo"));
            assert_eq!(upstream.upgrade_token.as_deref(), Some("r t"));
        }
        other => panic!("a mirror, got {other:?}"),
    }
    refused(
        &TREE.replace(
            "listen = [\"tcp://127.0.0.1:7701\"]",
            "listen = [\"ws://127.0.0.1:7701/?token=x\"]",
        ),
        23,
        "names a machine or a token",
        "acl",
    );
}

#[test]
fn state_dirs_make_root_machines_durable_and_are_checked() {
    let acl = "acl = { token = \"t\", allow = [\"mid\"] }";
    let durable = TREE.replace(acl, &format!("{acl}\nstate_dir = \"state\""));
    let t = parse_str(&durable).expect("valid");
    let state = t.node("root").expect("root").machines[0]
        .state
        .clone()
        .expect("the root machine is durable");
    assert_eq!(state.file, Path::new("state/demo.json"));
    assert_eq!(state.at, "test.toml:15");
    assert!(
        t.node("mid").expect("mid").machines[0].state.is_none(),
        "mirrors keep no state"
    );
    // A machine's own state_dir wins over its node's, relative to the file's directory.
    let own = durable.replace(
        "schema = \"demo\"\ndriver",
        "schema = \"demo\"\nstate_dir = \"./elsewhere\"\ndriver",
    );
    let t = parse(Path::new("topologies/x.toml"), &own).expect("valid");
    let state = t.node("root").expect("root").machines[0]
        .state
        .clone()
        .expect("durable");
    assert_eq!(state.file, Path::new("topologies/elsewhere/demo.json"));
    assert_eq!(state.at, "topologies/x.toml:20");

    refused(
        &TREE.replace(
            "upstream = \"root\"\ntoken",
            "upstream = \"root\"\nstate_dir = \"s\"\ntoken",
        ),
        28,
        "is a mirror; `state_dir` is for root machines",
        "make the root durable",
    );
    refused(
        &TREE.replace(
            "listen = [\"tcp://127.0.0.1:7701\"]",
            "listen = [\"tcp://127.0.0.1:7701\"]\nstate_dir = \"s\"",
        ),
        24,
        "has a state_dir but no root machine",
        "upstream",
    );
    refused(
        &TREE.replace(acl, &format!("{acl}\nstate_dir = \"\"")),
        15,
        "an empty state_dir",
        "state_dir = \"state\"",
    );
    // Two roots named alike in one directory would overwrite each other's state.
    refused(
        r#"
[schemas.s]
states = [{ name = "A" }]

[[nodes]]
name = "a"
state_dir = "state"
machines = [{ name = "m", schema = "s" }]

[[nodes]]
name = "b"
machines = [{ name = "m", schema = "s", state_dir = "state/." }]
"#,
        12,
        "b/m would keep its state in state/m.json, as a/m does",
        "a file of its own",
    );
}

#[test]
fn a_nodes_debug_names_a_tcp_collector() {
    let mid = "listen = [\"tcp://127.0.0.1:7701\"]";
    let t = parse_str(&TREE.replace(mid, &format!("{mid}\ndebug = \"tcp://127.0.0.1:6831\"")))
        .expect("valid");
    assert_eq!(
        t.node("mid").and_then(|n| n.debug.clone()).as_deref(),
        Some("tcp://127.0.0.1:6831")
    );
    assert_eq!(t.node("root").and_then(|n| n.debug.clone()), None);
    for bad in ["ws://127.0.0.1:6831", "127.0.0.1:6831", "tcp://"] {
        refused(
            &TREE.replace(mid, &format!("{mid}\ndebug = \"{bad}\"")),
            24,
            "telemetry address",
            "am-node dbg",
        );
    }
}

#[test]
fn retry_settings_are_for_mirrors_and_bounded() {
    let root_with_retry = TREE.replacen(
        "name = \"demo\"\nschema = \"demo\"",
        "name = \"demo\"\nschema = \"demo\"\nretry_deadline_ms = 100",
        1,
    );
    assert_ne!(
        root_with_retry, TREE,
        "the root's machine table is where the test expects it"
    );
    let e = error(&root_with_retry);
    assert!(e.message.contains("is a root machine"), "{e}");
    let e = error(&TREE.replace("retry_max_waiting = 10", "retry_max_waiting = 100000000"));
    assert!(
        e.message.contains("retry_max_waiting 100000000 is over"),
        "{e}"
    );
}

/// A frame limit past what a node can hold is refused with a hint, and a topology or schema
/// file past its size (or endless, like /dev/zero) is refused before it is read whole.
#[test]
fn a_huge_frame_limit_and_a_huge_file_are_refused() {
    let e = error(&TREE.replace(
        "limits = { max_clients = 50, idle_timeout_ms = 2000 }",
        "limits = { max_frame = 100000000000 }",
    ));
    assert!(
        e.message
            .contains("limits.max_frame = 100000000000 is over"),
        "{e}"
    );
    assert!(e.hint.contains("MiB"), "{e}");

    let dir = std::env::temp_dir().join(format!("am-topology-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let text = "[schemas.s]\nfile = \"/dev/zero\"\n\n[[nodes]]\nname = \"n\"\nmachines = [{ name = \"m\", schema = \"s\" }]\n";
    let e = parse(&dir.join("t.toml"), text).expect_err("an endless schema file");
    assert!(e.to_string().contains("over 4194304 bytes"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A long chain of mirrors is followed once per machine: 3,000 nodes in a line parse (the walk
/// from every machine to the root, searching the chain at each step, was cubic in its length).
#[test]
fn a_long_chain_of_mirrors_parses() {
    use std::fmt::Write as _;
    const NODES: u16 = 3000;
    let mut text = String::from("[schemas.demo]\nstates = [{ name = \"A\" }]\n");
    for i in 0..NODES {
        let machine = if i == 0 {
            "{ name = \"demo\", schema = \"demo\" }".to_owned()
        } else {
            format!("{{ name = \"demo\", upstream = \"n{}/demo\" }}", i - 1)
        };
        let _ = write!(
            text,
            "\n[[nodes]]\nname = \"n{i}\"\nlisten = [\"tcp://127.0.0.1:{}\"]\nmachines = [{machine}]\n",
            20000 + i
        );
    }
    let topology = parse_str(&text).expect("a long chain is a tree");
    assert_eq!(topology.nodes.len(), usize::from(NODES));
}

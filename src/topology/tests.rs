//! Topology parsing and validation: what is accepted, and that every mistake is reported with
//! its line and a hint.

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
    assert_eq!(root.push_interval, Some(Duration::from_millis(5)));
    assert_eq!(
        (root.max_clients, root.idle_timeout),
        (Some(50), Some(Duration::from_secs(2)))
    );
    assert_eq!(
        (root.token.as_deref(), root.allow.as_deref()),
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
    let leaf = t.node("leaf").expect("leaf");
    assert!(leaf.listen.is_empty());
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
    assert!(e.hint.is_some());
    let e = error(&TREE.replace(
        "{ name = \"Tick\", multi = true }",
        "{ name = \"Tick\", multy = true }",
    ));
    assert_eq!(e.line, 6, "{e}");
    assert!(e.to_string().starts_with("test.toml:6: "), "{e}");
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
            "also a listener",
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
    assert_eq!(e.line, 1);
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
        (tls.cert.as_str(), tls.ca.as_deref(), tls.client_auth),
        ("c.pem", Some("ca.pem"), true)
    );
    let e = error(&text.replace("cert = \"c.pem\", ", "cert = \"\", "));
    assert!(e.message.contains("cert"), "{e}");
}

#[test]
fn acl_rules_are_parsed_and_checked_against_the_schemas() {
    let text = TREE.replace(
        "acl = { token = \"t\", allow = [\"mid\"] }",
        "acl = { token = \"t\", allow = [\"mid\"], see = { \"*\" = [\"Start\"], mid = [\"Start\", \"Flag\"] }, mutate = { mid = [\"Flag\"] } }",
    );
    let t = parse_str(&text).expect("valid");
    let root = t.node("root").expect("root");
    assert_eq!(root.see.get("mid").map(Vec::len), Some(2));
    assert_eq!(
        root.mutate.get("mid").map(|v| v.as_slice()),
        Some(&["Flag".to_owned()][..])
    );
    let e = error(&text.replace(
        "mutate = { mid = [\"Flag\"] }",
        "mutate = { mid = [\"Flgg\"] }",
    ));
    assert!(e.message.contains("unknown state \"Flgg\""), "{e}");
    assert_eq!(e.line, 10, "the node's name line: {e}");
}

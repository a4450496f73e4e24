//! The am-node binary as a person runs it: exit codes and output.

use std::process::Command;

fn am_node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(args)
        .output()
        .expect("am-node runs")
}

/// Runs am-node, requires success, and parses the JSON on the last line of its output.
fn json_report(args: &[&str]) -> serde_json::Value {
    let out = am_node(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON")
}

#[test]
fn version_and_help() {
    let out = am_node(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("am-node "));
    let out = am_node(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bench"));
}

#[test]
fn bench_sgp_prints_a_table_and_json_on_the_last_line() {
    let out = am_node(&["bench", "sgp", "--loops", "300", "--warmup", "20", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("scenario")),
        "{stdout}"
    );
    let last = stdout.lines().last().expect("output");
    let report: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(report["scenario"], "sgp");
    assert_eq!(report["loops"], 300);
    assert_eq!(report["errors"], 0);
    assert!(report["us_per_loop"].as_f64().is_some_and(|us| us > 0.0));
    assert!(report["bytes_per_loop"].as_f64().is_some_and(|b| b > 0.0));
    assert!(
        report["floor_us_per_loop"]
            .as_f64()
            .is_some_and(|us| us > 0.0)
    );
}

#[test]
fn an_unavailable_transport_is_a_clear_error() {
    let out = am_node(&["bench", "sgp", "--transport", "carrier-pigeon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use tcp, tls, quic, ws or wss"));
}

/// `watch --timeout` takes what the other commands take, within their bounds: a value no
/// duration holds is a usage error, not a panic.
#[test]
fn a_watch_timeout_out_of_range_is_a_usage_error() {
    for bad in ["nan", "inf", "1e30", "-5s"] {
        let out = am_node(&["watch", "tcp://127.0.0.1:1/x", &format!("--timeout={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--timeout"), "{bad}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bad}: {stderr}");
    }
}

#[test]
fn bench_chain_reports_every_depth_and_the_round_trip() {
    let report = json_report(&[
        "bench",
        "chain",
        "--hops",
        "2",
        "--iterations",
        "100",
        "--warmup",
        "10",
        "--json",
    ]);
    let depths = report["propagation"].as_array().expect("depths");
    assert_eq!(depths.len(), 2);
    for (i, d) in depths.iter().enumerate() {
        assert_eq!(d["hops"], i + 1);
        assert!(d["latency"]["p50_us"].as_f64().is_some_and(|us| us > 0.0));
        assert!(d["floor"]["p50_us"].as_f64().is_some_and(|us| us > 0.0));
    }
    assert!(
        report["round_trip"]["p50_us"]
            .as_f64()
            .is_some_and(|us| us > 0.0)
    );
}

#[test]
fn bench_relay_and_sgp_through_the_relay_run() {
    let report = json_report(&[
        "bench",
        "relay",
        "--round-trips",
        "200",
        "--bulk-mib",
        "4",
        "--json",
    ]);
    for key in [
        "added_us",
        "relay_cpu_us",
        "bulk_to_target_mb_s",
        "bulk_to_browser_mb_s",
    ] {
        assert!(report[key].as_f64().is_some(), "{key} in {report}");
    }
    let report = json_report(&[
        "bench",
        "sgp",
        "--via-relay",
        "--loops",
        "200",
        "--warmup",
        "10",
        "--json",
    ]);
    assert_eq!(
        (report["transport"].as_str(), report["errors"].as_u64()),
        (Some("ws-relay-tcp"), Some(0))
    );
}

#[test]
fn bench_fanout_and_bytes_report_their_figures() {
    let reports = json_report(&[
        "bench",
        "fanout",
        "--mirrors",
        "5,20",
        "--flips",
        "20",
        "--sustained-ms",
        "200",
        "--json",
    ]);
    let reports = reports.as_array().expect("one report per mirror count");
    assert_eq!(reports.len(), 2);
    for (r, n) in reports.iter().zip([5, 20]) {
        assert_eq!(r["mirrors"], n);
        assert_eq!(r["mode"], "one process");
        for key in [
            "root_mutations_per_s",
            "frames_per_s",
            "lag_p99_ms",
            "settle_ms",
        ] {
            assert!(r[key].as_f64().is_some(), "{key} in {r}");
        }
        assert!(
            r["convergence"]["p50_us"]
                .as_f64()
                .is_some_and(|us| us > 0.0)
        );
        assert!(
            r["convergence_floor"]["p50_us"]
                .as_f64()
                .is_some_and(|us| us > 0.0)
        );
    }
    // Over a TLS transport both ends must share one set of certificates.
    let out = am_node(&[
        "bench",
        "fanout",
        "--transport",
        "tls",
        "--mirrors",
        "3",
        "--flips",
        "5",
        "--sustained-ms",
        "50",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The root in a child process: the same figures.
    let reports = json_report(&[
        "bench",
        "fanout",
        "--mirrors",
        "5",
        "--flips",
        "10",
        "--sustained-ms",
        "100",
        "--split",
        "--json",
    ]);
    let r = &reports[0];
    assert_eq!(
        (r["mirrors"].as_u64(), r["remote_root"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(r["mode"], "split");
    assert!(r["lag_p99_ms"].as_f64().is_some(), "{r}");
    assert!(r["server_kib_per_mirror"].as_f64().is_some(), "{r}");
    // The floor's writing ends run in the root's process too.
    assert!(r["convergence_floor"]["p50_us"].as_f64().is_some(), "{r}");
    assert!(r["frames_per_s_floor"].as_f64().is_some(), "{r}");
    assert!(
        r["root_mutations_per_s"].as_f64().is_some_and(|m| m > 0.0),
        "{r}"
    );
    assert!(
        r["convergence"]["p50_us"]
            .as_f64()
            .is_some_and(|us| us > 0.0),
        "{r}"
    );
    // Over TLS the root's process hands its CA to the mirrors' process.
    let reports = json_report(&[
        "bench",
        "fanout",
        "--split",
        "--transport",
        "tls",
        "--mirrors",
        "2",
        "--flips",
        "5",
        "--sustained-ms",
        "50",
        "--json",
    ]);
    let r = &reports[0];
    assert_eq!(
        (r["transport"].as_str(), r["remote_root"].as_bool()),
        (Some("tls"), Some(true))
    );
    assert!(r["frames_per_s"].as_f64().is_some_and(|f| f > 0.0), "{r}");

    let reports = json_report(&[
        "bench",
        "bytes",
        "--states",
        "50",
        "--changes",
        "50",
        "--json",
    ]);
    let (plain, packed) = (&reports[0], &reports[1]);
    assert_eq!(
        (
            plain["compression"].as_bool(),
            packed["compression"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert!(
        packed["handshake_bytes"].as_u64() < plain["handshake_bytes"].as_u64(),
        "zstd shrinks the welcome"
    );
}

// ----- issue 13: certificates, client ids, peer text, messages -----

mod live {
    //! Commands against nodes and relays started in this test process.

    use std::sync::Arc;
    use std::time::Duration;

    use asyncmachine::machine::{Machine, Schema, StateDef};
    use asyncmachine::mirror::{Mirror, MirrorConfig};
    use asyncmachine::relay::{Relay, RelayConfig, Target};
    use asyncmachine::server::{Server, ServerConfig};
    use asyncmachine::transport::Endpoint;

    pub const LIMIT: Duration = Duration::from_secs(20);

    pub struct Run {
        pub ok: bool,
        pub stdout: String,
        pub stderr: String,
    }

    /// Runs am-node without blocking the runtime that serves it.
    pub async fn am_node(args: &[&str]) -> Run {
        let out = tokio::time::timeout(
            LIMIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_am-node"))
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("am-node ends in time")
        .expect("am-node runs");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn schema() -> Arc<Schema> {
        Arc::new(
            Schema::builder()
                .state(StateDef::new("A"))
                .state(StateDef::new("B"))
                .build()
                .expect("a schema"),
        )
    }

    /// A node serving machine `m` over TCP on a free port.
    pub async fn node(config: ServerConfig) -> (Server, Machine, Endpoint) {
        let server = Server::new(config);
        let machine = Machine::builder(schema()).id("root").build();
        server
            .add_source("m", Arc::new(machine.clone()))
            .expect("a source");
        let endpoint = server
            .listen(&"tcp://127.0.0.1:0".parse().expect("valid"))
            .await
            .expect("binds");
        (server, machine, endpoint.with_machine("m"))
    }

    pub async fn mirror(endpoint: &Endpoint, id: &str) -> Mirror {
        tokio::time::timeout(
            LIMIT,
            Mirror::connect(
                endpoint,
                MirrorConfig {
                    client_id: id.into(),
                    ..MirrorConfig::default()
                },
            ),
        )
        .await
        .expect("connects in time")
        .expect("connects")
    }

    pub async fn relay(target: Endpoint, token: &str) -> Relay {
        Relay::start(RelayConfig {
            listen: "ws://127.0.0.1:0".parse().expect("valid"),
            // The relay routes by name; a mirror's hello asks for the same name.
            targets: vec![Target {
                name: "m".into(),
                endpoint: target,
            }],
            token: Some(token.into()),
            ..RelayConfig::default()
        })
        .await
        .expect("the relay starts")
    }
}

use asyncmachine::machine::StateSource as _;
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::proto::acl::Acl;
use live::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_escapes_a_hostile_client_id() {
    let (_server, _machine, endpoint) = node(asyncmachine::server::ServerConfig::default()).await;
    // Ids with control characters never get in (the hello is refused)...
    let forged = "evil\n  admin                    m            10.0.0.1:1\u{1b}[2J\u{1b}[31m";
    let refused = tokio::time::timeout(
        LIMIT,
        Mirror::connect(
            &endpoint,
            MirrorConfig {
                client_id: forged.into(),
                ..MirrorConfig::default()
            },
        ),
    )
    .await
    .expect("answers in time");
    assert!(refused.is_err(), "an id with control characters is refused");
    // ...and what may get in is still shown escaped: a bidirectional override would make
    // the line read differently than it is.
    let hostile = "evil\u{202e}nimda";
    let _client = mirror(&endpoint, hostile).await;
    let run = live::am_node(&["status", &endpoint.without_machine().to_string()]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        !run.stdout.contains('\u{202e}') && !run.stdout.contains('\u{1b}'),
        "no override or escape reaches the terminal: {:?}",
        run.stdout
    );
    assert!(
        run.stdout.contains("evil\\u{202e}nimda"),
        "the id is shown, escaped: {}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_present_the_id_an_allow_list_names() {
    let (_server, machine, endpoint) = node(asyncmachine::server::ServerConfig {
        acl: Acl {
            allow_ids: Some(vec!["ops-tool".into()]),
            ..Acl::default()
        },
        ..Default::default()
    })
    .await;
    let at = endpoint.to_string();
    let run = live::am_node(&["add", &at, "A"]).await;
    assert!(!run.ok, "the default id is not on the list");
    let run = live::am_node(&["add", &at, "A", "--id", "ops-tool"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(machine.is1("A"));
    let run = live::am_node(&["watch", &at, "--once", "--id", "ops-tool"]).await;
    assert!(
        run.ok && run.stdout.contains('A'),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_reach_a_node_through_a_relay_with_a_token() {
    let (_server, machine, endpoint) = node(asyncmachine::server::ServerConfig::default()).await;
    let relay = live::relay(endpoint, "r3lay secret").await;
    let base = format!("ws://{}/m", relay.local_endpoint().address);
    // --token goes in the upgrade too.
    let run = live::am_node(&["add", &base, "B", "--token", "r3lay secret"]).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(machine.is1("B"));
    // Or the relay's own token in the endpoint, percent-encoded.
    let run = live::am_node(&["watch", &format!("{base}?token=r3lay%20secret"), "--once"]).await;
    assert!(
        run.ok && run.stdout.contains('B'),
        "{}{}",
        run.stdout,
        run.stderr
    );
    // Without it the relay refuses, and the error says what to pass.
    let run = live::am_node(&["watch", &base, "--once"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("401") && run.stderr.contains("--token T"),
        "{}",
        run.stderr
    );
    relay.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_through_a_mirror_reads_as_one_refusal() {
    // The root lets the mid mutate only A; the mid serves its mirror to this tool.
    let mut mutate = std::collections::BTreeMap::new();
    mutate.insert("mid".to_owned(), vec!["A".to_owned()]);
    let (_root, _machine, root_at) = node(asyncmachine::server::ServerConfig {
        acl: Acl {
            mutate,
            ..Acl::default()
        },
        ..Default::default()
    })
    .await;
    let mid = mirror(&root_at, "mid").await;
    let server = asyncmachine::server::Server::new(asyncmachine::server::ServerConfig {
        name: "mid".into(),
        ..Default::default()
    });
    server
        .add_source("m", std::sync::Arc::new(mid.clone()))
        .expect("a source");
    let mid_at = server
        .listen(&"tcp://127.0.0.1:0".parse().expect("valid"))
        .await
        .expect("binds")
        .with_machine("m");
    let run = live::am_node(&["add", &mid_at.to_string(), "B"]).await;
    assert!(!run.ok);
    assert_eq!(
        run.stderr.matches("refused the mutation").count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn certs_reuse_the_ca_so_earlier_certificates_still_verify() {
    let dir = std::env::temp_dir().join(format!("am-node-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("utf-8");
    let first = am_node(&["certs", d, "a"]);
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stderr).contains("made a new CA"));
    let a = std::fs::read_to_string(dir.join("a.pem")).expect("a.pem");
    let second = am_node(&["certs", d, "b"]);
    assert!(second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("already in") && said.contains("--new-ca"),
        "{said}"
    );
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    asyncmachine::certs::verify_signed_by(&a, &ca).expect("the first run's certificate verifies");
    let third = am_node(&["certs", d, "c", "--new-ca"]);
    assert!(String::from_utf8_lossy(&third.stderr).contains("replaced the CA"));
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    assert!(asyncmachine::certs::verify_signed_by(&a, &ca).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn messages_say_what_is_wrong() {
    // A port out of range is not a missing port.
    let out = am_node(&["watch", "tcp://127.0.0.1:99999/m", "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a port") && !err.contains("needs a port"),
        "{err}"
    );
    // A TLS endpoint without a CA names the flags, not topology keys.
    let out = am_node(&["watch", "tls://127.0.0.1:1/m", "--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca") && !err.contains("`tls`"), "{err}");
}

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    use std::io::BufRead as _;
    let dir = std::env::temp_dir().join(format!("am-node-cli-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("one.toml");
    std::fs::write(
        &file,
        "[schemas.s]\nstates = [{ name = \"A\" }]\n[[nodes]]\nname = \"n\"\nlisten = [\"tcp://127.0.0.1:0\"]\nmachines = [{ name = \"m\", schema = \"s\" }]\n",
    )
    .expect("written");
    // stderr is a pipe here, as it is for a log file: plain text.
    let mut child = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["--log", "info", "run", "--report-ms", "0"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("am-node runs");
    let stderr = child.stderr.take().expect("piped");
    // A node that never logs must not hang the test: stop it after a while.
    let id = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .is_err()
        {
            let _ = Command::new("kill").arg(id.to_string()).status();
        }
    });
    let line = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("node started"))
        .expect("the node logs that it started");
    let _ = done.send(());
    let _ = guard.join();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("INFO"), "{line}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_escapes_hostile_state_names() {
    use asyncmachine::machine::{Args, Machine, Schema, StateDef};
    let hostile = "X\n00:00:00.000  Admin\u{1b}[2J";
    let schema = Schema::builder()
        .state(StateDef::new(hostile))
        .build()
        .expect("a schema");
    let machine = Machine::builder(std::sync::Arc::new(schema))
        .id("root")
        .build();
    machine.add(&[hostile], Args::new()).expect("activates");
    let server = asyncmachine::server::Server::new(Default::default());
    server
        .add_source("m", std::sync::Arc::new(machine))
        .expect("a source");
    let at = server
        .listen(&"tcp://127.0.0.1:0".parse().expect("valid"))
        .await
        .expect("binds")
        .with_machine("m")
        .to_string();
    for args in [
        vec!["watch", at.as_str(), "--once"],
        vec!["watch", at.as_str(), "--once", "--ticks"],
        vec!["watch", at.as_str(), "--until", "Nope"],
    ] {
        let run = live::am_node(&args).await;
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains('\u{1b}'), "{args:?}: {all:?}");
        assert!(
            !all.lines().any(|l| l.starts_with("00:00:00.000  Admin")),
            "{args:?}: a faked line: {all}"
        );
        assert!(
            all.contains("X\\n00:00:00.000  Admin\\u{1b}[2J"),
            "{args:?}: {all}"
        );
    }
}

fn topology_path(name: &str) -> String {
    format!("{}/../topologies/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn diagram_writes_svg_mermaid_and_dot() {
    let out = am_node(&["diagram", &topology_path("demo.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8(out.stdout).expect("UTF-8");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG parses");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for shown in [
        "Flag",
        "Heartbeat (multi)",
        "node hub-a",
        "leaf/demo (mirror)",
    ] {
        assert!(texts.contains(&shown), "{shown} in {texts:?}");
    }
    let out = am_node(&[
        "diagram",
        &topology_path("demo.toml"),
        "--format",
        "mermaid",
        "--tree",
    ]);
    let mermaid = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && mermaid.starts_with("flowchart TB"),
        "{mermaid}"
    );
    assert!(
        !mermaid.contains("Heartbeat"),
        "--tree leaves the schemas out"
    );
    let out = am_node(&[
        "diagram",
        &topology_path("demo.toml"),
        "--format",
        "dot",
        "--machine",
        "leaf/demo",
    ]);
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && dot.starts_with("digraph"), "{dot}");
    assert!(
        dot.contains("Heartbeat") && !dot.contains("node hub-a"),
        "{dot}"
    );
}

#[test]
fn diagram_of_bad_input_is_a_clear_error() {
    let out = am_node(&["diagram", "/nonexistent/topology.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read the topology file"), "{stderr}");
    let dir = std::env::temp_dir().join(format!("am-diagram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[nodes]\nname = ").expect("written");
    let out = am_node(&["diagram", bad.to_str().expect("UTF-8 path")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:1") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = am_node(&["diagram", &topology_path("demo.toml"), "--machine", "x<y>"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no machine named \"x<y>\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dbg_and_run_debug_explain_bad_addresses_and_dumps() {
    let out = am_node(&[
        "run",
        "../topologies/demo.toml",
        "--debug",
        "ws://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--debug") && stderr.contains("tcp://host:port"),
        "{stderr}"
    );
    let dir = std::env::temp_dir().join(format!("am-dbg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let bad = dir.join("bad.amdbg");
    std::fs::write(&bad, b"not a dump").expect("writes");
    let out = am_node(&[
        "dbg",
        "--listen",
        "127.0.0.1:0",
        "--console",
        "127.0.0.1:0",
        "--import",
        bad.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--import") && stderr.contains("--export"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `add` to a node that is not up yet waits for it (saying so), then runs the mutation once;
/// to a node that never comes it gives up at `--timeout` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_waits_for_a_node_that_is_not_up_yet() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let at = format!("tcp://127.0.0.1:{port}/m");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["add", &at, "A", "--timeout", "20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("am-node runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let said = tokio::time::timeout(LIMIT, stderr.next_line())
        .await
        .expect("says it waits in time")
        .expect("reads")
        .expect("a line");
    assert!(said.contains("waiting for") && said.contains(&at), "{said}");
    // The node comes up on that port.
    let server = asyncmachine::server::Server::new(asyncmachine::server::ServerConfig::default());
    let machine = asyncmachine::machine::Machine::builder(schema())
        .id("root")
        .build();
    server
        .add_source("m", std::sync::Arc::new(machine.clone()))
        .expect("a source");
    server
        .listen(&format!("tcp://127.0.0.1:{port}").parse().expect("valid"))
        .await
        .expect("binds the port the command waits on");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("ends in time")
        .expect("its output");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Executed"));
    assert!(machine.is1("A"));
    assert_eq!(machine.tick("A"), 1, "ran once");

    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let run = live::am_node(&[
        "add",
        &format!("tcp://127.0.0.1:{nobody}/m"),
        "A",
        "--timeout",
        "300ms",
    ])
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("gave up after --timeout 300ms"),
        "{}",
        run.stderr
    );
}

/// The main job says what to try next, with the ports it really listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_the_commands_to_try_next_with_the_real_ports() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = std::env::temp_dir().join(format!("am-try-next-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let file = dir.join("one.toml");
    std::fs::write(
        &file,
        "[schemas.s]\nstates = [{ name = \"On\" }, { name = \"Flag\" }]\n\n[[nodes]]\nname = \"solo\"\nlisten = [\"tcp://127.0.0.1:0\"]\nmachines = [{ name = \"m\", schema = \"s\" }]\n",
    )
    .expect("writes");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["run", file.to_str().expect("utf-8"), "--report-ms", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("am-node runs");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" status ")) {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("prints in time")
            .expect("reads")
            .expect("a line");
        seen.push(line);
    }
    let text = seen.join("\n");
    assert!(text.contains("try, in a second shell:"), "{text}");
    let watch = seen
        .iter()
        .find(|l| l.contains(" watch "))
        .expect("a watch line");
    assert!(
        watch.contains("tcp://127.0.0.1:") && !watch.contains(":0/") && watch.ends_with("/m"),
        "the real port: {watch}"
    );
    assert!(text.contains("/m Flag"), "{text}");
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

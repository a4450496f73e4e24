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

//! `am-node bench chain --processes` and `bench sgp --processes`: the nodes (the worker) as
//! separate processes, the reports' rows, and nothing left behind. Figures are not checked
//! against times (benchmarks are not tests).

use std::process::{Command, Stdio};

#[test]
fn bench_chain_across_processes_reports_every_depth_and_cleans_up() {
    let child = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args([
            "bench",
            "chain",
            "--processes",
            "--hops",
            "2",
            "--iterations",
            "50",
            "--warmup",
            "5",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("am-node starts");
    let pid = child.id();
    let out = child.wait_with_output().expect("am-node ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The table: a row per depth, the acknowledgement and the round trip.
    let rows: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with("chain-procs"))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("roundtrip")),
        "{stdout}"
    );

    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output"))
        .expect("JSON on the last line");
    assert_eq!(report["scenario"], "chain-processes");
    assert_eq!(report["processes"], 3);
    assert_eq!(report["iterations"], 50);
    let depths = report["propagation"].as_array().expect("depths");
    assert_eq!(depths.len(), 3);
    let ordered = |p: &serde_json::Value, what: &str| {
        let (p50, p99, max) = (
            p["p50_us"].as_f64().expect("p50"),
            p["p99_us"].as_f64().expect("p99"),
            p["max_us"].as_f64().expect("max"),
        );
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "{what}: p50 {p50}, p99 {p99}, max {max}"
        );
    };
    for (i, d) in depths.iter().enumerate() {
        assert_eq!(d["depth"], i);
        ordered(&d["latency"], &format!("depth {i}"));
        ordered(&d["floor"], &format!("floor at depth {i}"));
        assert_eq!(d["per_hop_p50_us"].is_null(), i == 0, "{d}");
    }
    ordered(&report["ack"], "ack");
    ordered(&report["round_trip"], "round trip");
    assert_eq!(report["round_trip_hops"], 3);

    // The run's directory (topology, the children's logs) is gone with it.
    let dir = std::env::temp_dir().join(format!("am-bench-chain-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn bench_chain_processes_refuses_other_transports_and_bad_cpu_lists() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_am-node"))
            .args(args)
            .output()
            .expect("am-node runs")
    };
    let out = run(&["bench", "chain", "--processes", "--transport", "quic"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp only"));
    let out = run(&["bench", "chain", "--processes", "--pin", "3-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs backwards"));
}

#[test]
fn bench_sgp_across_processes_reports_its_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args([
            "bench",
            "sgp",
            "--processes",
            "--loops",
            "200",
            "--warmup",
            "20",
            "--json",
        ])
        .output()
        .expect("am-node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("output"))
        .expect("JSON on the last line");
    assert_eq!(report["scenario"], "sgp-procs");
    assert_eq!(report["errors"], 0);
    for key in ["us_per_loop", "bytes_per_loop", "floor_us_per_loop"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {report}"
        );
    }
    let l = &report["latency"];
    let (p50, p99, max) = (
        l["p50_us"].as_f64().expect("p50"),
        l["p99_us"].as_f64().expect("p99"),
        l["max_us"].as_f64().expect("max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{l}");
}

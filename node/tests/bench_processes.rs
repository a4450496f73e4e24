//! `am-node bench chain --processes`, `bench sgp --processes` and `bench fanout --processes`:
//! the nodes (the worker, the root) as separate processes, the reports' rows, and nothing left
//! behind. Figures are not checked against times (benchmarks are not tests).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs am-node with `args` to its end, which must be a success; its output and process id.
fn run_to_success(args: &[&str]) -> (String, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("am-node starts");
    let pid = child.id();
    let out = child.wait_with_output().expect("am-node ends");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, pid)
}

#[test]
fn bench_chain_across_processes_reports_every_depth_and_cleans_up() {
    let (stdout, pid) = run_to_success(&[
        "bench",
        "chain",
        "--processes",
        "--hops",
        "2",
        "--iterations",
        "50",
        "--warmup",
        "5",
        "--clients-per-node",
        "3",
        "--json",
    ]);
    assert!(
        stdout.contains("3 idle clients at each"),
        "the idle clients are said: {stdout}"
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
    assert_eq!(report["clients_per_node"], 3, "{report}");
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

/// Runs `am-node bench fanout --processes ARGS --json`; its one report and its process id.
fn fanout_processes(args: &[&str]) -> (serde_json::Value, u32) {
    let mut all = vec!["bench", "fanout", "--processes", "--json"];
    all.extend_from_slice(args);
    let (stdout, pid) = run_to_success(&all);
    assert!(
        stdout.lines().any(|l| l.starts_with("processes ")),
        "a table row says its mode: {stdout}"
    );
    let reports: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON last");
    let [report] = reports.as_array().expect("a list of reports").as_slice() else {
        panic!("one report per mirror count: {reports}");
    };
    (report.clone(), pid)
}

/// Processes of this test's am-node whose command line holds `needle`.
fn running_with(needle: &str) -> Vec<String> {
    let exe = env!("CARGO_BIN_EXE_am-node");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with(exe) && c.contains(needle))
        .collect()
}

#[test]
fn bench_fanout_with_the_root_as_a_node_reports_its_figures_and_cleans_up() {
    let (r, pid) = fanout_processes(&["--mirrors", "5", "--flips", "5", "--sustained-ms", "200"]);
    assert_eq!(r["mode"], "processes", "{r}");
    assert_eq!(r["transport"], "tcp", "{r}");
    assert_eq!(r["remote_root"], true, "{r}");
    // Every flip reached all 5 mirrors (the run fails otherwise), and was timed.
    assert_eq!(r["mirrors"], 5, "{r}");
    let conv = &r["convergence"];
    let (p50, p99) = (
        conv["p50_us"].as_f64().expect("p50"),
        conv["p99_us"].as_f64().expect("p99"),
    );
    assert!(0.0 < p50 && p50 <= p99, "{conv}");
    for key in ["root_mutations_per_s", "frames_per_s", "frames_per_s_floor"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
    }
    // The lag's two bounds, the mutator's answers and the root's memory, all taken.
    for key in [
        "lag_p99_ms",
        "lag_p99_low_ms",
        "mutation_answer_p99_ms",
        "settle_ms",
        "server_kib_per_mirror",
    ] {
        assert!(r[key].as_f64().is_some(), "{key} in {r}");
    }
    assert!(
        r["lag_p99_low_ms"].as_f64() <= r["lag_p99_ms"].as_f64(),
        "the lower bound is not above the upper: {r}"
    );
    assert!(
        r["convergence_floor"]["p50_us"]
            .as_f64()
            .is_some_and(|us| us > 0.0),
        "{r}"
    );

    // The run's directory (topology, the children's logs) is gone with it, and with it the
    // root's node and the floor's writers.
    let dir = std::env::temp_dir().join(format!("am-bench-fanout-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running_with(&dir.to_string_lossy());
        let floor = running_with("fanout-root");
        if left.is_empty() && floor.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running: {left:?} {floor:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Over QUIC (a UDP listener, TLS material written for the node).
    let (r, _) = fanout_processes(&[
        "--transport",
        "quic",
        "--mirrors",
        "3",
        "--flips",
        "3",
        "--sustained-ms",
        "100",
    ]);
    assert_eq!(
        (r["mode"].as_str(), r["transport"].as_str()),
        (Some("processes"), Some("quic"))
    );
    assert!(r["frames_per_s"].as_f64().is_some_and(|f| f > 0.0), "{r}");
}

#[test]
fn bench_fanout_processes_and_split_are_one_or_the_other() {
    let out = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["bench", "fanout", "--processes", "--split"])
        .output()
        .expect("am-node runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `am-node bench relay --compare` as a person runs it: a row for the in-process relay and one
//! for am-relay's binary, and websocat and websockify reported as skipped (with how to install
//! them) when they cannot be found. No timing is asserted: the figures are the benchmark's.

use std::path::PathBuf;
use std::process::Command;

/// am-relay's binary beside am-node's, built when it is not there yet (`cargo test -p am-node`
/// builds only am-node's binaries).
fn am_relay() -> PathBuf {
    let am_node = PathBuf::from(env!("CARGO_BIN_EXE_am-node"));
    let relay = am_node.with_file_name(format!("am-relay{}", std::env::consts::EXE_SUFFIX));
    if !relay.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "am-relay"]);
        if am_node.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs to build am-relay");
        assert!(status.success(), "cargo build -p am-relay failed");
    }
    assert!(relay.is_file(), "no am-relay at {}", relay.display());
    relay
}

#[test]
fn compare_measures_both_relays_and_skips_missing_bridges() {
    let relay = am_relay();
    // Nothing on PATH and no home: websocat and websockify cannot be found, whatever this
    // machine has installed.
    let empty = std::env::temp_dir().join(format!("am-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["bench", "relay", "--compare", "--round-trips", "200"])
        .args(["--bulk-mib", "2", "--json", "--relay-bin"])
        .arg(&relay)
        .env("PATH", &empty)
        .env("HOME", &empty)
        .env_remove("AM_BENCH_RELAY_BIN")
        .env_remove("AM_BENCH_WEBSOCAT")
        .env_remove("AM_BENCH_WEBSOCKIFY")
        .output()
        .expect("am-node runs");
    let _ = std::fs::remove_dir_all(&empty);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    let rows = report["rows"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["bridge"] == name)
            .unwrap_or_else(|| panic!("no row {name} in {report}"))
    };
    for name in ["am-relay (in process)", "am-relay"] {
        let row = row(name);
        assert!(row["skipped"].is_null(), "{row}");
        for key in ["added_us", "cpu_us", "to_target_mb_s", "to_browser_mb_s"] {
            assert!(row[key].as_f64().is_some(), "{key} of {row}");
        }
        assert!(row["round_trip"]["p50_us"].as_f64().is_some(), "{row}");
    }
    for name in ["websocat", "websockify"] {
        let why = row(name)["skipped"].as_str().unwrap_or_default().to_owned();
        assert!(
            why.contains("not on PATH") && why.contains("install-bench-tools.sh"),
            "{name}: {why}"
        );
        assert!(
            stdout.contains(&format!("{name:<22} skipped: ")),
            "{name} in the table: {stdout}"
        );
    }
    assert!(stdout.contains("am-relay (in process)"), "{stdout}");
}

#[test]
fn bridge_flags_need_compare() {
    let out = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["bench", "relay", "--websocat", "none"])
        .output()
        .expect("am-node runs");
    assert!(!out.status.success(), "--websocat needs --compare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--compare"), "{stderr}");
}

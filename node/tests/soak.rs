//! The short soak of the test suite: `scripts/soak.py` (the same script `scripts/soak.sh`
//! runs for minutes) against this build's am-node: 20 kills of interior nodes and 20 link
//! faults in about fifteen seconds. The script checks convergence and that the root ran each
//! mutation the leaf saw Executed exactly once (retries with keys across the kills).

use std::path::Path;
use std::process::Command;

#[test]
fn a_chain_of_processes_survives_twenty_kills() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/soak.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--binary", env!("CARGO_BIN_EXE_am-node")])
        .args(["--seconds", "10", "--kills", "20", "--json"])
        .output()
        .expect("python3 runs (the soak script needs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(summary["ok"], true);
    assert!(summary["kills"].as_u64() >= Some(20), "{summary}");
    assert!(summary["leaf_executed"].as_u64() > Some(0), "{summary}");
    if summary["leaf_not_executed"] == 0 {
        assert_eq!(
            summary["root_ran_leaf_ops"], summary["leaf_executed"],
            "each once: {summary}"
        );
    }
}

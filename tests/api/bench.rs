//! The bench cannot rot: a tiny `--quick` run goes end to end and reports every workload.
//! (A smoke test of the bench's plumbing; its figures are not judged here.)

use std::process::Command;

use serde_json::Value;

#[test]
fn a_tiny_quick_run_reports_every_workload() {
    let json = std::env::temp_dir().join(format!("chronicle-bench-{}.json", std::process::id()));
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let output = Command::new(env!("CARGO_BIN_EXE_chronicle-bench"))
        .args(["--quick", "--scale", "0.02", "--json"])
        .arg(&json)
        .env("DATABASE_URL", server)
        .output()
        .expect("run chronicle-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the bench failed:\n{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    std::fs::remove_file(&json).expect("remove the report");

    let ids: Vec<&str> = report["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .map(|w| w["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["W0", "W1", "W2", "W3", "W4", "W5", "W6", "W7"]);
    for workload in report["workloads"].as_array().expect("workloads") {
        assert!(
            workload["peak_rss_bytes"].as_u64().expect("rss") > 0,
            "{workload}"
        );
        let figures = workload["figures"].as_array().expect("figures");
        assert!(figures.len() >= 2, "{workload}");
        for figure in figures {
            let value = figure["value"].as_f64().expect("value");
            assert!(value.is_finite() && value >= 0.0, "{figure}");
        }
        // The first figure is the workload's headline: something was measured.
        assert!(figures[0]["value"].as_f64() > Some(0.0), "{workload}");
    }
    // Each limit was measured, and the table names every workload.
    for id in ["W1", "W2", "W4", "W5"] {
        let workload = &report["workloads"][ids.iter().position(|i| *i == id).expect(id)];
        assert!(
            workload["figures"][0]["limit"].as_f64() > Some(0.0),
            "{workload}"
        );
    }
    let table = String::from_utf8_lossy(&output.stdout);
    for id in ids {
        assert!(table.contains(id), "{table}");
    }
}

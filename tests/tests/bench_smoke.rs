//! Runs the benchmark harness (`src/bin/bench.rs`) end to end with `--quick`
//! so it cannot rot: every scenario starts its real processes, drives its
//! load, and writes a JSON report with Meridian's figure and the baseline's.
//! The figures of a debug build on a shared machine mean nothing; the
//! benchmarks proper run in release (see docs/benchmarks.md).

use std::process::Command;

use meridian_tests::TempDir;
use serde_json::Value;

#[test]
fn every_scenario_runs_and_reports_both_sides() {
    let out = TempDir::new("bench-smoke");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--quick", "--seconds", "0.5", "--partition-secs", "2", "--docs", "2000", "--no-docs"])
        .arg("--node-flag=--checkpoint-interval-ms=60000")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for scenario in ["write", "read", "converge", "wire", "catchup", "hot", "scale"] {
        let path = out.path().join(format!("{scenario}.json"));
        let report: Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{scenario}: {e}")))
            .expect("report is JSON");
        let figures = report["figures"].as_array().expect("figures");
        assert!(!figures.is_empty(), "{scenario}: no figures");
        for figure in figures {
            assert!(figure["meridian"].is_number(), "{scenario}: {figure} has no figure for Meridian\n{stdout}");
            if figure["ratio"].is_number() {
                assert!(figure["baseline"].as_f64().is_some_and(|b| b > 0.0), "{scenario}: {figure}");
            }
        }
        assert!(stdout.contains(&format!("{scenario}: ")), "{scenario}: no summary table\n{stdout}");
    }
    // Writes and reads compare against the bare handler in the same run.
    let write: Value = serde_json::from_slice(&std::fs::read(out.path().join("write.json")).unwrap()).unwrap();
    assert_eq!(write["figures"][0]["name"], "throughput");
    assert!(write["figures"][0]["ratio"].as_f64().is_some_and(|r| r > 0.0), "{write}");
}

#[test]
fn bad_arguments_get_usage_not_a_panic() {
    for args in [
        &["nonsense"][..],
        &["write", "--seconds", "-1"],
        &["write", "--seconds"],
        &["read", "--connections", "0.5"],
        &[],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_bench")).args(args).output().expect("run bench");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: bench"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

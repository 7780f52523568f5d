//! Replays the fuzz corpus under `cargo test`, so the properties the fuzz
//! targets check hold on every run, not only when someone fuzzes.
//!
//! The checks are the fuzz crate's own (`fuzz/src/lib.rs`), compiled here as
//! a module: `fuzz/` is a separate workspace that `cargo test --workspace`
//! does not build, and the checks need nothing beyond meridian-crdt,
//! meridian-gossip and serde_json. Every file under `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` (crash reproducers, kept forever) goes
//! through its target's check.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.expect("directory entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `check` on `data`, turning a panic into a failure line naming `what`,
/// so one bad input does not hide the others.
fn run(check: fuzz_checks::Check, data: &[u8], what: &str, failures: &mut Vec<String>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(data))) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failures.push(format!("{what}: {message}"));
    }
}

#[test]
fn committed_corpus_and_regressions_pass_the_fuzz_checks() {
    let mut failures = Vec::new();
    for (target, check) in fuzz_checks::TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ has no seeds");
        for path in seeds.iter().chain(&files(&fuzz_dir().join("regressions").join(target))) {
            let data = std::fs::read(path).expect("readable corpus file");
            run(check, &data, &path.display().to_string(), &mut failures);
        }
    }
    assert!(failures.is_empty(), "fuzz checks failed:\n{}", failures.join("\n"));
}

#[test]
fn generated_seeds_pass_the_fuzz_checks() {
    let mut failures = Vec::new();
    for (target, name, data) in fuzz_checks::seeds() {
        let (_, check) = fuzz_checks::TARGETS.iter().find(|(t, _)| *t == target).expect("seed of a known target");
        run(*check, &data, &format!("{target}/{name}"), &mut failures);
    }
    assert!(failures.is_empty(), "fuzz checks failed on generated seeds:\n{}", failures.join("\n"));
}

/// Rewrites the seed corpus from the real encoders when
/// `MERIDIAN_WRITE_SEED_CORPUS=1` is set (after a wire format or the seeds
/// change): `MERIDIAN_WRITE_SEED_CORPUS=1 cargo test -p meridian-tests --test
/// fuzz_corpus write_seed_corpus`. Otherwise it leaves the tree alone: the
/// test above already checks the generated seeds.
#[test]
fn write_seed_corpus() {
    if std::env::var_os("MERIDIAN_WRITE_SEED_CORPUS").is_none_or(|v| v != "1") {
        return;
    }
    for (target, name, data) in fuzz_checks::seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

//! The deterministic whole-cluster simulation, run over many seeds.
//!
//! CI runs a fixed budget of seeds (`MERIDIAN_SIM_SEEDS`, default 20, from
//! `MERIDIAN_SIM_FIRST_SEED`, default 1). A failure prints the seed and the one
//! command that replays it exactly (`MERIDIAN_SIM_SEED=<seed>`). A second test
//! runs deliberately broken variants and requires the checkers to catch each.

use std::time::Instant;

use meridian_tests::simulation::{explain, run_seed, Variant};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
}

fn variant_from_env() -> Variant {
    match std::env::var("MERIDIAN_SIM_VARIANT").as_deref() {
        Err(_) | Ok("") | Ok("Correct") => Variant::Correct,
        Ok("DropsRemoteChanges") => Variant::DropsRemoteChanges,
        Ok("ClosesEarly") => Variant::ClosesEarly,
        Ok("AfterDoesNotWait") => Variant::AfterDoesNotWait,
        Ok(other) => {
            panic!("MERIDIAN_SIM_VARIANT={other:?}: use Correct, DropsRemoteChanges, ClosesEarly or AfterDoesNotWait")
        }
    }
}

#[test]
fn seeds_converge_and_keep_every_promise() {
    let seeds: Vec<u64> = match env_u64("MERIDIAN_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("MERIDIAN_SIM_FIRST_SEED").unwrap_or(1);
            let count = env_u64("MERIDIAN_SIM_SEEDS").unwrap_or(20);
            (first..first + count).collect()
        }
    };
    let variant = variant_from_env();
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in &seeds {
        let began = Instant::now();
        let report = run_seed(*seed, variant);
        eprintln!("{} [{} ms]", report.summary(), began.elapsed().as_millis());
        if !report.violations.is_empty() {
            eprintln!("{}", explain(&report));
            failures.push(report);
        }
    }
    eprintln!("{} seeds in {:.1} s, {} failed", seeds.len(), started.elapsed().as_secs_f64(), failures.len());
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|r| r.config.replay_command()).collect();
        panic!("{} of {} seeds broke a promise; replay with:\n{}", failures.len(), seeds.len(), list.join("\n"));
    }
}

/// The checkers must be able to fail: each broken variant is caught within a few seeds.
#[test]
fn checkers_catch_broken_variants() {
    for variant in Variant::BROKEN {
        let mut caught = None;
        for seed in 1..=6 {
            let report = run_seed(seed, variant);
            if !report.violations.is_empty() {
                let checkers: std::collections::BTreeSet<&str> = report.violations.iter().map(|v| v.checker).collect();
                eprintln!("{variant:?} caught at seed {seed} by {checkers:?}: {}", report.violations[0]);
                caught = Some(seed);
                break;
            }
            eprintln!("{variant:?} not caught at seed {seed}: {}", report.summary());
        }
        assert!(caught.is_some(), "the checkers did not catch the broken variant {variant:?}");
    }
}

/// A seed replays exactly: the same history, the same faults, the same result.
#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(3, Variant::Correct);
    let b = run_seed(3, Variant::Correct);
    assert_eq!(a.summary(), b.summary());
    assert_eq!(a.stats.faults, b.stats.faults);
}

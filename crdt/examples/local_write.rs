//! Profiling aid: `Replica::local_write` of the write benchmark's merge patch
//! on one thread, no HTTP and no disk. Run under `perf record` to see where a
//! local write's CPU goes: `cargo run --release -p meridian-crdt --example local_write -- 5`.

use std::time::{Duration, Instant};

use meridian_crdt::{DocId, Hlc, NodeId, Replica, WriteOp};
use serde_json::json;

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let limit = Duration::from_secs_f64(seconds);
    let mut replica = Replica::new(NodeId(1));
    let ids: Vec<DocId> = (0..1000).map(|i| DocId::new(&format!("bench/{i}")).expect("id")).collect();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < limit {
        let patch = json!({ "name": format!("user-{i}"), "count": i, "active": true, "tags": ["a", "b"] });
        replica
            .local_write(
                &ids[(i % 1000) as usize],
                &WriteOp::MergePatch(patch),
                Hlc::new(1_000_000_000 + i * 1000, 0),
                None,
            )
            .expect("write");
        i += 1;
    }
    println!("{:.0} writes/s", i as f64 / started.elapsed().as_secs_f64());
}

//! The document cache on a real `meridian serve` process: with `--doc-cache 4`
//! and frequent checkpoints, a node holding many more documents keeps about
//! four in memory, serves every one of them (reads, writes, history, listing)
//! by loading cold ones from disk, and after a restart, which reads no
//! snapshot, still serves all of them with the same content and ETags; and
//! local writes wait for checkpoints when too many documents wait for a
//! durable snapshot (`--unpersisted-docs-max`).

use std::time::{Duration, Instant};

use meridian_tests::{NodeProcess, TempDir};
use serde_json::{json, Value};

const DOCS: usize = 40;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

async fn metrics(client: &reqwest::Client, url: &str) -> String {
    client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap()
}

async fn read(client: &reqwest::Client, url: &str, id: &str) -> (u16, Value, String) {
    let reply = client.get(format!("{url}/v1/docs/{id}")).send().await.unwrap();
    let status = reply.status().as_u16();
    let etag = reply.headers().get("etag").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, reply.json().await.unwrap_or(Value::Null), etag)
}

/// Waits until a checkpoint has evicted down to the limit.
async fn wait_resident_at_most(client: &reqwest::Client, url: &str, limit: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(client, url).await;
        let resident = metric(&text, "meridian_documents_resident");
        if resident <= limit {
            return;
        }
        assert!(Instant::now() < deadline, "still {resident} documents resident, limit {limit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_documents_are_served_from_disk_before_and_after_a_restart() {
    let dir = TempDir::new("doc-cache");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let flags = ["--doc-cache", "4", "--checkpoint-interval-ms", "50"];
    let node = NodeProcess::start(dir.path(), &flags);
    for i in 0..DOCS {
        let put = client.put(format!("{}/v1/docs/cache/{i:03}", node.url)).json(&json!({"i": i})).send().await.unwrap();
        assert!(put.status().is_success(), "PUT {i}: {}", put.status());
    }
    let deleted = client.delete(format!("{}/v1/docs/cache/000", node.url)).send().await.unwrap();
    assert!(deleted.status().is_success());
    wait_resident_at_most(&client, &node.url, 4).await;
    let text = metrics(&client, &node.url).await;
    assert_eq!(metric(&text, "meridian_documents"), DOCS as u64 - 1);
    assert_eq!(metric(&text, "meridian_document_cache_limit"), 4);

    // Every document reads back from disk; a write to a cold one keeps its content.
    let mut etags = Vec::new();
    for i in 1..DOCS {
        let (status, body, etag) = read(&client, &node.url, &format!("cache/{i:03}")).await;
        assert_eq!((status, body), (200, json!({"i": i})), "cache/{i:03}");
        etags.push(etag);
    }
    assert_eq!(read(&client, &node.url, "cache/000").await.0, 404, "a cold deleted document stays deleted");
    let loads = metric(&metrics(&client, &node.url).await, "meridian_document_cache_loads_total");
    assert!(loads >= DOCS as u64 - 8, "only {loads} cold loads: were documents evicted at all?");
    wait_resident_at_most(&client, &node.url, 4).await;
    let patched = client
        .patch(format!("{}/v1/docs/cache/005", node.url))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"patched": true}"#)
        .send()
        .await
        .unwrap();
    assert!(patched.status().is_success(), "{}", patched.status());
    wait_resident_at_most(&client, &node.url, 4).await;
    let history = client.get(format!("{}/v1/docs/cache/005/history", node.url)).send().await.unwrap();
    assert_eq!(history.status().as_u16(), 200);
    let history: Value = history.json().await.unwrap();
    assert!(history["changes"].as_array().map_or(0, Vec::len) >= 2, "{history}");
    node.terminate(Duration::from_secs(10));

    // The restart reads the index rows only; every document still answers, unchanged.
    let node = NodeProcess::start(dir.path(), &flags);
    let text = metrics(&client, &node.url).await;
    assert_eq!(metric(&text, "meridian_documents"), DOCS as u64 - 1);
    assert_eq!(metric(&text, "meridian_documents_resident"), 0, "recovery loads no document");
    for i in 1..DOCS {
        let (status, body, etag) = read(&client, &node.url, &format!("cache/{i:03}")).await;
        let want = if i == 5 { json!({"i": 5, "patched": true}) } else { json!({"i": i}) };
        assert_eq!((status, body), (200, want), "cache/{i:03} after restart");
        if i != 5 {
            assert_eq!(etag, etags[i - 1], "cache/{i:03} keeps its ETag");
        }
    }
    let listed: Value =
        client.get(format!("{}/v1/docs?prefix=cache/", node.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["ids"].as_array().map(Vec::len), Some(DOCS - 1), "{listed}");
}

/// Backpressure: with `--unpersisted-docs-max 8` and only forced
/// checkpoints (the interval is an hour), new documents written faster than
/// snapshots persist them make local writes wait, which the node counts;
/// every write is still acknowledged, the resident set stays near the cache
/// plus the limit, and nothing acknowledged is missing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_checkpoints_when_too_many_documents_are_unpersisted() {
    const WRITES: usize = 600;
    const CLIENTS: usize = 16;
    const CACHE: u64 = 4;
    const LIMIT: u64 = 8;
    let dir = TempDir::new("doc-cache-backpressure");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let flags = [
        "--doc-cache",
        "4",
        "--unpersisted-docs-max",
        "8",
        "--checkpoint-interval-ms",
        "3600000",
        "--rate-limit-per-second",
        "0",
    ];
    let node = NodeProcess::start(dir.path(), &flags);
    let text = metrics(&client, &node.url).await;
    assert_eq!(metric(&text, "meridian_documents_unpersisted_limit"), LIMIT);
    assert_eq!(metric(&text, "meridian_write_backpressure_waits_total"), 0);

    // Sample the resident set while the writers run.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (client, url, sampling) = (client.clone(), node.url.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(metric(&metrics(&client, &url).await, "meridian_documents_resident"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let writers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, url) = (client.clone(), node.url.clone());
            tokio::spawn(async move {
                for i in (c..WRITES).step_by(CLIENTS) {
                    let put = client.put(format!("{url}/v1/docs/bp/{i:04}")).json(&json!({ "i": i })).send().await;
                    let status = put.map(|r| r.status().as_u16()).unwrap_or(0);
                    assert!((200..300).contains(&status), "PUT bp/{i:04}: {status}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();

    let text = metrics(&client, &node.url).await;
    let waits = metric(&text, "meridian_write_backpressure_waits_total");
    assert!(waits > 0, "{WRITES} new documents with at most {LIMIT} unpersisted, yet no write waited");
    assert_eq!(metric(&text, "meridian_documents"), WRITES as u64);
    // The cache, the limit, and what one writer batch (at most one write per
    // client) and the checkpoint's eviction lag can add on top.
    let bound = CACHE + LIMIT + 2 * CLIENTS as u64;
    assert!(peak <= bound, "{peak} documents resident at the peak, more than {bound}");
    let waited = text
        .lines()
        .find_map(|l| l.strip_prefix("meridian_write_backpressure_seconds_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("meridian_write_backpressure_seconds_total");
    assert!(waited > 0.0, "{waits} waits took no time");
    eprintln!(
        "{WRITES} writes in {:.1} s: {waits} waits, {waited:.2} s waited, peak {peak} resident",
        started.elapsed().as_secs_f64()
    );

    // Every acknowledged write survives a kill -9 (acknowledged means fsynced).
    node.kill9();
    let node = NodeProcess::start(dir.path(), &flags);
    let text = metrics(&client, &node.url).await;
    assert_eq!(metric(&text, "meridian_documents"), WRITES as u64, "after kill -9 and restart");
    for i in (0..WRITES).step_by(37) {
        let (status, body, _) = read(&client, &node.url, &format!("bp/{i:04}")).await;
        assert_eq!((status, body), (200, json!({ "i": i })), "bp/{i:04} after restart");
    }
}

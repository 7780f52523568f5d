//! Event streams between real processes: `GET /v1/docs/{id}/events` and
//! `GET /v1/events?prefix=` deliver applied changes; a client that
//! disconnects, and one whose server is killed with `kill -9` and restarted,
//! resumes with `Last-Event-ID` and sees every acknowledged write exactly
//! once, in order, with no gaps.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meridian_tests::{NodeProcess, TempDir};
use serde_json::{json, Value};

/// One parsed server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: u64,
    kind: String,
    data: Value,
}

/// Reads events from `path` until `enough(events)` or `limit` passes.
async fn read_events(
    url: &str,
    path: &str,
    last_event_id: Option<u64>,
    limit: Duration,
    enough: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("{url}{path}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let mut response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let deadline = Instant::now() + limit;
    let mut buffer = String::new();
    let mut events = Vec::new();
    while Instant::now() < deadline && !enough(&events) {
        let chunk = match tokio::time::timeout(Duration::from_millis(200), response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(_) => break,
            Err(_) => continue,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Some(id) = id {
                events.push(Sse { id, kind, data: serde_json::from_str(&data).unwrap_or(Value::Null) });
            }
        }
    }
    events
}

async fn write(client: &reqwest::Client, url: &str, doc: &str, i: usize) -> Option<String> {
    let reply = client.put(format!("{url}/v1/docs/{doc}")).json(&json!({"i": i})).send().await.ok()?;
    if !reply.status().is_success() {
        return None;
    }
    Some(reply.json::<Value>().await.ok()?["token"].as_str()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_without_gaps_or_duplicates_across_a_kill_9() {
    let dir = TempDir::new("events");
    let node = NodeProcess::start(dir.path(), &["--checkpoint-interval-ms", "50"]);
    let url = node.url.clone();
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    let mut seen: Vec<Sse> = Vec::new();

    // Phase 1: a live stream from now; writes to the watched document and to others.
    let reader = {
        let url = url.clone();
        tokio::spawn(async move {
            read_events(&url, "/v1/docs/watched/events", None, Duration::from_secs(10), |e| e.len() >= 10).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        acknowledged.push(write(&client, &url, "watched", i).await.unwrap());
        write(&client, &url, &format!("other/{i}"), i).await.unwrap();
    }
    seen.extend(reader.await.unwrap());
    assert_eq!(seen.len(), 10);

    // Phase 2: disconnected while more writes land; resume with Last-Event-ID.
    for i in 10..20 {
        acknowledged.push(write(&client, &url, "watched", i).await.unwrap());
        write(&client, &url, &format!("other/{i}"), i).await.unwrap();
    }
    let last = seen.last().unwrap().id;
    seen.extend(
        read_events(&url, "/v1/docs/watched/events", Some(last), Duration::from_secs(10), |e| e.len() >= 10).await,
    );

    // Phase 3: kill -9 the server mid-stream, restart, resume.
    for i in 20..30 {
        acknowledged.push(write(&client, &url, "watched", i).await.unwrap());
    }
    node.kill9();
    let dir_path = dir.path().to_path_buf();
    let node = tokio::task::spawn_blocking(move || NodeProcess::start(&dir_path, &["--checkpoint-interval-ms", "50"]))
        .await
        .unwrap();
    let url = node.url.clone();
    for i in 30..35 {
        acknowledged.push(write(&client, &url, "watched", i).await.unwrap());
    }
    let last = seen.last().unwrap().id;
    let wanted: BTreeSet<String> = acknowledged.iter().cloned().collect();
    let have = |events: &[Sse], seen: &[Sse]| {
        let tokens: BTreeSet<String> =
            seen.iter().chain(events).filter_map(|e| e.data["token"].as_str().map(String::from)).collect();
        wanted.is_subset(&tokens)
    };
    let resumed =
        read_events(&url, "/v1/docs/watched/events", Some(last), Duration::from_secs(10), |e| have(e, &seen)).await;
    seen.extend(resumed);

    // Every acknowledged write exactly once, ids strictly increasing, only the watched document.
    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not strictly increasing: {ids:?}");
    assert!(seen.iter().all(|e| e.kind == "change" && e.data["doc"] == "watched"), "{seen:?}");
    let tokens: Vec<String> = seen.iter().map(|e| e.data["token"].as_str().unwrap().to_string()).collect();
    let unique: BTreeSet<&String> = tokens.iter().collect();
    assert_eq!(unique.len(), tokens.len(), "duplicate events");
    let missing: Vec<&String> = acknowledged.iter().filter(|t| !tokens.contains(t)).collect();
    assert!(missing.is_empty(), "acknowledged writes missing from the stream: {missing:?}");

    // The prefix stream carries the other documents, resumable from the start.
    let others =
        read_events(&url, "/v1/events?prefix=other/", Some(0), Duration::from_secs(10), |e| e.len() >= 20).await;
    assert_eq!(others.len(), 20, "{others:?}");
    assert!(others.iter().all(|e| e.data["doc"].as_str().unwrap().starts_with("other/")));
    // Bad input is a clear 400.
    let reply = client.get(format!("{url}/v1/events?prefix=a%20b")).send().await.unwrap();
    assert_eq!(reply.status(), 400);
    let reply = client.get(format!("{url}/v1/events")).header("last-event-id", "yesterday").send().await.unwrap();
    assert_eq!(reply.status(), 400);
    drop(node);
}

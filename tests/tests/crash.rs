//! Real-process crash recovery: start the `meridian` binary, write
//! concurrently, `kill -9` it mid-stream (checkpoints running every 20 ms so
//! the kill also lands inside snapshot and truncation commits, and a document
//! cache of two so most documents are cold), restart it on
//! the same data directory, and check that every acknowledged write is there:
//! every acknowledged PUT document with its exact content, every acknowledged
//! list append exactly once, and the counter at least the acknowledged
//! increments (at most that plus the writes in flight at the kill).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_tests::{NodeProcess, TempDir};
use serde_json::{json, Value};

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

#[derive(Default)]
struct Acked {
    docs: Vec<(String, Value)>,
    appends: BTreeSet<String>,
    increments: i64,
}

async fn writer(
    client: reqwest::Client,
    url: String,
    writer: usize,
    round: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Instant,
) {
    let mut i = 0;
    while Instant::now() < stop {
        i += 1;
        let id = format!("w{writer}/r{round}/{i}");
        let body = json!({"writer": writer, "round": round, "i": i});
        let put = client.put(format!("{url}/v1/docs/{id}")).json(&body).send().await;
        match put {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().docs.push((id, body)),
            _ => return, // the node is gone
        }
        let item = format!("{writer}-{round}-{i}");
        let append = client
            .patch(format!("{url}/v1/docs/shared/list"))
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op":"add","path":"/items/-","value":item}]).to_string())
            .send()
            .await;
        match append {
            Ok(r) if r.status().is_success() => {
                acked.lock().unwrap().appends.insert(item);
            }
            _ => return,
        }
        let increment = client
            .patch(format!("{url}/v1/docs/shared/counter"))
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"increment","path":"/n","value":1}]"#)
            .send()
            .await;
        match increment {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().increments += 1,
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_write() {
    let dir = TempDir::new("crash");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    // A tiny document cache: most documents go cold after each checkpoint, so
    // recovery, reads and writes also go through loads from disk.
    let flags = ["--checkpoint-interval-ms", "20", "--doc-cache", "2"];

    // Every round starts a node (recovering the previous round's data), writes, and kills it.
    let first = NodeProcess::start(dir.path(), &flags);
    let created =
        client.put(format!("{}/v1/docs/shared/list", first.url)).json(&json!({"items": []})).send().await.unwrap();
    assert!(created.status().is_success());
    let mut node = Some(first);
    for round in 0..ROUNDS {
        let process = match node.take() {
            Some(process) => process,
            None => tokio::task::spawn_blocking({
                let dir = dir.path().to_path_buf();
                move || NodeProcess::start(&dir, &flags)
            })
            .await
            .unwrap(),
        };
        let stop = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(client.clone(), process.url.clone(), w, round, acked.clone(), stop)))
            .collect();
        // Kill at a moment that varies by round, while writers are mid-stream.
        tokio::time::sleep(Duration::from_millis(700 + 350 * round as u64)).await;
        let pid = process.pid();
        process.kill9();
        for task in tasks {
            task.await.unwrap();
        }
        eprintln!(
            "round {round}: killed pid {pid}; acknowledged so far: {} documents",
            acked.lock().unwrap().docs.len()
        );
    }

    let dir_path = dir.path().to_path_buf();
    let node = tokio::task::spawn_blocking(move || NodeProcess::start(&dir_path, &[])).await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.docs.len() > 50, "too few writes acknowledged ({}) for the test to mean anything", acked.docs.len());
    for (id, body) in &acked.docs {
        let reply = client.get(format!("{}/v1/docs/{id}", node.url)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "acknowledged document {id} is missing after kill -9");
        assert_eq!(&reply.json::<Value>().await.unwrap(), body, "document {id} has the wrong content");
    }
    let list: Value =
        client.get(format!("{}/v1/docs/shared/list", node.url)).send().await.unwrap().json().await.unwrap();
    let items: Vec<String> =
        list["items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let unique: BTreeSet<String> = items.iter().cloned().collect();
    assert_eq!(unique.len(), items.len(), "an append is present more than once");
    let missing: Vec<_> = acked.appends.difference(&unique).collect();
    assert!(missing.is_empty(), "acknowledged appends lost: {missing:?}");
    let counter: Value =
        client.get(format!("{}/v1/docs/shared/counter", node.url)).send().await.unwrap().json().await.unwrap();
    let n = counter["n"].as_i64().unwrap();
    let in_flight_max = (WRITERS * ROUNDS) as i64;
    assert!(
        n >= acked.increments && n <= acked.increments + in_flight_max,
        "counter {n}, acknowledged {}",
        acked.increments
    );
    eprintln!(
        "verified {} documents, {} appends, counter {n} (acknowledged {}) after {ROUNDS} kill -9 rounds",
        acked.docs.len(),
        acked.appends.len(),
        acked.increments
    );
}

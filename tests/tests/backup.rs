//! Backup and restore with real processes: two nodes replicate, one is
//! backed up with `meridian backup` while writes continue, the file is
//! restored into a new data directory with `meridian restore`, and the
//! restored node, started with `--peer`, joins under a new node id, reaches
//! the same digest as the others and holds every acknowledged write,
//! including those made after the backup. Damaged, truncated and misplaced
//! restores are refused with a clear message and leave nothing behind.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_server::http_client;
use meridian_tests::{meridian_binary, TestCluster, ADMIN_TOKEN};
use serde_json::{json, Value};

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

fn call(url: &str, method: &str, path: &str, content_type: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = content_type.map(|c| vec![("content-type", c)]).unwrap_or_default();
    match http_client::request(host(url), method, path, &headers, body, Duration::from_secs(10)) {
        Ok(reply) => (reply.status, reply.json()),
        Err(_) => (0, Value::Null),
    }
}

fn increment(url: &str, doc: &str) -> bool {
    let patch = json!([{"op": "increment", "path": "/n", "value": 1}]).to_string();
    let (status, body) =
        call(url, "PATCH", &format!("/v1/docs/{doc}"), Some("application/json-patch+json"), Some(&patch));
    if !matches!(status, 200 | 201) {
        eprintln!("increment {doc} at {url}: {status} {body}");
    }
    matches!(status, 200 | 201)
}

fn put(url: &str, doc: &str, value: &Value) -> bool {
    matches!(
        call(url, "PUT", &format!("/v1/docs/{doc}"), Some("application/json"), Some(&value.to_string())).0,
        200 | 201
    )
}

/// Runs the binary to completion (bounded); returns exit code and stderr.
fn meridian(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(meridian_binary())
        .args(args)
        .env_remove("MERIDIAN_ADMIN_TOKEN")
        .env_remove("MERIDIAN_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meridian {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}

fn cluster_view(url: &str) -> Value {
    call(url, "GET", "/v1/cluster", None, None).1
}

/// Waits until every node has the same digest and version vector.
fn wait_converged(urls: &[String], limit: Duration) {
    let start = Instant::now();
    loop {
        let views: Vec<Value> = urls.iter().map(|u| cluster_view(u)).collect();
        let same = views.iter().all(|v| !v["node"]["digest"].is_null())
            && views.windows(2).all(|w| {
                w[0]["node"]["digest"] == w[1]["node"]["digest"]
                    && w[0]["node"]["version_vector"] == w[1]["node"]["version_vector"]
            });
        if same {
            return;
        }
        assert!(start.elapsed() < limit, "not converged after {limit:?}: {views:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restored_node_rejoins_and_catches_up() {
    let mut cluster = TestCluster::new("backup", &["us-east", "eu-west", "ap-south"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    let (east, west) = (cluster.url(0), cluster.url(1));
    let token_file = cluster.dir.path().join("admin.token");

    // Acknowledged counter increments per document, and plain documents, at both regions.
    let counts: Arc<Mutex<std::collections::BTreeMap<String, i64>>> = Arc::default();
    for i in 0..20 {
        let url = if i % 2 == 0 { &east } else { &west };
        assert!(put(url, &format!("plain/{i}"), &json!({"i": i, "by": url})));
        let doc = format!("count/{}", i % 5);
        assert!(increment(url, &doc));
        *counts.lock().unwrap().entry(doc).or_default() += 1;
    }
    assert!(put(&east, "gone", &json!({"x": 1})));
    wait_for_doc(&west, "gone");
    assert_eq!(call(&west, "DELETE", "/v1/docs/gone", None, None).0, 200);
    wait_converged(&[east.clone(), west.clone()], Duration::from_secs(30));

    // Back up us-east while both regions keep writing: the snapshot is consistent regardless.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, counts, east, west) = (stop.clone(), counts.clone(), east.clone(), west.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let url = if i % 2 == 0 { &east } else { &west };
                let doc = format!("count/{}", i % 7);
                if increment(url, &doc) {
                    *counts.lock().unwrap().entry(doc).or_default() += 1;
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let file = cluster.dir.path().join("east.backup");
    let file_arg = file.display().to_string();
    let (code, stderr) =
        meridian(&["backup", "--url", &east, "--token-file", &token_file.display().to_string(), "--out", &file_arg]);
    assert_eq!(code, Some(0), "backup failed: {stderr}");
    assert!(stderr.contains("backup of us-east") && stderr.contains("documents"), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Writes acknowledged after the backup.
    for i in 0..10 {
        let url = if i % 2 == 0 { &east } else { &west };
        assert!(put(url, &format!("after/{i}"), &json!({"i": i})));
        assert!(increment(url, "count/0"));
        *counts.lock().unwrap().entry("count/0".into()).or_default() += 1;
    }

    // A second backup to the same file is refused: backups never overwrite.
    let (code, stderr) = meridian(&["backup", "--url", &east, "--token", ADMIN_TOKEN, "--out", &file_arg]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");

    // Restore into ap-south's (new) data directory; the node id is new.
    let data = cluster.nodes[2].data.display().to_string();
    let (code, stderr) = meridian(&["restore", "--from", &file_arg, "--data-dir", &data, "--region", "ap-south"]);
    assert_eq!(code, Some(0), "restore failed: {stderr}");
    assert!(stderr.contains("new node id"), "{stderr}");
    // Restoring again into the now non-empty directory is refused.
    let (code, stderr) = meridian(&["restore", "--from", &file_arg, "--data-dir", &data, "--region", "ap-south"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");

    cluster.start(2, &[0], &[]);
    let south = cluster.url(2);
    let ids: Vec<Value> = [&east, &south].iter().map(|u| cluster_view(u)["node"]["id"].clone()).collect();
    assert_ne!(ids[0], ids[1], "a restored node never reuses the original's id");

    // The restored node catches up: same digest and vector as the others.
    let all = [east.clone(), west.clone(), south.clone()];
    wait_converged(&all, Duration::from_secs(60));

    // It holds every acknowledged write, including those after the backup.
    let counts = counts.lock().unwrap().clone();
    for (doc, expected) in &counts {
        let (status, value) = call(&south, "GET", &format!("/v1/docs/{doc}"), None, None);
        assert_eq!((status, value["n"].as_i64()), (200, Some(*expected)), "{doc} at the restored node");
    }
    for i in 0..20 {
        let (status, value) = call(&south, "GET", &format!("/v1/docs/plain/{i}"), None, None);
        assert_eq!((status, value["i"].as_i64()), (200, Some(i)), "plain/{i}");
    }
    for i in 0..10 {
        assert_eq!(call(&south, "GET", &format!("/v1/docs/after/{i}"), None, None).0, 200, "after/{i}");
    }
    assert_eq!(call(&south, "GET", "/v1/docs/gone", None, None).0, 404, "the delete survives the restore");

    // And it takes writes of its own (once admitted) that reach the others.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !put(&south, "from-south", &json!({"hello": "again"})) {
        assert!(Instant::now() < deadline, "the restored node never took a write");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_converged(&all, Duration::from_secs(30));
    assert_eq!(call(&east, "GET", "/v1/docs/from-south", None, None).0, 200);
}

/// Waits until `doc` has reached the node at `url` (bounded).
fn wait_for_doc(url: &str, doc: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(url, "GET", &format!("/v1/docs/{doc}"), None, None).0 != 200 {
        assert!(Instant::now() < deadline, "{doc} never reached {url}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn damaged_backups_and_bad_requests_are_refused() {
    let mut cluster = TestCluster::new("backup-bad", &["us-east"]);
    cluster.start(0, &[], &[]);
    let url = cluster.url(0);
    for i in 0..5 {
        assert!(put(&url, &format!("d/{i}"), &json!({"i": i, "pad": "x".repeat(200)})));
    }
    let dir = cluster.dir.path().to_path_buf();
    let good = dir.join("good.backup");

    // Without a token, or with a wrong one: a readable refusal, nothing written.
    let (code, stderr) = meridian(&["backup", "--url", &url, "--out", &good.display().to_string()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin token"), "{stderr}");
    let (code, stderr) = meridian(&["backup", "--url", &url, "--token", "wrong", "--out", &good.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
    assert!(!good.exists());

    let (code, stderr) =
        meridian(&["backup", "--url", &url, "--token", ADMIN_TOKEN, "--out", &good.display().to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    let bytes = std::fs::read(&good).unwrap();

    let restore = |name: &str, content: &[u8]| -> (Option<i32>, String, bool) {
        let file = dir.join(format!("{name}.backup"));
        std::fs::write(&file, content).unwrap();
        let target = dir.join(format!("restored-{name}"));
        let (code, stderr) =
            meridian(&["restore", "--from", &file.display().to_string(), "--data-dir", &target.display().to_string()]);
        (code, stderr, target.exists())
    };

    // Truncated: cut in the middle of a document, and just before the trailer.
    for (name, cut) in [("half", bytes.len() / 2), ("no-trailer", bytes.len() - 21)] {
        let (code, stderr, created) = restore(name, &bytes[..cut]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stderr.contains("is truncated"), "{name}: {stderr}");
        assert!(!created, "{name}: a refused restore leaves no data directory");
    }
    // A flipped byte inside a document: damaged, and which frame is named.
    let mut flipped = bytes.clone();
    // Five bytes before the 21-byte trailer: inside the last document's automerge save.
    let inside = flipped.len() - 26;
    flipped[inside] ^= 0x55;
    let (code, stderr, created) = restore("flipped", &flipped);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is damaged") && stderr.contains("fails its checksum"), "{stderr}");
    assert!(!created);
    // Not a backup at all.
    let (code, stderr, _) = restore("text", b"{\"just\": \"json\"}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not a Meridian backup"), "{stderr}");
    // A future format version.
    let mut future = bytes.clone();
    future[8] = 9;
    let (code, stderr, _) = restore("future", &future);
    assert!(code == Some(1) && stderr.contains("format version 9"), "{stderr}");

    // The good file restores, and the restored store opens as a node.
    let (code, stderr, created) = restore("good", &bytes);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(created);
    let restored = meridian_tests::NodeProcess::start(&dir.join("restored-good"), &["--region", "us-east"]);
    for i in 0..5 {
        let (status, value) = call(&restored.url, "GET", &format!("/v1/docs/d/{i}"), None, None);
        assert_eq!((status, value["i"].as_i64()), (200, Some(i)));
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".restoring-"))
        .collect();
    assert!(leftovers.is_empty(), "staging directories left behind: {leftovers:?}");
}

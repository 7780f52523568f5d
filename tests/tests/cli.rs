//! The terminal client as a person uses it: the real `meridian` binary
//! running `put`, `get`, `patch`, `delete`, `ls`, `status` and `watch`
//! against a real node on loopback, and its errors: readable, on stderr,
//! with distinct exit codes (3 not found, 4 unreachable, 1 other).

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_tests::{meridian_binary, NodeProcess, TempDir};

/// What one command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn spawn(url: &str, args: &[&str]) -> Child {
    Command::new(meridian_binary())
        .args(args)
        .env("MERIDIAN_URL", url)
        .env_remove("MERIDIAN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian")
}

/// Waits for a child with a deadline; a child still running then is killed (and the test fails).
fn finish(mut child: Child, limit: Duration) -> Run {
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run { code: status.and_then(|s| s.code()), stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    assert!(status.is_some(), "meridian did not finish within {limit:?}: {run:?}");
    run
}

fn meridian(url: &str, args: &[&str]) -> Run {
    meridian_stdin(url, args, "")
}

fn meridian_stdin(url: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = spawn(url, args);
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    finish(child, Duration::from_secs(30))
}

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "command failed: {run:?}");
}

#[test]
fn documents_from_the_terminal() {
    let dir = TempDir::new("cli-docs");
    let node = NodeProcess::start(dir.path(), &[]);
    let url = node.url.as_str();

    // put from an argument: created, the write's JSON on stdout, a sentence on stderr.
    let run = meridian(url, &["put", "users/1", r#"{"name":"ada","tags":["math"]}"#]);
    ok(&run);
    assert!(run.stderr.contains("users/1: created"), "{run:?}");
    let ack: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("write JSON on stdout");
    let token = ack["token"].as_str().expect("token").to_string();

    // put from stdin.
    let run = meridian_stdin(url, &["put", "users/2", "-"], r#"{"name":"grace"}"#);
    ok(&run);
    ok(&meridian(url, &["put", "orders/1", r#"{"total":3}"#]));

    // get, read-your-writes with --after: the document on stdout, freshness on stderr.
    let run = meridian(url, &["get", "users/1", "--after", &token]);
    ok(&run);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("document JSON");
    assert_eq!(doc, serde_json::json!({"name": "ada", "tags": ["math"]}));
    assert!(run.stderr.starts_with("freshness: "), "{run:?}");
    assert!(run.stderr.contains("token ") && run.stderr.contains("etag "), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one freshness line: {run:?}");

    // --max-staleness-ms and --at reach the node (a lone node is never stale).
    ok(&meridian(url, &["get", "users/1", "--max-staleness-ms", "1000", "--quiet"]));
    let run = meridian(url, &["get", "users/1", "--at", "2000-01-01T00:00:00Z", "--compact"]);
    assert_eq!(run.code, Some(3), "nothing existed in 2000: {run:?}");

    // patch: merge (default) and JSON Patch with the counter op.
    ok(&meridian(url, &["patch", "users/1", r#"{"city":"london","tags":null}"#]));
    ok(&meridian(url, &["patch", "users/1", "--json-patch", r#"[{"op":"increment","path":"/views","value":2}]"#]));
    let run = meridian(url, &["get", "users/1", "--compact", "-q"]);
    ok(&run);
    assert_eq!(run.stdout.trim(), r#"{"city":"london","name":"ada","views":2}"#);
    assert!(run.stderr.is_empty(), "--quiet: {run:?}");

    // ls: prefix, one page at a time, and --all.
    let run = meridian(url, &["ls", "--prefix", "users/", "--limit", "1"]);
    ok(&run);
    assert_eq!(run.stdout, "users/1\n");
    assert!(run.stderr.contains("--cursor"), "the next page is offered: {run:?}");
    let cursor = run.stderr.split("--cursor ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let run = meridian(url, &["ls", "--prefix", "users/", "--limit", "1", "--cursor", &cursor]);
    ok(&run);
    assert_eq!(run.stdout, "users/2\n");
    let run = meridian(url, &["ls", "--limit", "1", "--all"]);
    ok(&run);
    assert_eq!(run.stdout, "orders/1\nusers/1\nusers/2\n");

    // delete, then get: not found, exit 3, a readable problem.
    let run = meridian(url, &["delete", "users/2"]);
    ok(&run);
    assert!(run.stderr.contains("users/2: deleted"), "{run:?}");
    let run = meridian(url, &["get", "users/2"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("meridian: 404 Not Found: document \"users/2\" does not exist"), "{run:?}");
    assert!(run.stdout.is_empty());
    assert_eq!(meridian(url, &["delete", "users/2"]).code, Some(3));

    // Refusals from the node: status and problem detail, exit 1.
    let run = meridian(url, &["patch", "users/1", "--json-patch", r#"[{"op":"test","path":"/name","value":"bob"}]"#]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("409 Conflict: JSON Patch operation 0"), "{run:?}");
    let run = meridian(url, &["put", "users/3", "[1,2]"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("422") && run.stderr.contains("must be a JSON object"), "{run:?}");
    let run = meridian(url, &["get", "users/1", "--after", "not-a-token"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("400 Bad Request: after:"), "{run:?}");

    // Mistakes caught before sending: exit 2 with what to fix.
    let run = meridian(url, &["put", "users/3", "{not json"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("the argument is not valid JSON"), "{run:?}");
    let run = meridian(url, &["get", "bad id"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("document id \"bad id\""), "{run:?}");

    // A node that is not there: exit 4, and the URL is named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let run = meridian(&format!("http://{closed}"), &["get", "users/1"]);
    assert_eq!(run.code, Some(4), "{run:?}");
    assert!(run.stderr.contains(&format!("cannot reach http://{closed}")), "{run:?}");
}

#[test]
fn status_and_watch() {
    let dir = TempDir::new("cli-watch");
    let node = NodeProcess::start(dir.path(), &[]);
    let url = node.url.as_str();

    let run = meridian(url, &["status"]);
    ok(&run);
    assert!(run.stdout.contains("REGION") && run.stdout.contains("STALENESS"), "{run:?}");
    assert!(run.stdout.contains("local (this)") && run.stdout.contains("self"), "{run:?}");
    assert!(run.stdout.contains("replication is off"), "{run:?}");
    let run = meridian(url, &["status", "--json"]);
    ok(&run);
    let cluster: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(cluster["node"]["region"], "local");

    // watch follows the document's events; write until it has seen two (it
    // may subscribe after the first write), bounded in time.
    let child = spawn(url, &["watch", "counter", "--count", "2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut writes = 0;
    let mut child = Some(child);
    let run = loop {
        ok(&meridian(url, &["patch", "counter", "--json-patch", r#"[{"op":"increment","path":"/n","value":1}]"#]));
        writes += 1;
        if let Some(status) = child.as_mut().unwrap().try_wait().unwrap() {
            assert!(status.success(), "watch failed");
            break finish(child.take().unwrap(), Duration::from_secs(5));
        }
        assert!(Instant::now() < deadline, "watch saw no events after {writes} writes");
        std::thread::sleep(Duration::from_millis(100));
    };
    ok(&run);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines[0].contains("counter changed by local (seq "), "{run:?}");

    // A watch of an id that cannot exist is refused before connecting.
    let run = meridian(url, &["watch", "no spaces"]);
    assert_eq!(run.code, Some(2), "{run:?}");
}

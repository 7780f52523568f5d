//! `meridian demo` as a person uses it: start it, read its table, write in
//! one region and read in another, then from "another terminal" run status,
//! partition, heal, kill and restart; Ctrl-C (SIGINT) stops every region and
//! leaves nothing running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_tests::{meridian_binary, TempDir};
use serde_json::{json, Value};

fn demo(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(meridian_binary()).arg("demo").args(args).arg("--dir").arg(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn free_tcp_base() -> u16 {
    // Four consecutive free ports for HTTP, and their +100 for QUIC, and base-1 for control.
    loop {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !(2000..60000).contains(&base) {
            continue;
        }
        let all_free = (base - 1..base + 2).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            && (base + 100..base + 102).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_and_is_driven_from_a_second_terminal() {
    let dir = TempDir::new("demo");
    let base = free_tcp_base();
    let mut supervisor = Command::new(meridian_binary())
        .args(["demo", "--regions", "east,west", "--base-port", &base.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = supervisor.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = line.starts_with("Ctrl-C stops every region");
            banner.push(line);
            if done {
                break;
            }
        }
    }
    let banner = banner.join("\n");
    assert!(banner.contains("Ctrl-C stops every region"), "no banner:\n{banner}");
    for needle in ["east", "west", "admin token:", "curl -s -X PUT", "?after=", "one-way delays"] {
        assert!(banner.contains(needle), "banner lacks {needle:?}:\n{banner}");
    }
    let (east, west) = (format!("http://127.0.0.1:{base}"), format!("http://127.0.0.1:{}", base + 1));
    let client = reqwest::Client::new();

    // Write in one region; read there with the token in the other.
    let written: Value = client
        .put(format!("{east}/v1/docs/hello"))
        .json(&json!({"from": "east"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = written["token"].as_str().unwrap();
    let read = client.get(format!("{west}/v1/docs/hello?after={token}")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.headers().get("meridian-staleness-ms").is_some());
    assert_eq!(read.json::<Value>().await.unwrap(), json!({"from": "east"}));

    let path = dir.path().to_path_buf();
    let (ok, status) = demo(&path, &["status"]);
    assert!(ok && status.contains("east") && status.contains("up"), "{status}");

    // Partition west, write on both sides, heal: they converge.
    let (ok, out) = demo(&path, &["partition", "west"]);
    assert!(ok, "{out}");
    for (url, value) in [(&east, 1), (&west, 10)] {
        let reply = client
            .patch(format!("{url}/v1/docs/count"))
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op":"increment","path":"/n","value":value}]).to_string())
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, status) = demo(&path, &["status"]);
    assert!(status.contains("false"), "a partitioned demo is not converged:\n{status}");
    let (ok, out) = demo(&path, &["heal"]);
    assert!(ok, "{out}");
    let converged = async {
        for _ in 0..100 {
            let (_, status) = demo(&path, &["status"]);
            if status.lines().skip(1).all(|l| l.trim_end().ends_with("true")) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(converged.await, "the demo did not converge after heal");

    // Kill and restart a region; the restarted region catches up.
    let (ok, out) = demo(&path, &["kill", "west"]);
    assert!(ok, "{out}");
    let (_, status) = demo(&path, &["status"]);
    assert!(status.lines().any(|l| l.starts_with("west") && l.contains("down")), "{status}");
    let (ok, out) = demo(&path, &["restart", "west"]);
    assert!(ok, "{out}");
    let read: Value =
        client.get(format!("{west}/v1/docs/count?after={token}")).send().await.unwrap().json().await.unwrap();
    assert!(read["n"].as_i64().is_some());
    let (ok, out) = demo(&path, &["kill", "nowhere"]);
    assert!(!ok && out.contains("no region \"nowhere\""), "{out}");

    // Ctrl-C: every region stops, and nothing answers any more.
    let _ = Command::new("kill").arg("-INT").arg(supervisor.id().to_string()).status();
    let stopped = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        matches!(supervisor.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the demo did not stop on SIGINT");
    for url in [&east, &west] {
        assert!(client.get(format!("{url}/healthz")).send().await.is_err(), "{url} still answers after Ctrl-C");
    }
    let (ok, out) = demo(&path, &["status"]);
    assert!(!ok && out.contains("no running demo"), "{out}");
}

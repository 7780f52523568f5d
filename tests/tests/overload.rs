//! Overload protection (issue #9), mostly against real `meridian` processes
//! on loopback: load shedding at the concurrency limit with probes still
//! answered, request timeouts, event streams exempt from them but limited
//! in number, per-client rate limits, slow clients cut off, connection
//! limits and body limits. Every loop is bounded in count and time.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use meridian_tests::{InProcessNode, NodeProcess, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &TempDir, args: &[&str]) -> NodeProcess {
    let data = dir.path().join("data");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        NodeProcess::start(&data, &args)
    })
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn address(node: &NodeProcess) -> String {
    node.url.trim_start_matches("http://").to_string()
}

/// Reads from `stream` until it closes, `done` says the text is complete, or `limit` passes.
async fn read_until(stream: &mut TcpStream, limit: Duration, done: impl Fn(&str) -> bool) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&text).into_owned(), true),
            Ok(Ok(n)) => {
                text.extend_from_slice(&buf[..n]);
                if done(&String::from_utf8_lossy(&text)) {
                    return (String::from_utf8_lossy(&text).into_owned(), false);
                }
            }
        }
    }
}

/// A token naming a change this node will never have, so a read after it waits the full `wait_ms`.
fn unreachable_token() -> String {
    meridian_crdt::Token::of_change(meridian_crdt::NodeId(0x5eed_5eed_5eed_5eed), 1_000_000).to_string()
}

#[tokio::test]
async fn a_flood_beyond_the_concurrency_limit_is_shed_while_probes_answer() {
    let dir = TempDir::new("overload-flood");
    let node = start(&dir, &["--concurrency-max", "4", "--rate-limit-per-second", "0"]).await;
    let client = client();
    let slow = format!("{}/v1/docs/flood?after={}&wait_ms=2000", node.url, unreachable_token());
    let started = Instant::now();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let (client, slow) = (client.clone(), slow.clone());
            tokio::spawn(async move {
                let reply = client.get(&slow).send().await.expect("flood request");
                let retry_after = reply.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let status = reply.status().as_u16();
                let body: serde_json::Value = reply.json().await.unwrap_or_default();
                (status, retry_after, body)
            })
        })
        .collect();
    // While the slots are held, probes still answer at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let asked = Instant::now();
        let reply = client.get(format!("{}/healthz", node.url)).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        assert!(asked.elapsed() < Duration::from_secs(1), "healthz took {:?} during the flood", asked.elapsed());
    }
    let mut shed = 0;
    let mut waited = 0;
    for task in flood {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            503 => {
                shed += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["type"], "urn:meridian:problem:overloaded", "{body}");
            }
            // The requests that got a slot waited their full wait_ms, then said they were behind.
            504 => waited += 1,
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(shed >= 30, "only {shed} of 40 were shed ({waited} waited)");
    assert!((1..=4 * 3).contains(&waited), "{waited} requests got a slot with 4 slots");
    assert!(started.elapsed() < Duration::from_secs(15), "the flood took {:?}", started.elapsed());
    // And the node is fine afterwards.
    let reply = client.get(format!("{}/v1/docs", node.url)).send().await.unwrap();
    assert_eq!(reply.status(), 200);
}

#[tokio::test]
async fn a_stalled_request_gets_503_after_the_timeout_but_event_streams_live_on() {
    let dir = TempDir::new("overload-timeout");
    let node = start(&dir, &["--request-timeout-ms", "300", "--streams-max", "1"]).await;
    let client = client();

    // A body that never finishes: the handler waits for it until the timeout.
    let mut stream = TcpStream::connect(address(&node)).await.unwrap();
    let head = "PUT /v1/docs/stalled HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let (text, _) = read_until(&mut stream, Duration::from_secs(5), |t| t.contains("}")).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    assert!(text.contains("urn:meridian:problem:timeout"), "{text}");
    assert!(sent.elapsed() < Duration::from_secs(3), "the timeout answered after {:?}", sent.elapsed());
    let reply = client.get(format!("{}/v1/docs/stalled", node.url)).send().await.unwrap();
    assert_eq!(reply.status(), 404, "the timed-out write changed something");

    // An event stream outlives the request timeout and still carries changes.
    let mut events = client.get(format!("{}/v1/events", node.url)).send().await.unwrap();
    assert_eq!(events.status(), 200);
    // A second stream is over --streams-max 1.
    let second = client.get(format!("{}/v1/events", node.url)).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let write = client
        .put(format!("{}/v1/docs/after-timeout", node.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 201);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = String::new();
    while !seen.contains("after-timeout") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the stream ended or stalled: {other:?}; got {seen}"),
        }
    }
    assert!(seen.contains("event: change") && seen.contains("after-timeout"), "{seen}");
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let dir = TempDir::new("overload-rate");
    let node = start(&dir, &["--rate-limit-per-second", "2", "--rate-limit-burst", "3"]).await;
    let client = client();
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..10 {
        let reply = client.get(format!("{}/v1/docs", node.url)).send().await.unwrap();
        statuses.push(reply.status().as_u16());
        if reply.status() == 429 && refusal.is_none() {
            let retry_after: u64 = reply.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            let body: serde_json::Value = reply.json().await.unwrap();
            refusal = Some((retry_after, body));
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses.iter().filter(|&&s| s == 429).count() >= 5, "{statuses:?}");
    let (retry_after, body) = refusal.expect("a 429");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(body["type"], "urn:meridian:problem:rate-limited");
    // Probes are never rate limited.
    assert_eq!(client.get(format!("{}/healthz", node.url)).send().await.unwrap().status(), 200);
    // The bucket refills at the rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.get(format!("{}/v1/docs", node.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn rate_limits_are_per_token() {
    let dir = TempDir::new("overload-rate-token");
    let (a, b) = ("token-a-0123456789abcdef", "token-b-0123456789abcdef");
    let node = InProcessNode::open_with(dir.path(), |config| {
        config.tokens = meridian_web::auth::Tokens::parse(&format!("{a} read\n{b} read\n"), "test").unwrap();
        config.limits.rate_limit_per_second = 1;
        config.limits.rate_limit_burst = 2;
    });
    let (auth_a, auth_b) = (format!("Bearer {a}"), format!("Bearer {b}"));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(node.request("GET", "/v1/docs", &[("authorization", &auth_a)], "").await.status);
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    let reply = node.request("GET", "/v1/docs", &[("authorization", &auth_b)], "").await;
    assert_eq!(reply.status, StatusCode::OK, "token b is limited by token a's use");
    node.shutdown();
}

#[tokio::test]
async fn a_slow_client_is_disconnected_after_the_header_read_timeout() {
    let dir = TempDir::new("overload-slow");
    let node = start(&dir, &["--header-read-timeout-ms", "500"]).await;
    // Half a request head, then nothing.
    let mut stream = TcpStream::connect(address(&node)).await.unwrap();
    stream.write_all(b"GET /v1/docs HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let sent = Instant::now();
    let (text, closed) = read_until(&mut stream, Duration::from_secs(5), |_| false).await;
    assert!(closed, "still open after 5 s; got {text:?}");
    assert!(!text.contains("200 OK"), "{text}");
    assert!(sent.elapsed() >= Duration::from_millis(400), "closed too early: {:?}", sent.elapsed());
    // An idle keep-alive connection is closed the same way.
    let mut stream = TcpStream::connect(address(&node)).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (text, closed) = read_until(&mut stream, Duration::from_secs(5), |_| false).await;
    assert!(text.starts_with("HTTP/1.1 200") && closed, "{text:?} closed={closed}");
    // Other clients were served all along.
    assert_eq!(client().get(format!("{}/healthz", node.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_are_closed() {
    let dir = TempDir::new("overload-connections");
    let node = start(&dir, &["--connections-max", "2"]).await;
    // Two keep-alive connections, each answered once so the server surely holds them.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address(&node)).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let (text, _) = read_until(&mut stream, Duration::from_secs(5), |t| t.contains("\"ok\"")).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        held.push(stream);
    }
    let mut third = TcpStream::connect(address(&node)).await.unwrap();
    let (text, closed) = read_until(&mut third, Duration::from_secs(5), |_| false).await;
    assert!(text.starts_with("HTTP/1.1 503") && closed, "{text:?} closed={closed}");
    assert!(text.contains("retry-after: 1") && text.contains("urn:meridian:problem:overloaded"), "{text}");
    drop(held);
    // The slots come back once those connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client().get(format!("{}/healthz", node.url)).send().await {
            Ok(reply) if reply.status() == 200 => break,
            other if Instant::now() > deadline => panic!("no slot came back: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let dir = TempDir::new("overload-body");
    let node = start(&dir, &["--body-limit-bytes", "1024"]).await;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    let reply = client()
        .put(format!("{}/v1/docs/big", node.url))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 413);
    let problem: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(problem["type"], "urn:meridian:problem:body-too-large");
    // Without a Content-Length (in-process: the body is read and cut at the limit).
    let dir = TempDir::new("overload-body-inprocess");
    let node = InProcessNode::open_with(dir.path(), |config| config.body_limit_bytes = 1024);
    let reply = node.request("PUT", "/v1/docs/big", &[("content-type", "application/json")], body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.text);
    assert_eq!(reply.json["type"], "urn:meridian:problem:body-too-large");
    node.shutdown();
}

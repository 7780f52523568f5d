//! Staleness, causal tokens and consistent snapshots between real processes:
//! staleness grows at wall-clock rate during a partition, is never below the
//! true staleness, and drops after heal; a read carrying a write's token at
//! another region, with link delay in force, never misses the write; bounded
//! staleness refuses when the bound is not met and succeeds when it is; `?at`
//! reads at two regions are identical.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_tests::{TestCluster, ADMIN_TOKEN};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn fault(client: &reqwest::Client, url: &str, body: Value) {
    let reply =
        client.post(format!("{url}/v1/admin/faults")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
    assert!(reply.status().is_success(), "{}", reply.text().await.unwrap());
}

async fn heal(client: &reqwest::Client, url: &str) {
    let reply = client.delete(format!("{url}/v1/admin/faults")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert!(reply.status().is_success());
}

async fn put(client: &reqwest::Client, url: &str, doc: &str, body: Value) -> Value {
    let reply = client.put(format!("{url}/v1/docs/{doc}")).json(&body).send().await.unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    reply.json().await.unwrap()
}

/// Reads a document and returns (status, staleness header in ms, body text).
async fn read(
    client: &reqwest::Client,
    url: &str,
    path: &str,
) -> (u16, Option<u64>, String, reqwest::header::HeaderMap) {
    let reply = client.get(format!("{url}{path}")).send().await.unwrap();
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    let staleness = headers.get("meridian-staleness-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (status, staleness, reply.text().await.unwrap(), headers)
}

fn hlc_wall_ms(hlc: &str) -> u64 {
    // "2026-11-22T03:20:12.123456789Z_3": parse the RFC 3339 part.
    let time = hlc.rsplit_once('_').map_or(hlc, |(t, _)| t);
    let parsed = humantime_parse(time);
    parsed.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn humantime_parse(text: &str) -> SystemTime {
    meridian_crdt::Hlc::parse(text).map(|h| UNIX_EPOCH + Duration::from_nanos(h.wall_ns())).expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_is_truthful_through_a_partition_and_bounded_reads_obey_it() {
    let mut cluster = TestCluster::new("stale-partition", &["us-east", "eu-west", "ap-south"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    cluster.start(2, &[0], &[]);
    let client = client();
    let (a, c) = (cluster.url(0), cluster.url(2));
    put(&client, &a, "doc", json!({"v": 0})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Healthy: staleness is small, and a generous bound is met.
    let (status, staleness, _, headers) = read(&client, &c, "/v1/docs/doc?max_staleness_ms=2000").await;
    assert_eq!(status, 200);
    assert!(staleness.unwrap() < 1000, "healthy staleness {staleness:?}");
    let per_region = headers.get("meridian-staleness").unwrap().to_str().unwrap().to_string();
    assert!(per_region.contains("us-east=") && per_region.contains("eu-west="), "{per_region}");
    assert!(headers.get("meridian-safe-time").is_some() && headers.get("meridian-token").is_some());

    // Cut ap-south off, then write at us-east: ap-south misses that write.
    for region in ["us-east", "eu-west"] {
        fault(&client, &c, json!({"peer_region": region, "cut": true})).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = put(&client, &a, "doc", json!({"v": 1})).await;
    let write_ms = hlc_wall_ms(written["hlc"].as_str().unwrap());

    let mut samples = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = now_ms();
        let (status, staleness, body, _) = read(&client, &c, "/v1/docs/doc").await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"v": 0}),
            "the write cannot have crossed the cut"
        );
        let staleness = staleness.unwrap();
        // The oldest write missing here was made at write_ms; the read began at `before`.
        let true_staleness = before.saturating_sub(write_ms);
        assert!(
            staleness + 1 >= true_staleness,
            "reported {staleness} ms is below the true staleness {true_staleness} ms"
        );
        samples.push((before, staleness));
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let wall = last.0 - first.0;
    let grew = last.1 - first.1;
    assert!(grew + 150 >= wall && grew <= wall + 150, "staleness grew {grew} ms over {wall} ms of wall time");

    // A tight bound is refused with Retry-After and per-region staleness; the other side still serves it.
    let reply = client.get(format!("{c}/v1/docs/doc?max_staleness_ms=500")).send().await.unwrap();
    assert_eq!(reply.status(), 503);
    assert!(reply.headers().get("retry-after").is_some());
    let problem: Value = reply.json().await.unwrap();
    assert!(problem["staleness_by_region"]["us-east"].as_u64().unwrap() > 500, "{problem:#}");
    // us-east is stale too, but only towards the region it lost: per-region staleness says which.
    let (status, _, _, headers) = read(&client, &a, "/v1/docs/doc").await;
    assert_eq!(status, 200);
    let per_region: Vec<(String, u64)> = headers["meridian-staleness"]
        .to_str()
        .unwrap()
        .split(", ")
        .map(|pair| {
            let (region, ms) = pair.split_once('=').unwrap();
            (region.to_string(), ms.parse().unwrap())
        })
        .collect();
    let towards = |region: &str| per_region.iter().find(|(r, _)| r == region).unwrap().1;
    assert!(towards("eu-west") < 500, "{per_region:?}");
    assert!(towards("ap-south") > 500, "{per_region:?}");

    // Heal: staleness drops back, the bound is met again, the write arrives.
    heal(&client, &c).await;
    let mut healed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, staleness, body, _) = read(&client, &c, "/v1/docs/doc?max_staleness_ms=500").await;
        if status == 200 {
            assert!(staleness.unwrap() <= 500);
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"v": 1}));
            healed = true;
            break;
        }
    }
    assert!(healed, "staleness did not drop back after heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_at_another_region_never_misses_the_write() {
    let mut cluster = TestCluster::new("stale-token", &["us-east", "eu-west"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    let client = client();
    let (a, b) = (cluster.url(0), cluster.url(1));
    // 80 ms one way, in both directions, with jitter.
    fault(&client, &a, json!({"peer_region": "eu-west", "delay_ms": 80, "jitter_ms": 10})).await;
    fault(&client, &b, json!({"peer_region": "us-east", "delay_ms": 80, "jitter_ms": 10})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waited_for_at_least_one = false;
    for i in 0..15 {
        let written = put(&client, &a, "ryw", json!({"i": i})).await;
        let token = written["token"].as_str().unwrap();
        // A plain read right away may well be stale...
        let (_, _, plain, _) = read(&client, &b, "/v1/docs/ryw").await;
        if serde_json::from_str::<Value>(&plain).ok() != Some(json!({"i": i})) {
            waited_for_at_least_one = true;
        }
        // ...but a read with the token, by query or by header, never is.
        let (status, _, body, headers) = read(&client, &b, &format!("/v1/docs/ryw?after={token}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"i": i}), "read-your-writes violated");
        // Monotonic reads: the token of that read, carried back to us-east, is satisfied there too.
        let read_token = headers.get("meridian-token").unwrap().to_str().unwrap().to_string();
        let reply = client.get(format!("{a}/v1/docs/ryw")).header("meridian-after", &read_token).send().await.unwrap();
        assert_eq!(reply.status(), 200);
    }
    assert!(waited_for_at_least_one, "with 80 ms of delay some plain read should have been stale");
    // A token this region cannot satisfy in time: 504 naming the region.
    fault(&client, &b, json!({"peer_region": "us-east", "cut": true})).await;
    fault(&client, &a, json!({"peer_region": "eu-west", "cut": true})).await;
    let written = put(&client, &a, "ryw", json!({"i": "cut"})).await;
    let reply = client
        .get(format!("{b}/v1/docs/ryw?after={}&wait_ms=300", written["token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 504);
    let problem: Value = reply.json().await.unwrap();
    assert_eq!(problem["behind"][0]["region"], "us-east", "{problem:#}");
    // Malformed tokens are a client error.
    let (status, _, _, _) = read(&client, &b, "/v1/docs/ryw?after=not-a-token!").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_reads_at_two_regions_are_identical() {
    let mut cluster = TestCluster::new("stale-at", &["us-east", "eu-west"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    let client = client();
    let (a, b) = (cluster.url(0), cluster.url(1));
    fault(&client, &a, json!({"peer_region": "eu-west", "delay_ms": 40})).await;
    let patch = |url: String, value: i64| {
        let client = client.clone();
        async move {
            let reply = client
                .patch(format!("{url}/v1/docs/snap"))
                .header("content-type", "application/json-patch+json")
                .body(
                    json!([{"op":"increment","path":"/n","value":value},{"op":"add","path":"/log/-","value":value}])
                        .to_string(),
                )
                .send()
                .await
                .unwrap();
            assert!(reply.status().is_success());
        }
    };
    put(&client, &a, "snap", json!({"n": 0, "log": []})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cuts = Vec::new();
    for round in 0..6 {
        let (x, y) = tokio::join!(patch(a.clone(), 1), patch(b.clone(), 100));
        let _ = (x, y);
        if round % 2 == 1 {
            let now =
                meridian_crdt::Hlc::new(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64, 0);
            cuts.push(now.to_string());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for at in &cuts {
        let path = format!("/v1/docs/snap?at={at}&wait_ms=5000");
        let (status_a, _, body_a, headers_a) = read(&client, &a, &path).await;
        let (status_b, _, body_b, headers_b) = read(&client, &b, &path).await;
        assert_eq!((status_a, status_b), (200, 200), "{body_a} {body_b}");
        assert_eq!(body_a, body_b, "?at={at} differs between regions");
        assert_eq!(headers_a.get("etag"), headers_b.get("etag"));
    }
    // A time far beyond safe time waits, then answers 504.
    let future = meridian_crdt::Hlc::new((now_ms() + 60_000) * 1_000_000, 0);
    let (status, _, body, _) = read(&client, &a, &format!("/v1/docs/snap?at={future}&wait_ms=200")).await;
    assert_eq!(status, 504, "{body}");
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_history_and_receipts_tell_the_same_story_everywhere() {
    let mut cluster = TestCluster::new("stale-conflicts", &["us-east", "eu-west"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    let client = client();
    let (a, b) = (cluster.url(0), cluster.url(1));
    put(&client, &a, "profile", json!({"name": "ada", "city": "london"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault(&client, &a, json!({"peer_region": "eu-west", "cut": true})).await;
    fault(&client, &b, json!({"peer_region": "us-east", "cut": true})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from_a = put(&client, &a, "profile", json!({"name": "ada", "city": "paris"})).await;
    put(&client, &b, "profile", json!({"name": "ada", "city": "rome"})).await;
    heal(&client, &a).await;
    heal(&client, &b).await;
    let token = from_a["token"].as_str().unwrap();
    let (status, _, _, _) = read(&client, &b, &format!("/v1/docs/profile?after={token}&wait_ms=10000")).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let conflicts_a: Value =
        client.get(format!("{a}/v1/docs/profile/conflicts")).send().await.unwrap().json().await.unwrap();
    let conflicts_b: Value =
        client.get(format!("{b}/v1/docs/profile/conflicts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(conflicts_a, conflicts_b, "both regions must report the same conflicts");
    let city = &conflicts_a["conflicts"][0];
    assert_eq!(city["path"], "/city", "{conflicts_a:#}");
    let values = city["values"].as_array().unwrap();
    assert_eq!(values.len(), 2);
    let regions: BTreeSet<&str> = values.iter().map(|v| v["region"].as_str().unwrap()).collect();
    assert_eq!(regions, BTreeSet::from(["us-east", "eu-west"]));
    assert_eq!(values.iter().filter(|v| v["wins"] == true).count(), 1);
    let winner = values.iter().find(|v| v["wins"] == true).unwrap()["value"].clone();
    let doc: Value = client.get(format!("{b}/v1/docs/profile")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["city"], winner, "reads return the winning value");

    let history: Value = client.get(format!("{a}/v1/docs/profile/history")).send().await.unwrap().json().await.unwrap();
    let writes: Vec<&Value> = history["changes"].as_array().unwrap().iter().filter(|c| c["kind"] == "write").collect();
    assert_eq!(writes.len(), 3, "{history:#}");
    assert!(writes.iter().all(|c| c["hlc"].is_string() && c["seq"].is_u64() && c["bytes"].as_u64().unwrap() > 0));
    let hlcs: Vec<&str> = writes.iter().map(|c| c["hlc"].as_str().unwrap()).collect();
    assert!(hlcs
        .windows(2)
        .all(|w| meridian_crdt::Hlc::parse(w[0]).unwrap() <= meridian_crdt::Hlc::parse(w[1]).unwrap()));

    let receipt: Value = client.get(format!("{a}/v1/writes/{token}")).send().await.unwrap().json().await.unwrap();
    let rows = receipt["writes"][0]["regions"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{receipt:#}");
    for row in rows {
        assert_eq!(row["applied"], true, "{receipt:#}");
        assert!(row["learned_at"].is_string(), "{receipt:#}");
    }
    let reply = client.get(format!("{a}/v1/writes/garbage!")).send().await.unwrap();
    assert_eq!(reply.status(), 400);
    let reply = client.put(format!("{a}/v1/docs/x/history")).json(&json!({})).send().await.unwrap();
    assert_eq!(reply.status(), 405, "/history is a read-only view, so ids ending in it cannot be written");
    assert_eq!(reply.headers()["allow"], "GET, HEAD");
}

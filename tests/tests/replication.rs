//! Replication between real `meridian` processes over loopback QUIC with
//! mutual TLS: convergence under concurrent writes, a cut and heal through
//! the admin API, `kill -9` under load, a line topology, a fourth node that
//! joins through one seed after the logs were truncated (state transfer),
//! and hostile peers (malformed, truncated and oversized frames, a
//! certificate from another CA, a change automerge cannot apply) refused,
//! counted, and survived.

use std::time::{Duration, Instant};

use meridian_tests::{TestCluster, ADMIN_TOKEN};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn cluster_status(client: &reqwest::Client, url: &str) -> Value {
    client.get(format!("{url}/v1/cluster")).send().await.unwrap().json().await.unwrap()
}

async fn increment(client: &reqwest::Client, url: &str, doc: &str, by: i64) -> bool {
    client
        .patch(format!("{url}/v1/docs/{doc}"))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op":"increment","path":"/n","value":by}]).to_string())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn read_n(client: &reqwest::Client, url: &str, doc: &str) -> i64 {
    let reply = client.get(format!("{url}/v1/docs/{doc}")).send().await.unwrap();
    if reply.status() != 200 {
        return 0;
    }
    reply.json::<Value>().await.unwrap()["n"].as_i64().unwrap_or(0)
}

/// Waits until every listed node reports the same version vector and digest.
async fn wait_converged(client: &reqwest::Client, urls: &[String], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for url in urls {
            statuses.push(cluster_status(client, url).await);
        }
        let same = statuses.windows(2).all(|w| {
            w[0]["node"]["digest"] == w[1]["node"]["digest"]
                && w[0]["node"]["version_vector"] == w[1]["node"]["version_vector"]
        });
        if same {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not converged after {limit:?}: {statuses:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every listed node is admitted (takes writes).
async fn wait_admitted(client: &reqwest::Client, urls: &[String], limit: Duration) {
    let start = Instant::now();
    for url in urls {
        while cluster_status(client, url).await["node"]["admitted"] != true {
            assert!(start.elapsed() < limit, "{url} not admitted after {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn admin(client: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
    let mut request = client.request(method, format!("{url}/v1/admin/faults")).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.unwrap();
    assert!(reply.status().is_success(), "admin call failed: {}", reply.status());
    reply.json().await.unwrap()
}

fn urls(cluster: &TestCluster, nodes: &[usize]) -> Vec<String> {
    nodes.iter().map(|&i| cluster.url(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_then_partition_heal_and_kill9() {
    let mut cluster = TestCluster::new("repl-three", &["us-east", "eu-west", "ap-south"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    cluster.start(2, &[1], &[]); // knows only eu-west; learns us-east by gossip
    let client = client();
    let all = urls(&cluster, &[0, 1, 2]);

    // Concurrent writes at every node.
    let mut tasks = Vec::new();
    for (i, url) in all.iter().enumerate() {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..40 {
                assert!(increment(&client, &url, "shared", 1).await);
                let doc = format!("n{i}/{k}");
                let put =
                    client.put(format!("{url}/v1/docs/{doc}")).json(&json!({"i": i, "k": k})).send().await.unwrap();
                assert!(put.status().is_success());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let took = wait_converged(&client, &all, Duration::from_secs(10)).await;
    eprintln!("three nodes converged {took:?} after the last write");
    for url in &all {
        assert_eq!(read_n(&client, url, "shared").await, 120);
    }
    let status = cluster_status(&client, &all[2]).await;
    assert_eq!(status["members"].as_array().unwrap().len(), 2, "ap-south learned both peers: {status:#}");

    // Cut ap-south off (both directions, set on ap-south), write on both sides.
    for region in ["us-east", "eu-west"] {
        admin(&client, reqwest::Method::POST, &all[2], Some(json!({"peer_region": region, "cut": true}))).await;
    }
    for _ in 0..10 {
        assert!(increment(&client, &all[0], "shared", 10).await);
        assert!(increment(&client, &all[2], "shared", 100).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (a, c) = (cluster_status(&client, &all[0]).await, cluster_status(&client, &all[2]).await);
    assert_ne!(a["node"]["digest"], c["node"]["digest"], "a cut node must diverge");
    let states: Vec<&str> = c["members"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert!(states.iter().all(|s| *s != "alive"), "peers of a cut node are not alive: {states:?}");
    let faults = admin(&client, reqwest::Method::GET, &all[2], None).await;
    assert!(faults["packets"]["dropped_cut"].as_u64().unwrap() > 0, "{faults:#}");

    admin(&client, reqwest::Method::DELETE, &all[2], None).await;
    let took = wait_converged(&client, &all, Duration::from_secs(15)).await;
    eprintln!("re-converged {took:?} after heal");
    for url in &all {
        assert_eq!(read_n(&client, url, "shared").await, 120 + 100 + 1000);
    }

    // kill -9 eu-west under load, restart it: nothing acknowledged is lost.
    let load_urls = vec![all[0].clone(), all[2].clone()];
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = 0i64;
            let stop = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < stop {
                for url in &load_urls {
                    if increment(&client, url, "load", 1).await {
                        acked += 1;
                    }
                }
            }
            acked
        })
    };
    let mut eu_acked = 0;
    let stop = Instant::now() + Duration::from_millis(700);
    while Instant::now() < stop {
        if increment(&client, &all[1], "load", 1).await {
            eu_acked += 1;
        }
    }
    cluster.kill9(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = tokio::task::spawn_blocking(move || {
        cluster.restart(1);
        cluster
    })
    .await
    .unwrap();
    let cluster = restarted;
    let acked = load.await.unwrap() + eu_acked;
    let all = urls(&cluster, &[0, 1, 2]);
    wait_converged(&client, &all, Duration::from_secs(15)).await;
    for url in &all {
        let n = read_n(&client, url, "load").await;
        assert!(n >= acked && n <= acked + 1, "load counter {n} at {url}, acknowledged {acked}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_topology_converges() {
    let mut cluster = TestCluster::new("repl-line", &["a", "b", "c"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    cluster.start(2, &[1], &[]);
    let client = client();
    let all = urls(&cluster, &[0, 1, 2]);
    wait_converged(&client, &all, Duration::from_secs(10)).await;
    // c joined through b; it takes writes once a knows it too, which needs the a-c link.
    wait_admitted(&client, &all, Duration::from_secs(10)).await;
    // a and c cannot reach each other in either direction; both reach b.
    admin(&client, reqwest::Method::POST, &all[0], Some(json!({"peer_region": "c", "cut": true}))).await;
    admin(&client, reqwest::Method::POST, &all[2], Some(json!({"peer_region": "a", "cut": true}))).await;
    for _ in 0..10 {
        assert!(increment(&client, &all[0], "line", 1).await);
        assert!(increment(&client, &all[2], "line", 1000).await);
    }
    wait_converged(&client, &all, Duration::from_secs(15)).await;
    for url in &all {
        assert_eq!(read_n(&client, url, "line").await, 10_010);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_through_one_seed_by_state_transfer() {
    let mut cluster = TestCluster::new("repl-join", &["r1", "r2", "r3", "r4"]);
    // Frequent checkpoints, so the log is truncated once every member holds it.
    let fast = ["--checkpoint-interval-ms", "50"];
    cluster.start(0, &[], &fast);
    cluster.start(1, &[0], &fast);
    cluster.start(2, &[0], &fast);
    let client = client();
    let three = urls(&cluster, &[0, 1, 2]);
    for k in 0..30 {
        assert!(increment(&client, &three[k % 3], &format!("doc/{}", k % 5), 1).await);
    }
    let deleted = format!("{}/v1/docs/deleted", three[1]);
    assert!(client.put(&deleted).json(&json!({"x": 1})).send().await.unwrap().status().is_success());
    assert!(client.delete(&deleted).send().await.unwrap().status().is_success());
    let t0 = Instant::now();
    wait_converged(&client, &three, Duration::from_secs(10)).await;
    eprintln!("three converged at {:?}", t0.elapsed());
    // Wait until every log is empty: everything is only in snapshots now.
    let start = Instant::now();
    loop {
        let mut entries = 0;
        for url in &three {
            entries += cluster_status(&client, url).await["node"]["log_entries"].as_u64().unwrap();
        }
        if entries == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "logs were not truncated ({entries} entries left)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.start(3, &[2], &fast);
        cluster
    })
    .await
    .unwrap();
    eprintln!("logs truncated and r4 started at {:?}", t0.elapsed());
    let all = urls(&cluster, &[0, 1, 2, 3]);
    wait_converged(&client, &all, Duration::from_secs(15)).await;
    eprintln!("four converged at {:?}", t0.elapsed());
    for d in 0..5 {
        assert_eq!(read_n(&client, &all[3], &format!("doc/{d}")).await, 6);
    }
    assert_eq!(client.get(format!("{}/v1/docs/deleted", all[3])).send().await.unwrap().status(), 404);
    let sender_transfers: u64 = {
        let status = cluster_status(&client, &all[2]).await;
        status["members"].as_array().unwrap().iter().map(|m| m["state_transfers_sent"].as_u64().unwrap()).sum()
    };
    assert!(sender_transfers >= 1, "the seed should have sent a state transfer");
    // New writes after the transfer still flow to the newcomer.
    assert!(increment(&client, &all[0], "doc/0", 1).await);
    wait_converged(&client, &all, Duration::from_secs(10)).await;
    assert_eq!(read_n(&client, &all[3], "doc/0").await, 7);
    cluster.kill9(3);
}

/// Connects to a node's peer port as a client holding `tls` and writes `bytes` on one stream.
async fn send_raw(tls: &meridian_server::certs::PeerTls, port: u16, bytes: &[u8]) -> Result<(), String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(tls.client.clone());
    let connecting = endpoint
        .connect(format!("127.0.0.1:{port}").parse().unwrap(), meridian_server::certs::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let connection = connecting.await.map_err(|e| e.to_string())?;
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        stream.write_all(bytes).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        // Wait for the node to close the connection on us (or give up quietly).
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    endpoint.close(0u32.into(), b"done");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_counted_and_survived() {
    let mut cluster = TestCluster::new("repl-hostile", &["a", "intruder"]);
    cluster.start(0, &[], &[]);
    let client = client();
    let url = cluster.url(0);
    let port = cluster.nodes[0].peer_port;
    // A peer with a valid certificate of this cluster, speaking garbage.
    let tls = meridian_server::certs::load(&cluster.certs, "intruder").unwrap();
    let malformed = [&[0u8][..], &3u32.to_be_bytes(), &[0xff, 0x00, 0x01]].concat();
    let truncated = [&[0u8][..], &100u32.to_be_bytes(), &[1u8; 10]].concat();
    let oversized = [&[0u8][..], &u32::MAX.to_be_bytes()].concat();
    let bad_stream_kind = [7u8, 0, 0, 0, 0].to_vec();
    for (what, bytes) in [
        ("malformed", malformed),
        ("truncated", truncated),
        ("oversized", oversized),
        ("unknown stream", bad_stream_kind),
    ] {
        let _ = send_raw(&tls, port, &bytes).await;
        eprintln!("sent {what} frame");
    }
    // A peer whose certificate comes from another CA.
    let foreign = cluster.dir.path().join("foreign");
    meridian_server::certs::init(&foreign).unwrap();
    meridian_server::certs::issue(&foreign, "a").unwrap();
    let foreign_tls = meridian_server::certs::load(&foreign, "a").unwrap();
    let refused = send_raw(&foreign_tls, port, &[0u8]).await;
    eprintln!("foreign CA peer: {refused:?}");

    let start = Instant::now();
    loop {
        let counters = cluster_status(&client, &url).await["counters"].clone();
        let frames = counters["frames_refused"].as_u64().unwrap();
        let handshakes = counters["handshakes_refused"].as_u64().unwrap();
        if frames >= 4 && handshakes >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not all refusals counted: {counters:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = cluster_status(&client, &url).await;
    assert!(status["members"].as_array().unwrap().is_empty(), "no hostile peer may become a member: {status:#}");
    let reasons: Vec<String> =
        status["refused"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap().to_string()).collect();
    assert!(reasons.iter().any(|r| r.contains("malformed")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("exceeds the limit")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("ended inside a frame")), "{reasons:?}");
    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("meridian_peer_handshakes_refused_total 1"), "metrics count the foreign CA peer");
    // The node is unharmed.
    let put = client.put(format!("{url}/v1/docs/still-here")).json(&json!({"ok": true})).send().await.unwrap();
    assert_eq!(put.status(), 201);
}

/// A cluster member sends, over real QUIC, the records of the peer_message
/// fuzz reproducer (a change whose actor is new to the document but whose
/// sequence number is above 1, which panics automerge 0.12 inside its apply)
/// and, in the same frame, a good record. The node refuses the one, applies
/// the other, keeps serving, and after `kill -9` recovers from a log that
/// holds the refused record too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_automerge_cannot_apply_is_refused_and_the_node_survives() {
    use meridian_crdt::{DocId, Hlc, NodeId, Replica, WriteOp};
    use meridian_gossip::message::{Hello, MemberInfo};
    use meridian_gossip::{Message, PROTOCOL_VERSION};

    let mut cluster = TestCluster::new("repl-unappliable", &["a", "buggy"]);
    cluster.start(0, &[], &[]);
    let client = client();
    let port = cluster.nodes[0].peer_port;
    let tls = meridian_server::certs::load(&cluster.certs, "buggy").unwrap();

    let reproducer = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/peer_message/automerge_unknown_actor.bin"),
    )
    .unwrap();
    let Message::Changes(mut records) = Message::decode(&reproducer).unwrap() else {
        panic!("the reproducer is a Changes frame")
    };
    let bad_docs: Vec<String> = records.iter().map(|r| r.doc.as_str().to_string()).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut honest = Replica::new(NodeId(0x0fed_cba9_8765_4321));
    let good_doc = DocId::new("still/applied").unwrap();
    let object = json!({"ok": true}).as_object().unwrap().clone();
    let good = honest.local_write(&good_doc, &WriteOp::Put(object), Hlc::new(now, 0), None).unwrap().record;
    records.push(good);

    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster: "meridian".into(),
        me: MemberInfo { node: NodeId(0x0bad_c0de), region: "buggy".into(), addr: "127.0.0.1:9".parse().unwrap() },
    });
    let bytes = [&[0u8][..], &hello.encode_frame(), &Message::Changes(records).encode_frame()].concat();
    send_raw(&tls, port, &bytes).await.unwrap();

    // The good record arrives and applies; the node answers throughout.
    let url = cluster.url(0);
    let start = Instant::now();
    loop {
        let reply = client.get(format!("{url}/v1/docs/still/applied")).send().await;
        if reply.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the good record was not applied: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for doc in &bad_docs {
        let reply = client.get(format!("{url}/v1/docs/{doc}")).send().await.unwrap();
        assert!(reply.status() == 200 || reply.status() == 404, "{doc}: {}", reply.status());
    }
    let put = client.put(format!("{url}/v1/docs/after")).json(&json!({"n": 1})).send().await.unwrap();
    assert_eq!(put.status(), 201, "the node still takes writes");

    // The refused record was committed before it was applied: recovery meets it again.
    cluster.kill9(0);
    cluster.restart(0);
    let url = cluster.url(0);
    for doc in ["still/applied", "after"] {
        let reply = client.get(format!("{url}/v1/docs/{doc}")).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{doc} after the restart");
    }
    cluster.kill9(0);
}

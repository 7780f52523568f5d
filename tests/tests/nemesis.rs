//! Real-process nemesis test (issue #7): three `meridian` processes, concurrent
//! HTTP clients at every node for about a minute, and a nemesis that `kill -9`s
//! and restarts nodes, pauses them (SIGSTOP, then SIGCONT) and cuts links
//! through the admin API. Every operation and its outcome goes into a
//! [`History`]; once the faults stop and the nodes agree on a digest, each
//! node's final state is read back and [`check`] judges the lot with the same
//! checkers the simulation uses.
//!
//! `MERIDIAN_NEMESIS_SECS` sets the length of the client and nemesis phase
//! (default 60), `MERIDIAN_NEMESIS_SEED` the seed of the nemesis schedule and
//! of the clients' choices (printed at start). Real processes are not
//! deterministic, but the schedule of faults is reproducible.
//!
//! A second, quick test runs the same pipeline without faults and then
//! tampers with its history and final states, proving the checkers fail when
//! data is lost, so a green nemesis run means something.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meridian_crdt::Hlc;
use meridian_tests::history::{
    check, FinalState, History, ReadOutcome, ReadRecord, Violation, WriteKind, WriteOutcome, WriteRecord,
};
use meridian_tests::{TestCluster, ADMIN_TOKEN};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Concurrent clients per node.
const CLIENTS_PER_NODE: usize = 3;
/// Documents per namespace (`set/0..`, `ctr/0..`, `list/0..`, `reg/0..`).
const KEYS: u64 = 4;
/// Client-side limit on every workload request; past it the outcome is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// `wait_ms` of `?after` and `?at` reads: short, so a refusal comes well before the client gives up.
const WAIT_MS: u64 = 300;
/// How long the healed cluster gets to agree on one digest.
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
/// Prefix of the reason of a write that never reached a node.
const NOT_SENT: &str = "not sent: ";
const DEFAULT_SEED: u64 = 0x4d45_5249_4449_414e;

/// Tests in this file start three processes each; on a 2-core machine they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// xorshift64*: tiny, seedable, and the same everywhere, so a seed names a schedule.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread small seeds and never start at zero (a fixed point of xorshift).
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
        }
        Err(_) => default,
    }
}

/// The cluster, killed before its temp dir is removed: `TestCluster` drops its
/// directory first, and a live node would keep writing into it.
struct Cluster(TestCluster);

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped process, so a panic mid-pause leaves nothing behind.
        for i in 0..self.0.nodes.len() {
            self.0.kill9(i);
        }
    }
}

/// An acknowledged write as `?after` reads use it.
struct Recent {
    /// Index in `History::writes`.
    index: usize,
    node: usize,
    token: String,
}

/// What the clients and the nemesis share.
struct Shared {
    start: Instant,
    /// Current HTTP URL per node: a restart gets a new ephemeral HTTP port (the peer port stays).
    urls: RwLock<Vec<String>>,
    history: Mutex<History>,
    /// Per document, recent acknowledged writes as (index in `history.writes`, node, token), for `?after`.
    recent: Mutex<BTreeMap<String, Vec<Recent>>>,
    /// Per document, a few HLCs to read `?at`, reused so reads at different nodes pair up.
    ats: Mutex<BTreeMap<String, Vec<Hlc>>>,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn url(&self, node: usize) -> String {
        self.urls.read().unwrap()[node].clone()
    }

    /// Remembers `hlc` as an `at` value for `doc`: fills three slots, then now and then replaces one,
    /// so the values repeat (pairs for the agreement checker) yet follow the run.
    fn offer_at(&self, doc: &str, hlc: Hlc, rng: &mut Rng) {
        let mut ats = self.ats.lock().unwrap();
        let slots = ats.entry(doc.to_string()).or_default();
        if slots.len() < 3 {
            slots.push(hlc);
        } else if rng.below(24) == 0 {
            slots[rng.below(3) as usize] = hlc;
        }
    }
}

/// A reply, or why there was none.
enum Exchange {
    Reply(StatusCode, HeaderMap, String),
    Error(String),
    /// The connection was never made, so the node never saw the request (the node is down).
    NotSent(String),
}

async fn send(request: reqwest::RequestBuilder) -> Exchange {
    // reqwest's own timeout covers connect, headers and body; the outer one is a backstop.
    let attempt = async {
        match request.send().await {
            Ok(response) => {
                let (status, headers) = (response.status(), response.headers().clone());
                match response.text().await {
                    Ok(body) => Exchange::Reply(status, headers, body),
                    Err(err) => Exchange::Error(format!("{status}, then the body failed: {err}")),
                }
            }
            Err(err) if err.is_connect() => Exchange::NotSent(err.to_string()),
            Err(err) => Exchange::Error(err.to_string()),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_millis(500), attempt)
        .await
        .unwrap_or_else(|_| Exchange::Error("client-side timeout".into()))
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

fn write_outcome(sent: Exchange) -> WriteOutcome {
    match sent {
        Exchange::Reply(status, _, body) if status.is_success() => {
            let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            match (reply["token"].as_str(), reply["hlc"].as_str().map(Hlc::parse)) {
                (Some(token), Some(Ok(hlc))) => WriteOutcome::Acked { token: token.to_string(), hlc },
                // A 2xx we cannot read may still have been applied.
                _ => WriteOutcome::Unknown(format!("{status} with an unreadable body: {}", short(&body))),
            }
        }
        Exchange::Reply(status, _, body) if status.is_client_error() => {
            WriteOutcome::Failed(format!("{status}: {}", short(&body)))
        }
        // 5xx: the node may have applied it (e.g. durable, then the reply failed).
        Exchange::Reply(status, _, body) => WriteOutcome::Unknown(format!("{status}: {}", short(&body))),
        Exchange::Error(err) => WriteOutcome::Unknown(err),
        // Definitely not applied: counting it as unknown would only loosen the counter bounds.
        Exchange::NotSent(err) => WriteOutcome::Failed(format!("{NOT_SENT}{err}")),
    }
}

fn read_outcome(sent: Exchange) -> ReadOutcome {
    match sent {
        Exchange::Reply(status, headers, body) if status == StatusCode::OK || status == StatusCode::NOT_FOUND => {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let safe_time = header("meridian-safe-time").and_then(|h| Hlc::parse(&h).ok());
            let staleness_ms = header("meridian-staleness-ms").and_then(|h| h.parse::<u64>().ok());
            let json = if status == StatusCode::OK {
                match serde_json::from_str::<Value>(&body) {
                    Ok(json) => Some(json),
                    Err(err) => return ReadOutcome::Failed(format!("200 with a body that is not JSON: {err}")),
                }
            } else {
                None
            };
            match (safe_time, staleness_ms) {
                (Some(safe_time), Some(staleness_ms)) => ReadOutcome::Ok { json, safe_time, staleness_ms },
                _ => ReadOutcome::Failed(format!("{status} without readable freshness headers")),
            }
        }
        Exchange::Reply(status, _, body) => {
            // Freshness refusals (web/src/error.rs): 504 not-caught-up for `after`/`at`, 503 too-stale.
            let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let kind = problem["type"].as_str().unwrap_or("");
            let refused = (status == StatusCode::GATEWAY_TIMEOUT && kind.ends_with(":not-caught-up"))
                || (status == StatusCode::SERVICE_UNAVAILABLE && kind.ends_with(":too-stale"));
            if refused {
                ReadOutcome::Refused(format!("{status} {kind}"))
            } else {
                ReadOutcome::Failed(format!("{status}: {}", short(&body)))
            }
        }
        Exchange::Error(err) | Exchange::NotSent(err) => ReadOutcome::Failed(err),
    }
}

/// One workload client, bound to one node, until `until`.
async fn client_loop(shared: Arc<Shared>, http: reqwest::Client, node: usize, id: usize, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed ^ ((id as u64 + 1) << 32));
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let k = rng.below(KEYS);
        let unique = format!("c{id}-{seq}");
        if rng.below(10) < 6 {
            write_op(&shared, &http, node, k, unique, &mut rng).await;
        } else {
            read_op(&shared, &http, node, k, &mut rng).await;
        }
        // A little think time keeps the 2-core machine answering and the history checkable in seconds.
        tokio::time::sleep(Duration::from_millis(rng.range(5, 30))).await;
    }
}

async fn write_op(shared: &Shared, http: &reqwest::Client, node: usize, k: u64, unique: String, rng: &mut Rng) {
    let url = shared.url(node);
    let json_patch = |doc: &str, body: Value| {
        http.patch(format!("{url}/v1/docs/{doc}"))
            .header("content-type", "application/json-patch+json")
            .body(body.to_string())
    };
    let merge_patch = |doc: &str, body: Value| {
        http.patch(format!("{url}/v1/docs/{doc}"))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
    };
    let n = rng.range(1, 5);
    let (doc, kind, request) = match rng.below(7) {
        0 | 1 => {
            let doc = format!("set/{k}");
            let request = merge_patch(&doc, json!({ unique.clone(): n }));
            (doc, WriteKind::SetAdd { key: unique }, request)
        }
        2 | 3 => {
            let doc = format!("ctr/{k}");
            let request = json_patch(&doc, json!([{"op": "increment", "path": "/n", "value": n}]));
            (doc, WriteKind::Increment { by: n as i64 }, request)
        }
        4 | 5 => {
            let doc = format!("list/{k}");
            let request = json_patch(&doc, json!([{"op": "add", "path": "/items/-", "value": unique}]));
            (doc, WriteKind::Append { value: unique }, request)
        }
        _ => {
            let doc = format!("reg/{k}");
            let (what, request) = match rng.below(4) {
                0 => ("delete".to_string(), http.delete(format!("{url}/v1/docs/{doc}"))),
                1 => {
                    let body = json!({ format!("f{}", rng.below(3)): unique });
                    (format!("merge patch {body}"), merge_patch(&doc, body))
                }
                _ => {
                    let body = json!({"v": unique, "by": node});
                    (format!("put {body}"), http.put(format!("{url}/v1/docs/{doc}")).json(&body))
                }
            };
            (doc, WriteKind::Other { what }, request)
        }
    };
    let start_ms = shared.ms();
    let outcome = write_outcome(send(request).await);
    let end_ms = shared.ms();
    let acked = match &outcome {
        WriteOutcome::Acked { token, hlc } => Some((token.clone(), *hlc)),
        _ => None,
    };
    let index = {
        let mut history = shared.history.lock().unwrap();
        history.writes.push(WriteRecord { node, doc: doc.clone(), kind, start_ms, end_ms, outcome });
        history.writes.len() - 1
    };
    if let Some((token, hlc)) = acked {
        let mut recent = shared.recent.lock().unwrap();
        let list = recent.entry(doc.clone()).or_default();
        list.push(Recent { index, node, token });
        if list.len() > 8 {
            list.remove(0);
        }
        drop(recent);
        shared.offer_at(&doc, hlc, rng);
    }
}

async fn read_op(shared: &Shared, http: &reqwest::Client, node: usize, k: u64, rng: &mut Rng) {
    let doc = format!("{}/{k}", ["set", "ctr", "list", "reg"][rng.below(4) as usize]);
    let mut query: Vec<(&str, String)> = Vec::new();
    let (mut after, mut at, mut max_staleness_ms) = (None, None, None);
    match rng.below(4) {
        0 => {}
        1 => {
            // Read-your-writes across regions: the newest acknowledged write to this document made elsewhere.
            let recent = shared.recent.lock().unwrap();
            if let Some(write) = recent.get(&doc).and_then(|l| l.iter().rev().find(|w| w.node != node)) {
                after = Some(write.index);
                query.push(("after", write.token.clone()));
                query.push(("wait_ms", WAIT_MS.to_string()));
            }
        }
        2 => {
            let limit = [200, 1_000, 5_000][rng.below(3) as usize];
            max_staleness_ms = Some(limit);
            query.push(("max_staleness_ms", limit.to_string()));
        }
        _ => {
            let ats = shared.ats.lock().unwrap();
            if let Some(slots) = ats.get(&doc).filter(|s| !s.is_empty()) {
                let hlc = slots[rng.below(slots.len() as u64) as usize];
                at = Some(hlc);
                query.push(("at", hlc.to_string()));
                query.push(("wait_ms", WAIT_MS.to_string()));
            }
        }
    }
    // Tokens are base64url and HLC texts RFC 3339 with `_`: nothing in them needs escaping in a query.
    let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let request = http.get(format!("{}/v1/docs/{doc}?{}", shared.url(node), query.join("&")));
    let start_ms = shared.ms();
    let outcome = read_outcome(send(request).await);
    let end_ms = shared.ms();
    if let ReadOutcome::Ok { safe_time, .. } = &outcome {
        // Safe times make `at` values too: ones no write carries exactly.
        if at.is_none() && rng.below(8) == 0 {
            shared.offer_at(&doc, *safe_time, rng);
        }
    }
    let record = ReadRecord { node, doc, after, at, max_staleness_ms, start_ms, end_ms, outcome };
    shared.history.lock().unwrap().reads.push(record);
}

/// An admin call that must work (the node is up); retried, since a loaded node may be slow.
async fn admin(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) {
    let mut last = String::new();
    for _ in 0..5 {
        let mut request = http.request(method.clone(), format!("{url}/v1/admin/faults")).bearer_auth(ADMIN_TOKEN);
        if let Some(body) = &body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(reply) if reply.status().is_success() => return,
            Ok(reply) => last = format!("{}: {}", reply.status(), reply.text().await.unwrap_or_default()),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("admin {method} {url}/v1/admin/faults failed: {last}");
}

/// `kill -<sig> <pid>` on a process this test started.
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
}

fn pid_of(cluster: &Mutex<Cluster>, node: usize) -> Option<u32> {
    cluster.lock().unwrap().0.nodes[node].process.as_ref().map(|p| p.pid())
}

/// Restarts node `i` off the async threads (start blocks until ready) and publishes its new URL.
async fn restart(shared: &Shared, cluster: &Arc<Mutex<Cluster>>, i: usize) {
    let cluster = cluster.clone();
    let url = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster.lock().unwrap();
        cluster.0.restart(i);
        cluster.0.url(i)
    })
    .await
    .expect("restart");
    shared.urls.write().unwrap()[i] = url;
}

/// Faults until `until`, one at a time, each undone before the next; returns the log of actions.
async fn nemesis(
    shared: Arc<Shared>,
    cluster: Arc<Mutex<Cluster>>,
    http: reqwest::Client,
    seed: u64,
    until: Instant,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut log = Vec::new();
    let mut note = |shared: &Shared, text: String| {
        let line = format!("[nemesis {:>6} ms] {text}", shared.ms());
        eprintln!("{line}");
        log.push(line);
    };
    loop {
        let pause = Duration::from_millis(rng.range(3_000, 5_000));
        if Instant::now() + pause >= until {
            break;
        }
        tokio::time::sleep(pause).await;
        let node = rng.below(3) as usize;
        let region = REGIONS[node];
        match rng.below(3) {
            0 => {
                let down = rng.range(1_000, 3_000);
                cluster.lock().unwrap().0.kill9(node);
                note(&shared, format!("kill -9 {region}, restart in {down} ms"));
                tokio::time::sleep(Duration::from_millis(down)).await;
                restart(&shared, &cluster, node).await;
                note(&shared, format!("{region} restarted at {}", shared.url(node)));
            }
            1 => {
                let paused = rng.range(1_000, 3_000);
                let pid = pid_of(&cluster, node).expect("nemesis nodes are up between actions");
                signal(pid, "STOP");
                note(&shared, format!("SIGSTOP {region} (pid {pid}) for {paused} ms"));
                tokio::time::sleep(Duration::from_millis(paused)).await;
                signal(pid, "CONT");
                note(&shared, format!("SIGCONT {region}"));
            }
            _ => {
                let peer = REGIONS[(node + 1 + rng.below(2) as usize) % 3];
                let outbound = rng.below(3) == 0;
                let cut = rng.range(2_000, 4_000);
                let body = if outbound {
                    json!({"peer_region": peer, "cut": true, "direction": "outbound"})
                } else {
                    json!({"peer_region": peer, "cut": true})
                };
                let url = shared.url(node);
                admin(&http, reqwest::Method::POST, &url, Some(body)).await;
                let direction = if outbound { "outbound" } else { "both ways" };
                note(&shared, format!("cut {region} -> {peer} ({direction}) for {cut} ms"));
                tokio::time::sleep(Duration::from_millis(cut)).await;
                admin(&http, reqwest::Method::DELETE, &url, None).await;
                note(&shared, format!("healed {region}'s links"));
            }
        }
    }
    log
}

async fn cluster_status(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(format!("{url}/v1/cluster")).send().await.ok()?.json().await.ok()
}

/// Waits until every node reports the same digest and version vector; how long it took, or None at `limit`.
async fn wait_converged(http: &reqwest::Client, urls: &[String], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for url in urls {
            statuses.push(cluster_status(http, url).await);
        }
        let same = statuses.iter().all(Option::is_some)
            && statuses.windows(2).all(|w| {
                let (a, b) = (w[0].as_ref().unwrap(), w[1].as_ref().unwrap());
                a["node"]["digest"] == b["node"]["digest"] && a["node"]["version_vector"] == b["node"]["version_vector"]
            });
        if same {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            let digests: Vec<Value> =
                statuses.iter().map(|s| s.as_ref().map_or(Value::Null, |s| s["node"].clone())).collect();
            eprintln!("not converged after {limit:?}: {:#}", Value::Array(digests));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the three nodes (each seeded with the others), waits until they see each other,
/// and creates the list documents once, at node 0, until every node has them: a list created
/// concurrently at two regions would be two list objects, one of which loses.
async fn start_cluster(name: &str, http: &reqwest::Client) -> (Cluster, Vec<String>, Vec<WriteRecord>) {
    let cluster = tokio::task::spawn_blocking({
        let name = name.to_string();
        move || {
            let mut cluster = Cluster(TestCluster::new(&name, &REGIONS));
            // Checkpoints every second, so kills also land in snapshot and truncation commits.
            let flags = ["--checkpoint-interval-ms", "1000"];
            cluster.0.start(0, &[1, 2], &flags);
            cluster.0.start(1, &[0, 2], &flags);
            cluster.0.start(2, &[0, 1], &flags);
            cluster
        }
    })
    .await
    .expect("start cluster");
    let urls: Vec<String> = (0..3).map(|i| cluster.0.url(i)).collect();
    let start = Instant::now();
    loop {
        let mut alive = 0;
        for url in &urls {
            if let Some(status) = cluster_status(http, url).await {
                let members = status["members"].as_array().cloned().unwrap_or_default();
                alive += members.iter().filter(|m| m["state"] == "alive").count();
            }
        }
        if alive == 6 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the three nodes did not find each other");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut created = Vec::new();
    for k in 0..KEYS {
        let doc = format!("list/{k}");
        let reply = http.put(format!("{}/v1/docs/{doc}", urls[0])).json(&json!({"items": []})).send().await.unwrap();
        assert!(reply.status().is_success(), "creating {doc}: {}", reply.status());
        let body: Value = reply.json().await.unwrap();
        let hlc = Hlc::parse(body["hlc"].as_str().unwrap()).unwrap();
        created.push(WriteRecord {
            node: 0,
            doc: doc.clone(),
            kind: WriteKind::Other { what: "create the empty list".into() },
            start_ms: 0,
            end_ms: 0,
            outcome: WriteOutcome::Acked { token: body["token"].as_str().unwrap().to_string(), hlc },
        });
        for url in &urls {
            let start = Instant::now();
            while http.get(format!("{url}/v1/docs/{doc}")).send().await.map(|r| r.status()).ok() != Some(StatusCode::OK)
            {
                assert!(start.elapsed() < Duration::from_secs(30), "{doc} did not reach {url}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (cluster, urls, created)
}

/// Runs the clients (and the nemesis, when given a seed for it) until `until`.
async fn run_workload(
    shared: &Arc<Shared>,
    cluster: &Arc<Mutex<Cluster>>,
    seed: u64,
    until: Instant,
    with_nemesis: bool,
) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut clients = Vec::new();
    for node in 0..3 {
        for c in 0..CLIENTS_PER_NODE {
            let id = node * CLIENTS_PER_NODE + c;
            clients.push(tokio::spawn(client_loop(shared.clone(), http.clone(), node, id, seed, until)));
        }
    }
    let nemesis = with_nemesis.then(|| {
        let admin_http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        tokio::spawn(nemesis(shared.clone(), cluster.clone(), admin_http, seed, until))
    });
    for client in clients {
        client.await.expect("client task");
    }
    match nemesis {
        Some(task) => task.await.expect("nemesis task"),
        None => Vec::new(),
    }
}

/// Undoes every fault: SIGCONT, restart what is down, drop every link fault.
async fn heal_all(shared: &Shared, cluster: &Arc<Mutex<Cluster>>, http: &reqwest::Client) {
    for i in 0..3 {
        match pid_of(cluster, i) {
            Some(pid) => signal(pid, "CONT"),
            None => restart(shared, cluster, i).await,
        }
        admin(http, reqwest::Method::DELETE, &shared.url(i), None).await;
    }
}

/// Every document the history touched, as each node holds it, with the node's digest.
async fn final_states(http: &reqwest::Client, urls: &[String], history: &History) -> Vec<FinalState> {
    let docs: std::collections::BTreeSet<&str> = history.writes.iter().map(|w| w.doc.as_str()).collect();
    let mut finals = Vec::new();
    for (node, url) in urls.iter().enumerate() {
        let mut state = BTreeMap::new();
        for doc in &docs {
            let reply = http.get(format!("{url}/v1/docs/{doc}")).send().await.expect("final read");
            let json = match reply.status() {
                StatusCode::OK => Some(reply.json::<Value>().await.expect("final read body")),
                StatusCode::NOT_FOUND => None,
                status => panic!("final read of {doc} at {url}: {status}"),
            };
            state.insert(doc.to_string(), json);
        }
        let status = cluster_status(http, url).await.expect("final cluster status");
        let digest = status["node"]["digest"].as_str().expect("digest").to_string();
        finals.push(FinalState { node, docs: state, digest });
    }
    finals
}

/// Writes of the set, counter and list namespaces are always valid requests: a 4xx means
/// the node refused something it should take (say, an append to a list it lost), which the
/// checkers would otherwise excuse as "definitely not applied".
fn unexpected_refusals(history: &History) -> Vec<Violation> {
    history
        .writes
        .iter()
        .filter(|w| !matches!(w.kind, WriteKind::Other { .. }))
        .filter_map(|w| match &w.outcome {
            WriteOutcome::Failed(why) if !why.starts_with(NOT_SENT) => Some(Violation {
                checker: "workload",
                detail: format!(
                    "{:?} to {:?} at node {} (sent at {} ms) refused: {why}",
                    w.kind, w.doc, w.node, w.start_ms
                ),
            }),
            _ => None,
        })
        .collect()
}

fn summary(history: &History) -> String {
    let mut writes: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut samples: BTreeMap<String, usize> = BTreeMap::new();
    for w in &history.writes {
        let kind = w.doc.split('/').next().unwrap_or("").to_string();
        let outcome = match &w.outcome {
            WriteOutcome::Acked { .. } => "acked",
            WriteOutcome::Failed(why) => {
                *samples.entry(format!("write failed: {}", why.chars().take(60).collect::<String>())).or_default() += 1;
                "failed"
            }
            WriteOutcome::Unknown(why) => {
                *samples.entry(format!("write unknown: {}", why.chars().take(60).collect::<String>())).or_default() +=
                    1;
                "unknown"
            }
        };
        *writes.entry((kind, outcome)).or_default() += 1;
    }
    let mut reads: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &history.reads {
        let mode = if r.after.is_some() {
            "after"
        } else if r.at.is_some() {
            "at"
        } else if r.max_staleness_ms.is_some() {
            "max_staleness"
        } else {
            "plain"
        };
        let outcome = match &r.outcome {
            ReadOutcome::Ok { .. } => "ok",
            ReadOutcome::Refused(_) => "refused",
            ReadOutcome::Failed(why) => {
                *samples.entry(format!("read failed: {}", why.chars().take(60).collect::<String>())).or_default() += 1;
                "failed"
            }
        };
        *reads.entry((mode, outcome)).or_default() += 1;
    }
    // Evidence the read checkers had something to judge: `at` values read at two or more nodes,
    // and answered reads whose safe time (or `at`) covers at least one acknowledged write.
    let mut at_nodes: BTreeMap<(&str, Hlc), std::collections::BTreeSet<usize>> = BTreeMap::new();
    let mut claiming = 0;
    for r in &history.reads {
        let ReadOutcome::Ok { safe_time, .. } = &r.outcome else { continue };
        if let Some(at) = r.at {
            at_nodes.entry((r.doc.as_str(), at)).or_default().insert(r.node);
        }
        let horizon = r.at.unwrap_or(*safe_time);
        let covers = |w: &WriteRecord| matches!(w.outcome, WriteOutcome::Acked { hlc, .. } if hlc <= horizon);
        if history.writes.iter().any(|w| w.doc == r.doc && covers(w)) {
            claiming += 1;
        }
    }
    let at_pairs = at_nodes.values().filter(|nodes| nodes.len() > 1).count();
    let mut out = format!(
        "{} writes, {} reads; {claiming} answered reads cover acknowledged writes; {at_pairs} (doc, at) read at 2+ nodes\n",
        history.writes.len(),
        history.reads.len()
    );
    for ((kind, outcome), n) in &writes {
        out += &format!("  write {kind:<5} {outcome:<8} {n}\n");
    }
    for ((mode, outcome), n) in &reads {
        out += &format!("  read  {mode:<13} {outcome:<8} {n}\n");
    }
    let mut samples: Vec<_> = samples.into_iter().collect();
    samples.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (what, n) in samples.iter().take(12) {
        out += &format!("  {n:>5} x {what}\n");
    }
    out
}

/// Everything up to the check: cluster, workload (with or without faults), heal, converge, final states.
struct Run {
    history: History,
    finals: Vec<FinalState>,
    nemesis_log: Vec<String>,
    converged: Option<Duration>,
}

async fn run(name: &str, seed: u64, duration: Duration, with_nemesis: bool) -> Run {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let (cluster, urls, created) = start_cluster(name, &http).await;
    let cluster = Arc::new(Mutex::new(cluster));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        urls: RwLock::new(urls),
        history: Mutex::new(History { writes: created, reads: Vec::new() }),
        recent: Mutex::default(),
        ats: Mutex::default(),
    });
    let until = Instant::now() + duration;
    let nemesis_log = run_workload(&shared, &cluster, seed, until, with_nemesis).await;
    eprintln!("[{:>6} ms] workload stopped; healing", shared.ms());
    heal_all(&shared, &cluster, &http).await;
    let urls = shared.urls.read().unwrap().clone();
    let converged = wait_converged(&http, &urls, CONVERGE_LIMIT).await;
    eprintln!("[{:>6} ms] converged: {converged:?}", shared.ms());
    let history = shared.history.lock().unwrap().clone();
    let finals = final_states(&http, &urls, &history).await;
    // Kill the nodes now rather than whenever the last Arc goes.
    drop(cluster);
    Run { history, finals, nemesis_log, converged }
}

#[test]
fn nemesis_kill_pause_and_cut_lose_nothing_acknowledged() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = env_u64("MERIDIAN_NEMESIS_SEED", DEFAULT_SEED);
    let secs = env_u64("MERIDIAN_NEMESIS_SECS", 60);
    eprintln!(
        "nemesis: seed {seed:#x} (MERIDIAN_NEMESIS_SEED), {secs} s of clients and faults (MERIDIAN_NEMESIS_SECS)"
    );
    let Run { history, finals, nemesis_log, converged } =
        runtime().block_on(run("nemesis", seed, Duration::from_secs(secs), true));
    let checked = Instant::now();
    let mut violations = check(&history, &finals);
    violations.extend(unexpected_refusals(&history));
    if converged.is_none() {
        violations.push(Violation {
            checker: "convergence",
            detail: format!("digests and version vectors still differ {CONVERGE_LIMIT:?} after healing"),
        });
    }
    eprintln!("--- nemesis summary (seed {seed:#x}) ---");
    eprint!("{}", summary(&history));
    eprintln!("  {} nemesis actions: {}", nemesis_log.len(), nemesis_log.join("\n    "));
    eprintln!("  converged {converged:?} after healing; checked in {:?}", checked.elapsed());
    eprintln!("  final digest {}", finals.first().map_or("", |f| f.digest.as_str()));
    let acked = history.writes.iter().filter(|w| matches!(w.outcome, WriteOutcome::Acked { .. })).count();
    assert!(acked > 100, "too few acknowledged writes ({acked}) for the run to mean anything");
    assert!(
        violations.is_empty(),
        "{} violations with seed {seed:#x}:\n{}",
        violations.len(),
        violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn checkers_catch_tampering_with_a_real_history() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Run { mut history, mut finals, converged, .. } =
        runtime().block_on(run("nemesis-tamper", DEFAULT_SEED, Duration::from_secs(3), false));
    assert!(converged.is_some(), "a fault-free run must converge");
    let clean = check(&history, &finals);
    assert!(clean.is_empty(), "a fault-free run has violations: {clean:#?}");
    eprint!("{}", summary(&history));

    // An acknowledged set-add whose key is in no final state: a lost write.
    let mut forged = history
        .writes
        .iter()
        .find(|w| matches!(w.kind, WriteKind::SetAdd { .. }) && matches!(w.outcome, WriteOutcome::Acked { .. }))
        .expect("an acknowledged set-add")
        .clone();
    forged.kind = WriteKind::SetAdd { key: "tampered-never-written".into() };
    history.writes.push(forged);

    // An acknowledged append dropped from every node's final state (so they still agree).
    let (list_doc, value) = history
        .writes
        .iter()
        .find_map(|w| match (&w.kind, &w.outcome) {
            (WriteKind::Append { value }, WriteOutcome::Acked { .. }) => Some((w.doc.clone(), value.clone())),
            _ => None,
        })
        .expect("an acknowledged append");
    // A counter that lost increments.
    let counter_doc = history
        .writes
        .iter()
        .find(|w| matches!(w.kind, WriteKind::Increment { .. }) && matches!(w.outcome, WriteOutcome::Acked { .. }))
        .expect("an acknowledged increment")
        .doc
        .clone();
    for state in &mut finals {
        if let Some(Some(list)) = state.docs.get_mut(&list_doc) {
            list["items"].as_array_mut().unwrap().retain(|v| v.as_str() != Some(value.as_str()));
        }
        if let Some(Some(counter)) = state.docs.get_mut(&counter_doc) {
            counter["n"] = json!(0);
        }
    }
    let found = check(&history, &finals);
    let lost: Vec<&Violation> = found.iter().filter(|v| v.checker == "lost-write").collect();
    assert!(lost.iter().any(|v| v.detail.contains("tampered-never-written")), "forged set-add not caught: {found:#?}");
    assert!(lost.iter().any(|v| v.detail.contains(&value)), "dropped append {value:?} not caught: {found:#?}");
    assert!(found.iter().any(|v| v.checker == "counter" && v.detail.contains(&counter_doc)), "{found:#?}");

    // A replica that diverged is caught too.
    finals[2].docs.insert(list_doc.clone(), Some(json!({"items": []})));
    assert!(check(&history, &finals).iter().any(|v| v.checker == "convergence"));
}

//! `bench`: Meridian's benchmark harness. Every scenario measures Meridian
//! and a baseline in the same run and reports the ratio, since absolute
//! figures depend on the machine.
//!
//! ```sh
//! cargo run --release -p meridian-tests --bin bench -- all
//! cargo run --release -p meridian-tests --bin bench -- write --seconds 20
//! ```
//!
//! Results go to `target/bench/<scenario>.json` and to the scenario's
//! section of `docs/benchmarks.md` (machine, command, figures, notes).
//! `--quick` shortens every phase so the harness itself can be smoke-tested.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_crdt::{DocId, Document, Hlc, NodeId, Replica, WriteOp};
use meridian_tests::bench::{
    self, fmt, http_get, http_request, load, quantile_ms, quantile_us, Figure, LoadResult, Pace, Progress, RequestFn,
    ScenarioReport, Target,
};
use meridian_tests::{NodeProcess, TempDir, TestCluster, ADMIN_TOKEN};
use serde_json::{json, Value};

const SCENARIOS: [&str; 7] = ["write", "read", "converge", "wire", "catchup", "hot", "scale"];

const USAGE: &str = "usage: bench <scenario|all> [options]

scenarios: write read converge wire catchup hot scale (or all)

options:
  --seconds S          measured seconds per load phase (default 10)
  --connections N      HTTP connections for write/read (default 64)
  --partition-secs S   catchup: partition length (default 60)
  --history N          hot: changes already in the document (default 100000)
  --docs N             scale: documents (default 1000000)
  --quick              short phases and small sizes: a smoke test of the harness
  --node-flag FLAG     pass FLAG to `meridian serve` in write, read and scale
                       (repeatable; e.g. --node-flag=--checkpoint-interval-ms=60000)
  --no-docs            do not update docs/benchmarks.md
  --out DIR            where JSON results go (default target/bench)";

/// Parsed command line.
#[derive(Clone)]
struct Options {
    seconds: f64,
    connections: usize,
    partition_secs: f64,
    history: usize,
    docs: usize,
    quick: bool,
    update_docs: bool,
    out: PathBuf,
    node_flags: Vec<String>,
    command: String,
}

fn parse(args: &[String]) -> Result<(Vec<String>, Options), String> {
    let mut options = Options {
        seconds: 10.0,
        connections: 64,
        partition_secs: 60.0,
        history: 100_000,
        docs: 1_000_000,
        quick: false,
        update_docs: true,
        out: PathBuf::from("target/bench"),
        node_flags: Vec::new(),
        command: String::new(),
    };
    let mut scenarios = Vec::new();
    let mut it = args.iter();
    let mut explicit = Vec::new();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<String, String> {
            explicit.push(name.to_string());
            it.next().cloned().ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, text: String| -> Result<f64, String> {
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("{name} must be a positive number, not {text:?}"))
        };
        let count = |name: &str, text: String| -> Result<usize, String> {
            text.parse::<usize>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{name} must be a whole number above 0, not {text:?}"))
        };
        match arg.as_str() {
            "--seconds" => options.seconds = number("--seconds", value("--seconds")?)?,
            "--connections" => options.connections = count("--connections", value("--connections")?)?,
            "--partition-secs" => options.partition_secs = number("--partition-secs", value("--partition-secs")?)?,
            "--history" => options.history = count("--history", value("--history")?)?,
            "--docs" => options.docs = count("--docs", value("--docs")?)?,
            "--out" => options.out = PathBuf::from(value("--out")?),
            "--node-flag" => options.node_flags.push(value("--node-flag")?),
            flag if flag.starts_with("--node-flag=") => {
                options.node_flags.push(flag["--node-flag=".len()..].to_string())
            }
            "--quick" => options.quick = true,
            "--no-docs" => options.update_docs = false,
            "-h" | "--help" => return Err(String::new()),
            "all" => scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => scenarios.push(s.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if scenarios.is_empty() {
        return Err("name a scenario".into());
    }
    if options.quick {
        let keep = |name: &str| explicit.iter().any(|e| e == name);
        if !keep("--seconds") {
            options.seconds = 1.0;
        }
        if !keep("--partition-secs") {
            options.partition_secs = 3.0;
        }
        if !keep("--history") {
            options.history = 2_000;
        }
        if !keep("--docs") {
            options.docs = 5_000;
        }
        if !keep("--connections") {
            options.connections = 8;
        }
    }
    options.command = format!("bench {}", args.join(" "));
    Ok((scenarios, options))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("baseline-server") {
        baseline_server();
        return;
    }
    let (scenarios, options) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(err) => {
            if !err.is_empty() {
                eprintln!("bench: {err}\n");
            }
            eprintln!("{USAGE}");
            std::process::exit(if err.is_empty() { 0 } else { 2 });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let machine = bench::machine();
    let mut missed = 0;
    for scenario in &scenarios {
        eprintln!("\n== {scenario} ==");
        let report = runtime.block_on(run(scenario, &options));
        print!("\n{scenario}: {}\n\n{}", report.setup, report.table());
        for note in &report.notes {
            println!("- {note}");
        }
        missed += report.figures.iter().filter(|f| !f.met()).count();
        save(&report, &machine, &options);
    }
    if missed > 0 {
        println!("\n{missed} target(s) missed (see the tables).");
    }
}

async fn run(scenario: &str, options: &Options) -> ScenarioReport {
    match scenario {
        "write" => write(options).await,
        "read" => read(options).await,
        "converge" => converge(options).await,
        "wire" => wire(options).await,
        "catchup" => catchup(options).await,
        "hot" => hot(options),
        "scale" => scale(options).await,
        _ => unreachable!("scenario names are checked when parsing"),
    }
}

fn save(report: &ScenarioReport, machine: &Value, options: &Options) {
    let _ = std::fs::create_dir_all(&options.out);
    let path = options.out.join(format!("{}.json", report.name));
    let json = report.json(machine, &options.command);
    if let Err(err) = std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")) {
        eprintln!("bench: cannot write {}: {err}", path.display());
    }
    if options.update_docs && !options.quick {
        let docs = workspace_root().join("docs/benchmarks.md");
        let date = today();
        if let Err(err) = bench::update_docs(&docs, &report.name, &report.markdown(machine, &options.command, &date)) {
            eprintln!("bench: cannot update {}: {err}", docs.display());
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The baseline: a bare axum handler, in its own process like Meridian.

/// The document both servers hold for reads, and the patch both parse for writes.
fn sample_doc(i: u64) -> Value {
    json!({ "name": format!("user-{i}"), "count": i, "active": true, "tags": ["a", "b"] })
}

fn baseline_server() {
    use axum::routing::get;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let doc = serde_json::to_vec(&sample_doc(7)).expect("json");
        let app = axum::Router::new().route(
            "/v1/docs/{*id}",
            get(move || {
                let doc = doc.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], doc) }
            })
            .patch(|axum::Json(body): axum::Json<Value>| async move {
                // Parse the same JSON Meridian parses, answer 200 with a small body.
                axum::Json(json!({ "ok": body.is_object() }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

/// The baseline server process; killed when dropped.
struct Baseline {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Baseline {
    fn start() -> Baseline {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .arg("baseline-server")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn baseline");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("baseline address");
        let addr = line.trim().parse().expect("baseline printed its address");
        Baseline { child, addr }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Meridian node, replication off, limits out of the way of the load.
fn single_node(dir: &TempDir, options: &Options) -> NodeProcess {
    NodeProcess::start_within(dir.path(), &node_args(options), Duration::from_secs(600))
}

/// Flags for a single node: anonymous clients, limits out of the way of the load, plus `--node-flag`s.
fn node_args(options: &Options) -> Vec<&str> {
    let mut args = vec!["--allow-anonymous", "--rate-limit-per-second", "0", "--concurrency-max", "4096"];
    args.extend(options.node_flags.iter().map(String::as_str));
    args
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().expect("node address")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

// ---------------------------------------------------------------------------
// 1. write

fn patch_request(i: u64) -> Vec<u8> {
    let body = serde_json::to_vec(&sample_doc(i)).expect("json");
    http_request("PATCH", &format!("/v1/docs/bench/{}", i % 1000), "application/merge-patch+json", &body)
}

fn describe(r: &mut LoadResult) -> String {
    format!(
        "{} req/s, p50 {} ms, p99 {} ms, {} errors",
        fmt(r.throughput()),
        fmt(r.quantile_ms(0.5)),
        fmt(r.quantile_ms(0.99)),
        r.errors
    )
}

fn error_note(who: &str, r: &LoadResult) -> Option<String> {
    r.first_error.as_ref().map(|e| format!("{who}: {} errors, first: {e}", r.errors))
}

/// How long a paced segment runs before its latencies count: long enough
/// for the queue a closed-loop probe left behind to drain.
const PACED_SETTLE: Duration = Duration::from_millis(500);

async fn write(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let warmup = Duration::from_secs_f64((options.seconds / 5.0).clamp(0.5, 3.0));
    let measure = Duration::from_secs_f64(options.seconds);
    let conns = options.connections;
    let baseline = Baseline::start();
    let dir = TempDir::new("bench-write");
    // The disk's own commit latency, before any load: the floor under a
    // write that is fsynced before its answer, and the stalls no group
    // commit can hide.
    progress.phase("disk: 4 KiB appends, each fdatasynced, in the node's data directory");
    let mut disk = fsync_probe(dir.path(), DISK_PROBE_COUNT, DISK_PROBE_TIME);
    let node = single_node(&dir, options);
    let addr = addr_of(&node.url);
    let (mut base, mut peak, last_round) =
        interleaved(baseline.addr, addr, conns, warmup, measure, Arc::new(patch_request), &progress).await;
    drop(baseline);
    // 70% of the peak *now*: every write lengthens its document's history and
    // automerge's cost per write grows with it, so the node's peak keeps
    // falling, also during this phase. Paced on one rate for the whole phase,
    // its last seconds ran at or past saturation and measured a queue, not a
    // tail. So the phase runs in segments, each paced at 70% of a short
    // closed-loop probe taken just before it.
    let segments = ((options.seconds / 5.0).round() as u32).clamp(2, 6);
    let segment = measure / segments;
    // The node's histograms over the paced segments only, not the probes:
    // a write from apply to durable, a commit, and a write's stages.
    const HISTS: [(&str, &str); 6] = [
        ("meridian_write_duration_seconds", ""),
        ("meridian_fsync_duration_seconds", ""),
        ("meridian_write_stage_seconds", "stage=\"queue\""),
        ("meridian_write_stage_seconds", "stage=\"writer\""),
        ("meridian_write_stage_seconds", "stage=\"durable\""),
        ("meridian_write_stage_seconds", "stage=\"storage\""),
    ];
    let mut paced = vec![Vec::new(); HISTS.len()];
    let mut at70 = LoadResult::default();
    let mut rates = Vec::new();
    for n in 1..=segments {
        progress.phase(format!("meridian probe before 70% segment {n} of {segments}"));
        let probe_time = Duration::from_secs_f64((options.seconds / 20.0).clamp(0.5, 1.0));
        let probe =
            load(addr, conns, Pace::Closed, probe_time / 4, probe_time, Arc::new(patch_request), &progress).await;
        let rate = probe.throughput() * 0.7;
        rates.push(rate);
        progress.phase(format!("meridian at 70% of peak ({} req/s), segment {n} of {segments}", fmt(rate)));
        // The warm-up lets the probe's queue drain before latencies count.
        let before = histograms(&node.url, &HISTS).await;
        let part = load(addr, conns, Pace::Rate(rate), PACED_SETTLE, segment, Arc::new(patch_request), &progress).await;
        let after = histograms(&node.url, &HISTS).await;
        for ((acc, before), after) in paced.iter_mut().zip(&before).zip(&after) {
            add_delta(acc, before, after);
        }
        at70.absorb(part);
    }
    progress.step(&describe(&mut at70));
    // Where the tail at 70% comes from: the node's own view of each write
    // (apply to durable) and of each commit, over the paced segments (their settling included).
    let [write_p99, fsync_p99, queue_p99, writer_p99, durable_p99, storage_p99] =
        [0, 1, 2, 3, 4, 5].map(|i| bucket_quantile(&paced[i], 0.99));
    let queue_p50 = bucket_quantile(&paced[2], 0.5);
    let (slow_commits, commits, slowest) = over_bound(&paced[1], SLOW_COMMIT_S);
    let fsyncs = metric(&node.url, "meridian_storage_commits_total").await;
    let writes = metric(&node.url, "meridian_durable_sequence").await;
    drop(node);
    let in_process = local_write_rate(Duration::from_secs_f64(options.seconds.min(3.0)));
    progress.step(&format!("in process, one thread: {} Replica::local_write/s", fmt(in_process)));

    let mut notes: Vec<String> =
        [error_note("baseline", &base), error_note("meridian", &peak), error_note("meridian at 70%", &at70)]
            .into_iter()
            .flatten()
            .collect();
    if let (Some(write), Some(fsync)) = (write_p99, fsync_p99) {
        let late_p99 = quantile_us(&mut at70.late_us, 0.99) / 1000.0;
        let behind_p99 = quantile_us(&mut at70.behind_us, 0.99) / 1000.0;
        let from_send_p99 = quantile_us(&mut at70.from_send_us, 0.99) / 1000.0;
        notes.push(format!(
            "at 70% of peak, the node's own p99 (histogram bucket bounds): write, apply to durable, <= {} ms; commit (fsync) <= {} ms. Requests sent late, p99 {} ms; of that, behind the previous answer on their connection p99 {} ms, the rest the load generator waking late on the shared cores; latency from the actual send (no lateness in it), p99 {} ms",
            fmt(write * 1000.0),
            fmt(fsync * 1000.0),
            fmt(late_p99),
            fmt(behind_p99),
            fmt(from_send_p99)
        ));
    }
    let disk_p99 = quantile_ms(&mut disk, 0.99);
    if !disk.is_empty() {
        notes.push(format!(
            "the disk, idle, before the run ({} appends of 4 KiB to a file in the data directory, each fdatasynced): p50 {} ms, p99 {} ms, max {} ms. At 70% of peak, {} of {} commits took over {} ms (the slowest <= {} ms): every write waiting on such a commit waits with it, and the writer then works off the requests that queued behind it with 30% headroom",
            fmt(disk.len() as f64),
            fmt(quantile_ms(&mut disk, 0.5)),
            fmt(quantile_ms(&mut disk, 0.99)),
            fmt(quantile_ms(&mut disk, 1.0)),
            fmt(slow_commits),
            fmt(commits),
            fmt(SLOW_COMMIT_S * 1000.0),
            fmt(slowest * 1000.0)
        ));
    }
    if let (Some(queue50), Some(queue), Some(writer), Some(durable), Some(storage)) =
        (queue_p50, queue_p99, writer_p99, durable_p99, storage_p99)
    {
        notes.push(format!(
            "a write's stages at 70% of peak, the node's own p99 (bucket bounds): queued until the writer thread starts it <= {} ms (p50 <= {} ms); queued and applied, until the request has the answer, <= {} ms; from then until durable, as the request saw it, <= {} ms; of that, from the writer's hand-off to the commit, as the storage thread saw it, <= {} ms",
            fmt(queue * 1000.0),
            fmt(queue50 * 1000.0),
            fmt(writer * 1000.0),
            fmt(durable * 1000.0),
            fmt(storage * 1000.0)
        ));
    }
    notes.push(format!(
        "the 70% phase ran in {segments} segments, each paced at 70% of a closed-loop probe just before it: {} req/s (the last peak round was {} req/s, the rounds' mean {} req/s); the peak falls as documents' histories grow",
        rates.iter().map(|r| fmt(*r)).collect::<Vec<_>>().join(", "),
        fmt(last_round),
        fmt(peak.throughput())
    ));
    if fsyncs > 0.0 && writes > 0.0 {
        notes.push(format!(
            "{} writes shared {} fsynced commits ({:.1} writes per fsync): group commit",
            fmt(writes),
            fmt(fsyncs),
            writes / fsyncs
        ));
    }
    ScenarioReport {
        name: "write".into(),
        setup: format!(
            "PATCH (merge patch, ~80-byte body) to 1,000 small documents at one node, {conns} keep-alive HTTP/1.1 connections, {:.0} s measured in three rounds taken in turn with the baseline's, each after {:.0} s warm-up; baseline: a bare axum handler that parses the same JSON and answers 200. Meridian fsyncs every write before answering.",
            measure.as_secs_f64(),
            warmup.as_secs_f64()
        ),
        figures: vec![
            Figure::ratio("throughput", "req/s", peak.throughput(), base.throughput(), Some(Target::AtLeast(0.5))),
            Figure::ratio("p50 at peak", "ms", peak.quantile_ms(0.5), base.quantile_ms(0.5), None),
            Figure::ratio("p99 at peak", "ms", peak.quantile_ms(0.99), base.quantile_ms(0.99), None),
            Figure::plain("p50 at 70% of peak", "ms", at70.quantile_ms(0.5), None),
            Figure::plain("p99 at 70% of peak", "ms", at70.quantile_ms(0.99), Some(Target::AtMost(10.0))),
            Figure::plain("in process: Replica::local_write, one thread", "writes/s", in_process, None),
            Figure::plain("disk: 4 KiB fdatasync p99, idle", "ms", disk_p99, None),
        ],
        notes,
    }
}

/// The same merge patches applied in process to a bare [`Replica`] (no HTTP,
/// no disk) on one thread: the CRDT's own ceiling for this workload.
fn local_write_rate(limit: Duration) -> f64 {
    let mut replica = Replica::new(NodeId(1));
    let ids: Vec<DocId> = (0..1000).map(|i| DocId::new(&format!("bench/{i}")).expect("id")).collect();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < limit {
        let op = WriteOp::MergePatch(sample_doc(i));
        replica
            .local_write(&ids[(i % 1000) as usize], &op, Hlc::new(1_000_000_000 + i * 1000, 0), None)
            .expect("write");
        i += 1;
    }
    i as f64 / started.elapsed().as_secs_f64()
}

/// Histograms' cumulative buckets from one reading of a node's /metrics, as
/// (upper bound in seconds, count), for each (name, labels) in `which`.
async fn histograms(url: &str, which: &[(&str, &str)]) -> Vec<Vec<(f64, f64)>> {
    let text = match client().get(format!("{url}/metrics")).send().await {
        Ok(reply) => reply.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    which
        .iter()
        .map(|(name, labels)| {
            let sep = if labels.is_empty() { "" } else { "," };
            let prefix = format!("{name}_bucket{{{labels}{sep}le=\"");
            text.lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(|rest| {
                    let (le, count) = rest.split_once("\"} ")?;
                    let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                    Some((le, count.parse().ok()?))
                })
                .collect()
        })
        .collect()
}

/// How many appends [`fsync_probe`] makes, and for how long at most.
const DISK_PROBE_COUNT: usize = 2_000;
const DISK_PROBE_TIME: Duration = Duration::from_secs(5);
/// A commit slower than this is counted as a stall (a histogram bucket bound).
const SLOW_COMMIT_S: f64 = 0.01;

/// Appends 4 KiB to a fresh file in `dir` and fdatasyncs it, `count` times
/// or until `limit`, and returns each append's latency in ms: what one
/// small durable commit costs on this disk, without Meridian. The file is
/// removed afterwards; an I/O error ends the probe early (a benchmark aid,
/// not a check).
fn fsync_probe(dir: &Path, count: usize, limit: Duration) -> Vec<f64> {
    use std::io::Write;
    let path = dir.join("disk-probe");
    let Ok(mut file) = std::fs::File::create(&path) else { return Vec::new() };
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count && started.elapsed() < limit {
        let at = Instant::now();
        if file.write_all(&block).and_then(|()| file.sync_data()).is_err() {
            break;
        }
        latencies.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    latencies
}

/// Of a histogram's cumulative buckets: the observations above the bucket
/// bound `bound`, all observations, and the upper bound of the highest
/// bucket that holds any (infinite for the overflow bucket).
fn over_bound(hist: &[(f64, f64)], bound: f64) -> (f64, f64, f64) {
    let total = hist.last().map_or(0.0, |b| b.1);
    let within = hist.iter().filter(|b| b.0 <= bound).map(|b| b.1).fold(0.0, f64::max);
    let mut below = 0.0;
    let mut slowest = 0.0;
    for &(le, n) in hist {
        if n > below {
            slowest = le;
        }
        below = n;
    }
    (total - within, total, slowest)
}

/// The upper bound of the bucket holding quantile `q` of a histogram's
/// cumulative buckets (as [`add_delta`] sums them); `None` without observations.
fn bucket_quantile(hist: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = hist.last()?.1;
    (total > 0.0).then(|| hist.iter().find(|(_, n)| *n >= q * total).map_or(f64::INFINITY, |b| b.0))
}

/// Adds what a histogram observed between two readings to `acc`, bucket by
/// bucket, so that quantiles can be taken over several separate intervals.
fn add_delta(acc: &mut Vec<(f64, f64)>, before: &[(f64, f64)], after: &[(f64, f64)]) {
    for &(le, n) in after {
        let observed = n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
        match acc.iter_mut().find(|a| a.0 == le) {
            Some(a) => a.1 += observed,
            None => acc.push((le, observed)),
        }
    }
}

/// A counter or gauge from a node's /metrics (summed over label sets); 0 if absent.
async fn metric(url: &str, name: &str) -> f64 {
    let Ok(reply) = client().get(format!("{url}/metrics")).send().await else { return 0.0 };
    let text = reply.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// 2. read

/// Rounds of baseline and Meridian load taken in turn: on shared, noisy
/// cores the machine's speed drifts by a factor of two within minutes, and
/// alternating puts both sides under the same drift. Returns the baseline's
/// and Meridian's results summed over the rounds, and Meridian's throughput
/// in the last round.
async fn interleaved(
    baseline: SocketAddr,
    meridian: SocketAddr,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    request: RequestFn,
    progress: &Progress,
) -> (LoadResult, LoadResult, f64) {
    const ROUNDS: u32 = 3;
    let (mut base, mut ours) = (LoadResult::default(), LoadResult::default());
    let mut last_round = 0.0;
    let slice = measure / ROUNDS;
    for round in 1..=ROUNDS {
        progress.phase(format!("baseline, {conns} conns, round {round} of {ROUNDS}"));
        let mut b = load(baseline, conns, Pace::Closed, warmup, slice, request.clone(), progress).await;
        progress.step(&describe(&mut b));
        progress.phase(format!("meridian, {conns} conns, round {round} of {ROUNDS}"));
        let mut m = load(meridian, conns, Pace::Closed, warmup, slice, request.clone(), progress).await;
        progress.step(&format!("{} ({:.2}x this round)", describe(&mut m), m.throughput() / b.throughput().max(1e-9)));
        last_round = m.throughput();
        base.absorb(b);
        ours.absorb(m);
    }
    (base, ours, last_round)
}

async fn read(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let warmup = Duration::from_secs_f64((options.seconds / 5.0).clamp(0.5, 3.0));
    let measure = Duration::from_secs_f64(options.seconds);
    let conns = options.connections;
    let get = Arc::new(|i: u64| http_get(&format!("/v1/docs/bench/{}", i % 1000)));
    let baseline = Baseline::start();
    let dir = TempDir::new("bench-read");
    let node = single_node(&dir, options);
    let addr = addr_of(&node.url);
    progress.step("writing 1,000 documents");
    let client = client();
    for i in 0..1000u64 {
        let reply = client.put(format!("{}/v1/docs/bench/{i}", node.url)).json(&sample_doc(i)).send().await;
        assert!(reply.is_ok_and(|r| r.status().is_success()), "populating document {i} failed");
    }
    let (mut base, mut peak, _) = interleaved(baseline.addr, addr, conns, warmup, measure, get, &progress).await;
    drop(baseline);
    ScenarioReport {
        name: "read".into(),
        setup: format!(
            "GET of 1,000 small documents (~80 bytes of JSON) at one node, {conns} keep-alive connections, {:.0} s measured in three rounds taken in turn with the baseline's; baseline: a bare axum handler answering the same JSON. Meridian answers from its cached rendering of the document and computes freshness and headers on every read.",
            measure.as_secs_f64()
        ),
        figures: vec![
            Figure::ratio("throughput", "req/s", peak.throughput(), base.throughput(), Some(Target::AtLeast(0.75))),
            Figure::ratio("p50", "ms", peak.quantile_ms(0.5), base.quantile_ms(0.5), None),
            Figure::ratio("p99", "ms", peak.quantile_ms(0.99), base.quantile_ms(0.99), None),
        ],
        notes: [error_note("baseline", &base), error_note("meridian", &peak)].into_iter().flatten().collect(),
    }
}

// ---------------------------------------------------------------------------
// Two-node clusters (converge, wire, catchup).

async fn admin_fault(client: &reqwest::Client, url: &str, body: Option<Value>) {
    let request = match body {
        Some(body) => client.post(format!("{url}/v1/admin/faults")).json(&body),
        None => client.delete(format!("{url}/v1/admin/faults")),
    };
    let reply = request.bearer_auth(ADMIN_TOKEN).send().await.expect("faults request");
    assert!(reply.status().is_success(), "setting faults failed: {}", reply.text().await.unwrap_or_default());
}

async fn cluster(client: &reqwest::Client, url: &str) -> Value {
    client.get(format!("{url}/v1/cluster")).send().await.expect("cluster").json().await.expect("cluster json")
}

/// Starts regions a and b (b joins through a) and waits until both take writes.
async fn two_nodes(name: &str) -> TestCluster {
    let cluster_handle = tokio::task::spawn_blocking({
        let name = name.to_string();
        move || {
            let mut c = TestCluster::new(&name, &["a", "b"]);
            c.start(0, &[], &["--rate-limit-per-second", "0"]);
            c.start(1, &[0], &["--rate-limit-per-second", "0"]);
            c
        }
    });
    let c = cluster_handle.await.expect("start cluster");
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..2 {
        while cluster(&client, &c.url(i)).await["node"]["admitted"] != true {
            assert!(Instant::now() < deadline, "node {i} was not admitted within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    c
}

/// UDP bytes `from` sent towards its one peer (from the link emulator's path stats).
async fn udp_sent(client: &reqwest::Client, url: &str) -> f64 {
    let status = cluster(client, url).await;
    status["members"].as_array().map_or(0.0, |m| m.iter().filter_map(|m| m["udp_bytes_sent"].as_f64()).sum())
}

/// Protocol bytes (frames) every listed node sent to its peers, across connections.
async fn frame_bytes(client: &reqwest::Client, urls: &[String]) -> f64 {
    let mut total = 0.0;
    for url in urls {
        let status = cluster(client, url).await;
        total += status["members"].as_array().map_or(0.0, |m| m.iter().filter_map(|m| m["bytes_sent"].as_f64()).sum());
    }
    total
}

/// Whether both nodes report converged with equal digests.
async fn converged(client: &reqwest::Client, urls: &[String]) -> bool {
    let mut digests = Vec::new();
    for url in urls {
        let status = cluster(client, url).await;
        if status["converged"] != true {
            return false;
        }
        digests.push(status["node"]["digest"].clone());
    }
    digests.windows(2).all(|w| w[0] == w[1])
}

// ---------------------------------------------------------------------------
// 3. converge

/// Follows `/v1/events?prefix=...` on a node and records when each document's
/// first event arrived.
fn follow_events(url: String, prefix: String) -> (Arc<Mutex<HashMap<String, Instant>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let handle = tokio::spawn({
        let seen = seen.clone();
        async move {
            let client = reqwest::Client::new();
            let mut reply = client.get(format!("{url}/v1/events?prefix={prefix}")).send().await.expect("event stream");
            let mut pending = String::new();
            while let Ok(Some(chunk)) = reply.chunk().await {
                let now = Instant::now();
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    if let Some(data) = line.strip_prefix("data:") {
                        if let Ok(event) = serde_json::from_str::<Value>(data.trim()) {
                            if let Some(doc) = event["doc"].as_str() {
                                seen.lock().expect("seen").entry(doc.to_string()).or_insert(now);
                            }
                        }
                    }
                }
            }
        }
    });
    (seen, handle)
}

/// Writes `count` new documents at `a`, one every `gap`, and returns each
/// write's latency from acknowledgement at a to its event at b, in ms.
async fn visibility(
    a: &str,
    b: &str,
    tag: &str,
    count: usize,
    gap: Duration,
    progress: &Progress,
) -> (Vec<f64>, usize) {
    let prefix = format!("conv/{tag}/");
    let (seen, follower) = follow_events(b.to_string(), prefix.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = client();
    let mut acks = Vec::new();
    let start = Instant::now();
    let ticker = progress.run_until(start, start + gap * count as u32);
    for i in 0..count {
        let doc = format!("{prefix}{i}");
        let reply = client.put(format!("{a}/v1/docs/{doc}")).json(&json!({ "i": i })).send().await;
        if reply.is_ok_and(|r| r.status().is_success()) {
            acks.push((doc, Instant::now()));
        }
        tokio::time::sleep(gap).await;
    }
    ticker.abort();
    progress.finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("seen").len() < acks.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    follower.abort();
    let seen = seen.lock().expect("seen");
    let mut latencies = Vec::new();
    let mut missing = 0;
    for (doc, acked) in &acks {
        match seen.get(doc) {
            Some(at) if at >= acked => latencies.push(at.duration_since(*acked).as_secs_f64() * 1000.0),
            // Seen at b before a's answer reached the client: the push beat the HTTP reply.
            Some(at) => latencies.push(-(acked.duration_since(*at).as_secs_f64() * 1000.0)),
            None => missing += 1,
        }
    }
    (latencies, missing)
}

async fn converge(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let count = if options.quick { 40 } else { (options.seconds * 50.0) as usize };
    let gap = Duration::from_millis(20);
    let c = two_nodes("bench-converge").await;
    let (a, b) = (c.url(0), c.url(1));
    let client = client();
    const DELAY_MS: f64 = 35.0;
    admin_fault(&client, &a, Some(json!({ "peer_region": "b", "delay_ms": DELAY_MS as u32 }))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress.phase(format!("{count} writes, a->b delayed 35 ms"));
    let (mut delayed, missing_delayed) = visibility(&a, &b, "wan", count, gap, &progress).await;
    admin_fault(&client, &a, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress.phase(format!("{count} writes, loopback"));
    let (mut direct, missing_direct) = visibility(&a, &b, "lo", count, gap, &progress).await;
    let mut notes = vec![format!(
        "{} of {count} writes seen at b with the delay, {} of {count} without",
        delayed.len(),
        direct.len()
    )];
    if missing_delayed + missing_direct > 0 {
        notes.push(format!("{} writes never showed up at b within 10 s", missing_delayed + missing_direct));
    }
    notes.push(
        "A write is acknowledged once fsynced; the same moment it is pushed to peers (at once on a quiet link). At b it is fsynced before it is applied and announced, so a second fsync is part of every figure.".into(),
    );
    let d50 = quantile_ms(&mut delayed, 0.5);
    let d99 = quantile_ms(&mut delayed, 0.99);
    ScenarioReport {
        name: "converge".into(),
        setup: format!(
            "Two nodes over real QUIC on loopback. {count} writes at a, one every 20 ms, each a new document; the time from a's acknowledgement to the document's event on b's /v1/events stream. First with a's packets to b delayed 35 ms by the link emulator (figures minus 35 ms), then with no delay."
        ),
        figures: vec![
            Figure::plain("p50 minus 35 ms delay", "ms", d50 - DELAY_MS, None),
            Figure::plain("p99 minus 35 ms delay", "ms", d99 - DELAY_MS, Some(Target::AtMost(10.0))),
            Figure::plain("p50 loopback", "ms", quantile_ms(&mut direct, 0.5), None),
            Figure::plain("p99 loopback", "ms", quantile_ms(&mut direct, 0.99), Some(Target::AtMost(5.0))),
        ],
        notes,
    }
}

// ---------------------------------------------------------------------------
// 4. wire

/// Sum of the encoded sizes of the changes Meridian made to these documents.
async fn change_bytes(client: &reqwest::Client, url: &str, docs: impl Iterator<Item = String>) -> (f64, usize) {
    let mut bytes = 0.0;
    let mut changes = 0;
    for doc in docs {
        let history: Value = client
            .get(format!("{url}/v1/docs/{doc}/history"))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("history json");
        for change in history["changes"].as_array().into_iter().flatten() {
            if change["kind"] == "write" {
                bytes += change["bytes"].as_f64().unwrap_or(0.0);
                changes += 1;
            }
        }
    }
    (bytes, changes)
}

/// Sends `count` merge patches to `docs` documents under `prefix` at `url`,
/// from `parallel` clients; returns how many were acknowledged.
async fn write_load(
    url: &str,
    prefix: &str,
    docs: usize,
    count: usize,
    parallel: usize,
    pace: Option<Duration>,
) -> usize {
    let mut tasks = Vec::new();
    for p in 0..parallel {
        let (url, prefix) = (url.to_string(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut ok = 0;
            let mut next = Instant::now();
            for i in (p..count).step_by(parallel) {
                if let Some(pace) = pace {
                    tokio::time::sleep_until(next.into()).await;
                    next += pace;
                }
                let reply = client
                    .patch(format!("{url}/v1/docs/{prefix}{}", i % docs))
                    .header("content-type", "application/merge-patch+json")
                    .body(json!({ "count": i, "by": prefix }).to_string())
                    .send()
                    .await;
                if reply.is_ok_and(|r| r.status().is_success()) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("writer");
    }
    ok
}

async fn wait_converged(client: &reqwest::Client, urls: &[String], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if converged(client, urls).await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn wire(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let count = if options.quick { 300 } else { 3000 };
    let c = two_nodes("bench-wire").await;
    let (a, b) = (c.url(0), c.url(1));
    let urls = [a.clone(), b.clone()];
    let client = client();
    progress.step("measuring idle traffic (heartbeats) for 3 s");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let idle_start = (udp_sent(&client, &a).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate = (udp_sent(&client, &a).await - idle_start.0) / idle_start.1.elapsed().as_secs_f64();
    progress.step(&format!("{count} writes at a from 4 clients"));
    let before = (udp_sent(&client, &a).await, Instant::now());
    let acked = write_load(&a, "wire/", 100, count, 4, None).await;
    wait_converged(&client, &urls, Duration::from_secs(30)).await.expect("converged after the wire load");
    // QUIC's path statistics are sampled every 500 ms: wait for a sample that holds the whole load.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = (udp_sent(&client, &a).await, Instant::now());
    let elapsed = after.1.duration_since(before.1).as_secs_f64();
    let sent = after.0 - before.0 - idle_rate * elapsed;
    let (bytes, changes) = change_bytes(&client, &a, (0..100).map(|i| format!("wire/{i}"))).await;
    let per_change_wire = sent / acked.max(1) as f64;
    let per_change_own = bytes / changes.max(1) as f64;
    ScenarioReport {
        name: "wire".into(),
        setup: format!(
            "Two nodes over QUIC; {acked} merge patches at a (4 clients, 100 documents, back to back). UDP bytes a sent to b during the load (QUIC's own path statistics), less the idle heartbeat rate, per change; against the automerge change's own encoded size from /v1/docs/{{id}}/history."
        ),
        figures: vec![Figure::ratio("bytes per change", "B", per_change_wire, per_change_own, Some(Target::AtMost(1.3)))],
        notes: vec![
            format!("idle traffic a->b {:.0} B/s (heartbeats, acks), subtracted over {:.1} s", idle_rate, elapsed),
            "Each record on the wire carries origin, sequence, HLC and document id besides the change; under load frames batch records over a 2 ms linger, so headers and QUIC/UDP overhead are shared.".into(),
        ],
    }
}

// ---------------------------------------------------------------------------
// 5. catchup

async fn catchup(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let c = two_nodes("bench-catchup").await;
    let (a, b) = (c.url(0), c.url(1));
    let urls = [a.clone(), b.clone()];
    let client = client();
    // Protocol bytes both ways while idle (heartbeats), to subtract later.
    let idle_from = (frame_bytes(&client, &urls).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rate = (frame_bytes(&client, &urls).await - idle_from.0) / idle_from.1.elapsed().as_secs_f64();
    admin_fault(&client, &a, Some(json!({ "peer_region": "b", "cut": true }))).await;
    let secs = options.partition_secs;
    // 100 writes a second on each side, to 200 documents of its own and 50 shared ones.
    let per_side = (secs * 100.0) as usize;
    let pace = Duration::from_millis(40); // 4 writers x 25/s = 100/s
    progress.phase(format!("partitioned {secs:.0} s, writes on both sides"));
    let start = Instant::now();
    let ticker = progress.run_until(start, start + Duration::from_secs_f64(secs));
    let own_a = write_load(&a, "catch/a/", 200, per_side * 4 / 5, 4, Some(pace.mul_f64(5.0 / 4.0)));
    let own_b = write_load(&b, "catch/b/", 200, per_side * 4 / 5, 4, Some(pace.mul_f64(5.0 / 4.0)));
    let shared_a = write_load(&a, "catch/shared/", 50, per_side / 5, 1, Some(Duration::from_millis(50)));
    let shared_b = write_load(&b, "catch/shared/", 50, per_side / 5, 1, Some(Duration::from_millis(50)));
    let (oa, ob, sa, sb) = tokio::join!(own_a, own_b, shared_a, shared_b);
    ticker.abort();
    progress.finish();
    let written = oa + ob + sa + sb;
    // Missed changes: each side's own changes, which the other lacks.
    let docs = |side: &'static str| (0..200).map(move |i| format!("catch/{side}/{i}"));
    let (bytes_a, _) = change_bytes(&client, &a, docs("a")).await;
    let (bytes_b, _) = change_bytes(&client, &b, docs("b")).await;
    let (shared_bytes, _) = change_bytes(&client, &a, (0..50).map(|i| format!("catch/shared/{i}"))).await;
    let (shared_bytes_b, _) = change_bytes(&client, &b, (0..50).map(|i| format!("catch/shared/{i}"))).await;
    let missed = bytes_a + bytes_b + shared_bytes + shared_bytes_b;
    progress.step("healing");
    let healed_bytes = frame_bytes(&client, &urls).await;
    let healed = Instant::now();
    admin_fault(&client, &a, None).await;
    let mut link_up = None;
    let mut took = None;
    while healed.elapsed() < Duration::from_secs(60) {
        if link_up.is_none() {
            let members = cluster(&client, &a).await["members"].clone();
            if members.as_array().is_some_and(|m| m.iter().all(|m| m["connected"] == true)) {
                link_up = Some(healed.elapsed());
            }
        }
        if converged(&client, &urls).await {
            took = Some(healed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took_ms = took.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let link_ms = link_up.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let moved = frame_bytes(&client, &urls).await - healed_bytes - idle_rate * healed.elapsed().as_secs_f64();
    ScenarioReport {
        name: "catchup".into(),
        setup: format!(
            "Two nodes, cut apart for {secs:.0} s while each takes 100 writes/s ({written} in all; 80% to its own documents, 20% to 50 documents both sides edit), then healed; time from heal until both report converged with equal digests (polled every 10 ms), and protocol bytes (frames, both ways, less the idle heartbeat rate) from the heal until converged against the size of the changes each side missed."
        ),
        figures: vec![
            Figure::plain("heal to converged", "ms", took_ms, Some(Target::AtMost(2000.0))),
            Figure::plain("of which: heal to link up (a's view)", "ms", link_ms, None),
            Figure::ratio("bytes moved vs missed", "B", moved, missed, None),
        ],
        notes: vec![
            "The heal first needs a QUIC connection: each side redials a down peer with exponential backoff (100 ms to 1 s, jittered) and redials at once when the other's hello arrives.".into(),
        ],
    }
}

// ---------------------------------------------------------------------------
// 6. hot

fn hot(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let history = options.history;
    let fresh = if options.quick { 500 } else { 10_000 };
    let id = DocId::new("hot").expect("doc id");
    let writer_node = NodeId(1);
    let mut writer = Replica::new(writer_node);
    let mut hlc = 1_000_000_000_000u64;
    let mut stamp = || {
        hlc += 1_000;
        Hlc::new(hlc, 0)
    };
    progress.step(&format!("building a document with {} changes", fmt(history as f64)));
    let started = Instant::now();
    for i in 0..history {
        let op = WriteOp::MergePatch(json!({ "count": i, "field": format!("v{}", i % 16) }));
        writer.local_write(&id, &op, stamp(), None).expect("history write");
    }
    let build_s = started.elapsed().as_secs_f64();
    let saved = writer.document(&id).expect("hot doc").doc.save();
    progress.step(&format!("{} more changes to apply remotely", fmt(fresh as f64)));
    let mut records = Vec::new();
    for i in 0..fresh {
        let op = WriteOp::MergePatch(json!({ "count": history + i, "field": format!("w{}", i % 16) }));
        records.push(writer.local_write(&id, &op, stamp(), None).expect("fresh write").record);
    }

    // Baseline: automerge alone, one apply_changes call with every change.
    let changes: Vec<automerge::Change> = records
        .iter()
        .flat_map(|r| r.changes.iter().map(|b| automerge::Change::from_bytes(b.clone()).expect("change")))
        .collect();
    let mut plain = automerge::Automerge::load(&saved).expect("load");
    let started = Instant::now();
    plain.apply_changes(changes).expect("apply");
    let baseline_s = started.elapsed().as_secs_f64();

    // Meridian: the receiving replica applies the records as the storage
    // thread hands them over when backlogged: passes of up to BATCH_RECORDS_MAX.
    let mut replica = Replica::new(NodeId(2));
    replica.insert_document(id.clone(), Document::load(&saved).expect("load"));
    let batch = meridian_server::runtime::BATCH_RECORDS_MAX;
    let started = Instant::now();
    let mut calls = 0;
    for chunk in records.chunks(batch) {
        let outcome = replica.apply_records(chunk.to_vec());
        assert_eq!(outcome.applied, chunk.len(), "every record applies");
        calls += 1;
    }
    let meridian_s = started.elapsed().as_secs_f64();
    // A trickle: one gossip frame's worth (64 records) per pass.
    let mut trickle = Replica::new(NodeId(3));
    trickle.insert_document(id.clone(), Document::load(&saved).expect("load"));
    let trickle_records = &records[..records.len().min(640)];
    let started = Instant::now();
    for chunk in trickle_records.chunks(64) {
        trickle.apply_records(chunk.to_vec());
    }
    let trickle_rate = trickle_records.len() as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        replica.document(&id).expect("doc").doc.to_json(),
        Document::load(&plain.save()).expect("reload").to_json(),
        "Meridian and automerge end with the same document"
    );
    ScenarioReport {
        name: "hot".into(),
        setup: format!(
            "In process: one document with {} changes of history (built in {build_s:.1} s), then {} further changes from another node applied through Replica::apply_records in passes of up to {batch} records (what the storage thread hands over when backlogged); baseline: automerge's own apply_changes of the same changes in one call on the same history.",
            fmt(history as f64),
            fmt(fresh as f64)
        ),
        figures: vec![
            Figure::ratio("apply rate", "changes/s", fresh as f64 / meridian_s, fresh as f64 / baseline_s, Some(Target::AtLeast(0.5))),
            Figure::plain("apply rate, 64-record passes", "changes/s", trickle_rate, None),
        ],
        notes: vec![format!("{calls} apply calls for Meridian, 1 for the baseline")],
    }
}

// ---------------------------------------------------------------------------
// 7. scale

async fn scale(options: &Options) -> ScenarioReport {
    let progress = Progress::default();
    let n = options.docs as u64;
    let dir = TempDir::new("bench-scale");
    let node = single_node(&dir, options);
    let addr = addr_of(&node.url);
    let put = Arc::new(move |i: u64| {
        let body = serde_json::to_vec(&sample_doc(i)).expect("json");
        http_request("PUT", &format!("/v1/docs/s/{}", i % n), "application/json", &body)
    });
    // Writes until n documents exist (the request counter wraps onto ids 0..n).
    progress.step(&format!("writing {} documents", fmt(n as f64)));
    let started = Instant::now();
    let mut written = 0u64;
    while written < n {
        let remaining = n - written;
        let slice = Duration::from_secs(if remaining > 50_000 { 5 } else { 1 });
        progress.phase(format!("{} of {} written", fmt(written as f64), fmt(n as f64)));
        let offset = written;
        let put = put.clone();
        let request = Arc::new(move |i: u64| put(offset + i));
        let r = load(addr, 64, Pace::Closed, Duration::ZERO, slice, request, &progress).await;
        written += r.ok.min(remaining);
        if r.ok == 0 {
            panic!("no writes succeeded: {:?}", r.first_error);
        }
    }
    let populate_s = started.elapsed().as_secs_f64();
    let (peak_write, _) = bench::memory_mib(node.pid());
    progress.step("stopping (SIGTERM) and restarting");
    tokio::task::spawn_blocking(move || node.terminate(Duration::from_secs(120))).await.expect("stop");
    let data = dir.path().to_path_buf();
    let started = Instant::now();
    let options_for_restart = options.clone();
    let node = tokio::task::spawn_blocking(move || {
        NodeProcess::start_within(&data, &node_args(&options_for_restart), Duration::from_secs(600))
    })
    .await
    .expect("restart");
    let restart_s = started.elapsed().as_secs_f64();
    let (peak_restart, _) = bench::memory_mib(node.pid());
    progress.step("reading 1,000 documents not read since the restart");
    let client = client();
    let mut cold = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = Instant::now();
        let reply = client.get(format!("{}/v1/docs/s/{}", node.url, x % n)).send().await.expect("cold read");
        assert!(reply.status().is_success(), "cold read failed: {}", reply.status());
        let _ = reply.bytes().await;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (peak_after_reads, rss) = bench::memory_mib(node.pid());
    let resident = metric(&node.url, "meridian_documents_resident").await;
    let limit = metric(&node.url, "meridian_document_cache_limit").await;
    let loads = metric(&node.url, "meridian_document_cache_loads_total").await;
    let scale_note = if n < 1_000_000 {
        vec![format!("run with {} documents, not the target's 1,000,000", fmt(n as f64))]
    } else {
        vec![]
    };
    ScenarioReport {
        name: "scale".into(),
        setup: format!(
            "{} small documents PUT into one node ({populate_s:.0} s at 64 connections), stopped with SIGTERM, restarted; peak RSS (VmHWM) while writing and after restart, time from process start to /readyz 200, and latency of 1,000 sequential reads of random documents not read since the restart.",
            fmt(n as f64)
        ),
        figures: vec![
            Figure::plain("peak RSS while writing", "MiB", peak_write, Some(Target::AtMost(2048.0))),
            Figure::plain("peak RSS after restart", "MiB", peak_restart.max(peak_after_reads), Some(Target::AtMost(2048.0))),
            Figure::plain("restart to ready", "s", restart_s, Some(Target::AtMost(2.0))),
            Figure::plain("cold read p50", "ms", quantile_ms(&mut cold, 0.5), None),
            Figure::plain("cold read p99", "ms", quantile_ms(&mut cold, 0.99), None),
        ],
        notes: [
            scale_note,
            vec![
                format!("RSS after the reads {rss:.0} MiB"),
                format!(
                    "document cache: {} resident of {} allowed, {} cold loads since the restart",
                    fmt(resident),
                    fmt(limit),
                    fmt(loads)
                ),
            ],
        ]
        .concat(),
    }
}

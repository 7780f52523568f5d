//! Keeps `/metrics`, `docs/metrics.md` and the Grafana dashboard in sync.
//!
//! A single node and a two-node replicating cluster (so the per-peer series
//! appear) are scraped, and every family must be documented with the same
//! type and labels, every documented family must be exposed unless the doc
//! marks it conditional, every family needs `# HELP` and `# TYPE`, and names
//! must follow the Prometheus conventions. Every metric a dashboard query
//! names must be documented. Unit tests feed the checkers deliberately wrong
//! input, so a checker that accepts everything fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_tests::{NodeProcess, TempDir, TestCluster};

const DOC: &str = include_str!("../../docs/metrics.md");
const DASHBOARD: &str = include_str!("../../deploy/grafana/meridian-dashboard.json");

/// One row of the doc's families table.
#[derive(Debug, Clone)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
    unit: String,
    /// `always`, `after requests`, `replication`, or `conditional: ...`.
    present: String,
}

/// When a documented family must have samples.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    SingleNode,
    Cluster,
}

impl Documented {
    /// Whether the family must have samples in this setup (`None`: may or may not).
    fn required(&self, setup: Setup) -> Option<bool> {
        match self.present.as_str() {
            // The test makes requests before it scrapes.
            "always" | "after requests" => Some(true),
            "replication" => Some(setup == Setup::Cluster),
            _ => None,
        }
    }
}

/// Parses the `## Families` table: `| `name` | type | labels | unit | present | meaning |`.
fn documented(doc: &str) -> Result<BTreeMap<String, Documented>, String> {
    let section = doc.split("\n## Families").nth(1).ok_or("no `## Families` section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut families = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 6 {
            return Err(format!("a families row needs 6 cells: {line}"));
        }
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let name = unquote(cells[0]);
        let labels = cells[2].split(',').map(|l| unquote(l.trim())).filter(|l| !l.is_empty()).collect();
        let present = cells[4].to_string();
        let known = ["always", "after requests", "replication"];
        if !known.contains(&present.as_str()) && !present.starts_with("conditional:") {
            return Err(format!("{name}: present must be one of {known:?} or `conditional: ...`, not {present:?}"));
        }
        let family = Documented { kind: cells[1].to_string(), labels, unit: cells[3].to_string(), present };
        if families.insert(name.clone(), family).is_some() {
            return Err(format!("{name} is documented twice"));
        }
    }
    if families.is_empty() {
        return Err("the families table has no rows".into());
    }
    Ok(families)
}

/// One sample line: full sample name and labels.
type Sample = (String, BTreeMap<String, String>);

/// A family as exposed.
#[derive(Debug, Default)]
struct Exposed {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

/// Parses `name{a="b",...} value` with quoted, escaped label values (routes contain braces).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let malformed = || format!("malformed sample: {line}");
    let name_end = line.find(['{', ' ']).ok_or_else(malformed)?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut at = 0;
        loop {
            let here = &inner[at..];
            if let Some(after) = here.strip_prefix('}') {
                rest = after;
                break;
            }
            if here.starts_with(',') {
                at += 1;
                continue;
            }
            let eq = here.find("=\"").ok_or_else(malformed)?;
            let key = here[..eq].to_string();
            at += eq + 2;
            let mut value = String::new();
            let mut chars = inner[at..].char_indices();
            loop {
                match chars.next().ok_or_else(malformed)? {
                    (_, '\\') => match chars.next().ok_or_else(malformed)?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (end, '"') => {
                        at += end + 1;
                        break;
                    }
                    (_, c) => value.push(c),
                }
            }
            if labels.insert(key, value).is_some() {
                return Err(malformed());
            }
        }
    }
    let value = rest.trim();
    if value.is_empty() || (value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value)) {
        return Err(malformed());
    }
    Ok((name, labels))
}

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Units Prometheus wants spelled as base units, or not abbreviated.
const NON_BASE_UNITS: [&str; 16] = [
    "ms",
    "msec",
    "millis",
    "milliseconds",
    "us",
    "micros",
    "microseconds",
    "ns",
    "nanoseconds",
    "sec",
    "secs",
    "minutes",
    "hours",
    "kb",
    "mb",
    "percent",
];

fn snake_case(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// Every problem with an exposition against the doc, for one setup.
fn check(text: &str, doc: &BTreeMap<String, Documented>, setup: Setup) -> Vec<String> {
    let mut problems = Vec::new();
    let mut families: BTreeMap<String, Exposed> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = families.entry(name.to_string()).or_default();
            if family.help.replace(help.trim().to_string()).is_some() {
                problems.push(format!("{name}: HELP given twice"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = families.entry(name.to_string()).or_default();
            if !family.samples.is_empty() {
                problems.push(format!("{name}: TYPE after its samples"));
            }
            if family.kind.replace(kind.trim().to_string()).is_some() {
                problems.push(format!("{name}: TYPE given twice"));
            }
        } else if line.starts_with('#') {
            continue;
        } else {
            let sample = match parse_sample(line) {
                Ok(sample) => sample,
                Err(err) => {
                    problems.push(err);
                    continue;
                }
            };
            // A histogram's samples belong to the family without the suffix.
            let family_name = HISTOGRAM_SUFFIXES
                .iter()
                .filter_map(|suffix| sample.0.strip_suffix(suffix))
                .find(|base| families.get(*base).is_some_and(|f| f.kind.as_deref() == Some("histogram")))
                .unwrap_or(&sample.0)
                .to_string();
            match families.get_mut(&family_name) {
                Some(family) if family.kind.is_some() => family.samples.push(sample),
                _ => problems.push(format!("{}: sample without a TYPE line before it", sample.0)),
            }
        }
    }
    for (name, family) in &families {
        if family.help.as_deref().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no HELP text"));
        }
        let kind = family.kind.as_deref().unwrap_or("");
        if !["counter", "gauge", "histogram"].contains(&kind) {
            problems.push(format!("{name}: TYPE {kind:?} is not counter, gauge or histogram"));
        }
        if !snake_case(name) {
            problems.push(format!("{name}: not snake_case"));
        }
        if !name.starts_with("meridian_") && !name.starts_with("process_") {
            problems.push(format!("{name}: no meridian_ prefix"));
        }
        if kind == "counter" && !name.ends_with("_total") {
            problems.push(format!("{name}: a counter must end in _total"));
        }
        if kind != "counter" && name.ends_with("_total") {
            problems.push(format!("{name}: only counters end in _total"));
        }
        if let Some(unit) = name.split('_').find(|part| NON_BASE_UNITS.contains(part)) {
            problems.push(format!("{name}: unit {unit:?} is not a base unit (seconds, bytes) spelt out"));
        }
        if kind != "histogram" && HISTOGRAM_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            problems.push(format!("{name}: only histogram samples end in _bucket, _sum or _count"));
        }
        let mut label_sets: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        let mut inf_buckets: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
        let mut counts: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
        for (sample, labels) in &family.samples {
            for label in labels.keys() {
                if !snake_case(label) {
                    problems.push(format!("{name}: label {label:?} is not lowercase snake_case"));
                }
            }
            let mut keys: BTreeSet<String> = labels.keys().cloned().collect();
            let others: Vec<(String, String)> =
                labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            if kind == "histogram" {
                let suffix = sample.strip_prefix(name.as_str()).unwrap_or("");
                match suffix {
                    "_bucket" if labels.contains_key("le") => {
                        keys.remove("le");
                        if labels["le"] == "+Inf" {
                            inf_buckets.insert(others);
                        }
                    }
                    "_bucket" => problems.push(format!("{sample}: bucket without le")),
                    "_sum" | "_count" if !labels.contains_key("le") => {
                        if suffix == "_count" {
                            counts.insert(others);
                        }
                    }
                    _ => problems.push(format!("{sample}: not a _bucket, _sum or _count sample of {name}")),
                }
            } else if labels.contains_key("le") {
                problems.push(format!("{sample}: le is reserved for histogram buckets"));
            }
            label_sets.insert(keys);
        }
        if inf_buckets != counts {
            problems.push(format!("{name}: every histogram series needs a +Inf bucket and a _count"));
        }
        match doc.get(name) {
            None => problems.push(format!("{name}: not documented in docs/metrics.md")),
            Some(documented) => {
                if documented.kind != kind {
                    problems.push(format!("{name}: exposed as {kind}, documented as {}", documented.kind));
                }
                for labels in &label_sets {
                    if *labels != documented.labels {
                        problems.push(format!("{name}: labels {labels:?}, documented {:?}", documented.labels));
                    }
                }
                for (suffix, unit) in [("_seconds", "seconds"), ("_bytes", "bytes")] {
                    let base = name.trim_end_matches("_total");
                    if base.ends_with(suffix) && documented.unit != unit {
                        problems.push(format!("{name}: documented unit {:?}, name says {unit}", documented.unit));
                    }
                }
            }
        }
    }
    for (name, documented) in doc {
        let has_samples = families.get(name).is_some_and(|f| !f.samples.is_empty());
        match documented.required(setup) {
            Some(true) if !has_samples => {
                problems.push(format!("{name}: documented ({}) but not exposed", documented.present))
            }
            Some(false) if has_samples => {
                problems.push(format!("{name}: documented as {:?} but has samples here", documented.present))
            }
            _ => {}
        }
    }
    problems
}

/// Every metric name in the dashboard's strings (queries, variables), each
/// mapped to its family; problems for names that are not documented.
fn check_dashboard(json: &str, doc: &BTreeMap<String, Documented>) -> Vec<String> {
    let mut problems = Vec::new();
    let dashboard: serde_json::Value = match serde_json::from_str(json) {
        Ok(value) => value,
        Err(err) => return vec![format!("dashboard is not JSON: {err}")],
    };
    if !dashboard["__inputs"].as_array().is_some_and(|inputs| inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS")) {
        problems.push("dashboard has no DS_PROMETHEUS input".into());
    }
    if dashboard["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push("dashboard schemaVersion missing or older than 36".into());
    }
    let mut strings = Vec::new();
    collect_strings(&dashboard, &mut strings);
    let mut exprs = 0;
    collect_exprs(&dashboard, &mut exprs);
    if exprs == 0 {
        problems.push("dashboard has no query".into());
    }
    for text in strings {
        for name in metric_names(&text) {
            let family = HISTOGRAM_SUFFIXES
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| doc.get(*base).is_some_and(|d| d.kind == "histogram"))
                .unwrap_or(&name);
            if !doc.contains_key(family) {
                problems.push(format!("dashboard uses {name}, which docs/metrics.md does not document"));
            }
        }
    }
    problems
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn collect_exprs(value: &serde_json::Value, count: &mut usize) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, count)),
        serde_json::Value::Object(map) => {
            *count += usize::from(map.get("expr").and_then(|e| e.as_str()).is_some_and(|e| !e.trim().is_empty()));
            map.values().for_each(|v| collect_exprs(v, count));
        }
        _ => {}
    }
}

/// Words `meridian_...` or `process_...` in a string.
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("meridian_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Writes, reads and lists once, so the HTTP families have samples.
async fn exercise(client: &reqwest::Client, url: &str) {
    let put = client.put(format!("{url}/v1/docs/metrics/probe")).json(&serde_json::json!({"n": 1})).send().await;
    assert!(put.unwrap().status().is_success());
    client.get(format!("{url}/v1/docs/metrics/probe")).send().await.unwrap();
    client.get(format!("{url}/v1/docs?prefix=metrics/")).send().await.unwrap();
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    let reply = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let content_type = reply.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    reply.text().await.unwrap()
}

/// Scrapes until the exposition passes (peers take a moment to connect and
/// measure an RTT), then asserts on the last scrape.
async fn assert_in_sync(client: &reqwest::Client, url: &str, setup: Setup) {
    let doc = documented(DOC).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(client, url).await;
        let problems = check(&text, &doc, setup);
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{url}/metrics and docs/metrics.md disagree:\n  {}\n\n{text}", problems.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_metrics_match_the_doc() {
    let dir = TempDir::new("metrics-single");
    let node = NodeProcess::start(&dir.path().join("data"), &[]);
    let client = client();
    exercise(&client, &node.url).await;
    assert_in_sync(&client, &node.url, Setup::SingleNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_match_the_doc() {
    let mut cluster = TestCluster::new("metrics-cluster", &["us-east", "eu-west"]);
    cluster.start(0, &[], &[]);
    cluster.start(1, &[0], &[]);
    let client = client();
    for i in 0..2 {
        exercise(&client, &cluster.url(i)).await;
    }
    for i in 0..2 {
        assert_in_sync(&client, &cluster.url(i), Setup::Cluster).await;
    }
}

#[test]
fn the_doc_table_parses() {
    let doc = documented(DOC).unwrap();
    assert!(doc.len() >= 30, "only {} families documented", doc.len());
    assert_eq!(
        doc["meridian_peer_state"].labels,
        BTreeSet::from(["peer_region".into(), "peer".into(), "state".into()])
    );
    assert_eq!(doc["meridian_write_duration_seconds"].kind, "histogram");
}

#[test]
fn the_dashboard_uses_only_documented_families() {
    let doc = documented(DOC).unwrap();
    let problems = check_dashboard(DASHBOARD, &doc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The dashboard covers the series operators look at first.
    for family in [
        "meridian_http_request_duration_seconds",
        "meridian_peer_staleness_seconds",
        "meridian_peer_bytes_sent_total",
        "meridian_peer_queue_bytes",
        "meridian_peer_state",
        "meridian_peer_clock_offset_seconds",
        "meridian_peer_frames_refused_total",
        "meridian_fsync_duration_seconds",
        "meridian_checkpoint_duration_seconds",
    ] {
        assert!(DASHBOARD.contains(family), "the dashboard has no panel on {family}");
    }
}

#[test]
fn the_dashboard_checker_refuses_an_undocumented_family() {
    let doc = documented(DOC).unwrap();
    let bad = r#"{"__inputs":[{"name":"DS_PROMETHEUS"}],"schemaVersion":39,
        "panels":[{"targets":[{"expr":"rate(meridian_widgets_total[5m]) + meridian_fsync_duration_seconds_bucket"}]}]}"#;
    let problems = check_dashboard(bad, &doc);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("meridian_widgets_total"), "{problems:?}");
    assert!(!check_dashboard("{}", &doc).is_empty());
}

#[test]
fn the_checker_refuses_a_wrong_exposition() {
    let doc = documented(DOC).unwrap();
    let bad = r#"# HELP meridian_documents Documents.
# TYPE meridian_documents counter
meridian_documents 1
# TYPE meridian_widgets counter
meridian_widgets 3
# HELP meridian_undocumented_total Not in the doc.
# TYPE meridian_undocumented_total counter
meridian_undocumented_total{Peer="x"} 1
# HELP meridian_recovery_milliseconds Old name.
# TYPE meridian_recovery_milliseconds gauge
meridian_recovery_milliseconds 6
# HELP meridian_write_duration_seconds Latency.
# TYPE meridian_write_duration_seconds histogram
meridian_write_duration_seconds_bucket{le="0.1"} 1
meridian_write_duration_seconds_count 1
# HELP meridian_peer_up Up.
# TYPE meridian_peer_up gauge
meridian_peer_up{peer_region="a"} 1
orphan_sample 1
meridian_route_total{route="/v1/{*id}" 1
"#;
    let problems = check(bad, &doc, Setup::SingleNode);
    let text = problems.join("\n");
    for expected in [
        "meridian_documents: exposed as counter, documented as gauge",
        "meridian_documents: a counter must end in _total",
        "meridian_widgets: no HELP text",
        "meridian_widgets: a counter must end in _total",
        "meridian_widgets: not documented",
        "meridian_undocumented_total: not documented",
        "meridian_undocumented_total: label \"Peer\" is not lowercase snake_case",
        "meridian_recovery_milliseconds: unit \"milliseconds\"",
        "meridian_write_duration_seconds: every histogram series needs a +Inf bucket",
        "meridian_peer_up: labels",
        "meridian_peer_up: documented as \"replication\" but has samples here",
        "orphan_sample: sample without a TYPE",
        "malformed sample: meridian_route_total",
        "meridian_log_bytes: documented (always) but not exposed",
    ] {
        assert!(text.contains(expected), "the checker missed {expected:?}; it said:\n{text}");
    }
}

#[test]
fn the_doc_parser_refuses_a_malformed_table() {
    assert!(documented("no table").is_err());
    let bad_presence = "## Families\n\n| `meridian_x` | gauge | | bytes | sometimes | x |\n";
    assert!(documented(bad_presence).is_err());
    let twice = "## Families\n\n| `meridian_x` | gauge | | bytes | always | x |\n| `meridian_x` | gauge | | bytes | always | x |\n";
    assert!(documented(twice).is_err());
}

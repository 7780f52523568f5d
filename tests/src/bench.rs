//! The benchmark harness's parts: an HTTP/1.1 load generator, latency
//! statistics, a progress line, the summary table, and the JSON and
//! `docs/benchmarks.md` reports. The scenarios themselves live in
//! `src/bin/bench.rs`.
//!
//! The load generator is a few lines of raw HTTP/1.1 over keep-alive TCP
//! rather than a full client: on two shared cores every cycle the generator
//! spends is a cycle the server under test does not get, and Meridian and
//! its baseline are driven by exactly the same code, so ratios stay fair.
//!
//! Open-loop load (a fixed request rate) measures latency from each
//! request's *scheduled* send time, not from when it was actually sent, so a
//! stalled server cannot hide its queueing delay (coordinated omission).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Builds the bytes of request number `i` (a complete HTTP/1.1 request).
pub type RequestFn = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

/// A complete HTTP/1.1 request with a body, keep-alive.
pub fn http_request(method: &str, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A complete HTTP/1.1 GET, keep-alive.
pub fn http_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").into_bytes()
}

/// What one load phase measured.
#[derive(Default)]
pub struct LoadResult {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Latency of every 2xx answer, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Paced phases only: how late each request was sent after its
    /// scheduled time, in microseconds. Latency counts from the schedule
    /// (so a slow answer delays the requests behind it on its connection,
    /// as it would a real client's); this says how much of that is queueing
    /// on the connection or a starved load generator rather than the server.
    pub late_us: Vec<u32>,
    /// Paced phases only: the part of `late_us` already there before the
    /// connection waited for its slot, because the previous answer on it
    /// came back after this request's scheduled time. The rest of the
    /// lateness is the load generator waking late (starved of CPU).
    pub behind_us: Vec<u32>,
    /// Paced phases only: latency from the actual send, not the schedule,
    /// so neither kind of lateness is in it.
    pub from_send_us: Vec<u32>,
}

impl LoadResult {
    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        quantile_us(&mut self.latencies_us, q) / 1000.0
    }

    /// Adds another phase's counts, latencies and time to this one.
    pub fn absorb(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
        self.late_us.extend(other.late_us);
        self.behind_us.extend(other.behind_us);
        self.from_send_us.extend(other.from_send_us);
        self.elapsed += other.elapsed;
    }
}

/// A duration as whole microseconds, saturating.
fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Quantile `q` of microsecond samples (sorts them), in microseconds.
pub fn quantile_us(samples: &mut [u32], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[rank.min(samples.len() - 1)] as f64
}

/// Quantile `q` of millisecond samples (sorts them).
pub fn quantile_ms(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// How a load phase paces its requests.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Every connection sends its next request as soon as the last is answered.
    Closed,
    /// A fixed total rate in requests per second, spread over the connections.
    Rate(f64),
}

/// Drives `connections` keep-alive connections against `addr` for `warmup`
/// (not measured) and then `measure`, and counts what came back.
pub async fn load(
    addr: SocketAddr,
    connections: usize,
    pace: Pace,
    warmup: Duration,
    measure: Duration,
    request: RequestFn,
    progress: &Progress,
) -> LoadResult {
    let counter = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let request = request.clone();
        let counter = counter.clone();
        let measuring = measuring.clone();
        let interval = match pace {
            Pace::Closed => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(connections as f64 / rate.max(1.0))),
        };
        // Spread the connections' schedules over one interval.
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(16 << 10);
            let mut scheduled = start + offset;
            loop {
                // Lateness before the wait: the previous answer came back after
                // this request's slot (the server, or its answer read late).
                let behind = interval.map(|_| Instant::now().saturating_duration_since(scheduled));
                if interval.is_some() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let sent_at = if interval.is_some() { scheduled } else { Instant::now() };
                if sent_at >= end {
                    break;
                }
                let actual_send = Instant::now();
                let late = interval.map(|_| actual_send.saturating_duration_since(sent_at));
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let bytes = request(i);
                let outcome = exchange(&mut conn, addr, &bytes, &mut buf).await;
                let done = Instant::now();
                if sent_at >= measure_from && done <= end + Duration::from_secs(5) {
                    measuring.store(true, Ordering::Relaxed);
                    match outcome {
                        Ok(status) if (200..300).contains(&status) => {
                            result.ok += 1;
                            if let (Some(late), Some(behind)) = (late, behind) {
                                result.late_us.push(micros(late));
                                result.behind_us.push(micros(behind.min(late)));
                                result.from_send_us.push(micros(done.duration_since(actual_send)));
                            }
                            result.latencies_us.push(micros(done.duration_since(sent_at)));
                        }
                        Ok(status) => {
                            result.errors += 1;
                            result.first_error.get_or_insert_with(|| {
                                format!("status {status}: {}", String::from_utf8_lossy(&buf[..buf.len().min(300)]))
                            });
                        }
                        Err(err) => {
                            result.errors += 1;
                            result.first_error.get_or_insert(err);
                        }
                    }
                }
                if let Some(interval) = interval {
                    scheduled += interval;
                }
            }
            result
        }));
    }
    let ticker = progress.run_until(start, end);
    let mut total = LoadResult::default();
    for task in tasks {
        // Each connection's result has no elapsed time of its own; the phase's is set below.
        total.absorb(task.await.expect("load task"));
    }
    ticker.abort();
    progress.finish();
    total.elapsed = measure;
    total
}

/// Sends one request on the connection (opening it if needed), reads the
/// response into `buf`, and returns its status. The connection is dropped on
/// any error or `connection: close` so the next request opens a new one.
async fn exchange(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<u16, String> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        *conn = Some(stream);
    }
    let stream = conn.as_mut().expect("connected");
    let result = async {
        stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        read_response(stream, buf).await
    }
    .await;
    match result {
        Ok((status, close)) => {
            if close {
                *conn = None;
            }
            Ok(status)
        }
        Err(err) => {
            *conn = None;
            Err(err)
        }
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) into `buf`;
/// returns its status and whether the server closes the connection.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    buf.clear();
    let head_end = loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if stream.read_buf(buf).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed before a response".into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or("no status line")?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    // No allocation per header line: the load generator shares the cores
    // with the server it measures, so its own cost per header would count
    // against whichever server answers with more headers.
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        // Read until the terminating zero-size chunk.
        while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
            if stream.read_buf(buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("connection closed inside a chunked body".into());
            }
        }
    } else {
        let want = head_end + length.unwrap_or(0);
        while buf.len() < want {
            if stream.read_buf(buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("connection closed inside a body".into());
            }
        }
    }
    Ok((status, close))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A one-line progress bar on stderr: the phase, a bar over its planned
/// duration, and elapsed seconds.
#[derive(Clone, Default)]
pub struct Progress {
    label: Arc<std::sync::Mutex<String>>,
}

impl Progress {
    /// Names the phase the next [`Progress::run_until`] shows.
    pub fn phase(&self, label: impl Into<String>) {
        *self.label.lock().expect("progress") = label.into();
    }

    /// Shows a bar from `start` to `end`, updated five times a second, until aborted.
    pub fn run_until(&self, start: Instant, end: Instant) -> tokio::task::JoinHandle<()> {
        let label = self.label.lock().expect("progress").clone();
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !terminal {
            // In a log, one line per phase rather than a redrawn bar.
            eprintln!("  {label} ({:.0} s)", end.duration_since(start).as_secs_f64());
        }
        tokio::spawn(async move {
            if !terminal {
                return;
            }
            let total = end.duration_since(start).as_secs_f64().max(1e-3);
            loop {
                let done = start.elapsed().as_secs_f64().min(total);
                let width = 30;
                let filled = ((done / total) * width as f64) as usize;
                eprint!(
                    "\r  {label:<34} [{}{}] {done:5.1}/{total:.0} s ",
                    "#".repeat(filled),
                    "-".repeat(width - filled.min(width))
                );
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Ends the current bar's line.
    pub fn finish(&self) {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let label = self.label.lock().expect("progress").clone();
            eprintln!("\r  {label:<34} done{}", " ".repeat(44));
        }
    }

    /// Prints a step that has no planned duration.
    pub fn step(&self, text: &str) {
        eprintln!("  {text}");
    }
}

/// Whether a higher or a lower figure is better, and the bound it must meet.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// At least this.
    AtLeast(f64),
    /// At most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(bound) => value >= bound,
            Target::AtMost(bound) => value <= bound,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(bound) => format!(">= {}", fmt(bound)),
            Target::AtMost(bound) => format!("<= {}", fmt(bound)),
        }
    }
}

/// One line of a scenario's result.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What is measured.
    pub name: String,
    /// Unit of `meridian` and `baseline`.
    pub unit: String,
    /// Meridian's figure.
    pub meridian: f64,
    /// The baseline's figure in the same run, if the line compares.
    pub baseline: Option<f64>,
    /// The target, applied to the ratio when there is a baseline, else to the figure.
    pub target: Option<Target>,
}

impl Figure {
    /// A figure compared with a baseline; the target applies to meridian/baseline.
    pub fn ratio(name: &str, unit: &str, meridian: f64, baseline: f64, target: Option<Target>) -> Figure {
        Figure { name: name.into(), unit: unit.into(), meridian, baseline: Some(baseline), target }
    }

    /// A figure on its own; the target applies to it.
    pub fn plain(name: &str, unit: &str, meridian: f64, target: Option<Target>) -> Figure {
        Figure { name: name.into(), unit: unit.into(), meridian, baseline: None, target }
    }

    fn checked(&self) -> Option<f64> {
        match self.baseline {
            Some(b) => Some(self.meridian / b),
            None => self.target.map(|_| self.meridian),
        }
    }

    /// Whether the target is met (true when there is none).
    pub fn met(&self) -> bool {
        match (self.target, self.checked()) {
            (Some(t), Some(v)) => t.met(v),
            _ => true,
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "unit": self.unit,
            "meridian": finite(self.meridian),
            "baseline": self.baseline.map(finite),
            "ratio": self.baseline.map(|b| finite(self.meridian / b)),
            "target": self.target.map(|t| t.text()),
            "met": self.target.map(|_| self.met()),
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Formats a figure with a sensible number of digits.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        let whole = v.round() as i64;
        let s = whole.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if whole < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// What one scenario measured.
pub struct ScenarioReport {
    /// Scenario name (`write`, `read`, ...).
    pub name: String,
    /// What was run, in a sentence.
    pub setup: String,
    /// The figures.
    pub figures: Vec<Figure>,
    /// What limits the figures, as far as the run could tell.
    pub notes: Vec<String>,
}

impl ScenarioReport {
    /// The summary table as Markdown (also printed on the terminal).
    pub fn table(&self) -> String {
        let mut out =
            String::from("| figure | meridian | baseline | ratio | target | met |\n|---|--:|--:|--:|--:|:-:|\n");
        for f in &self.figures {
            let unit = if f.unit.is_empty() { String::new() } else { format!(" {}", f.unit) };
            out.push_str(&format!(
                "| {} | {}{unit} | {} | {} | {} | {} |\n",
                f.name,
                fmt(f.meridian),
                f.baseline.map_or("".into(), |b| format!("{}{unit}", fmt(b))),
                f.baseline.map_or("".into(), |b| format!("{:.2}x", f.meridian / b)),
                f.target.map_or("".into(), |t| t.text() + if f.baseline.is_some() { "x" } else { "" }),
                match f.target {
                    None => "",
                    Some(_) if f.met() => "yes",
                    Some(_) => "**no**",
                },
            ));
        }
        out
    }

    /// The report as JSON.
    pub fn json(&self, machine: &Value, command: &str) -> Value {
        json!({
            "scenario": self.name,
            "setup": self.setup,
            "command": command,
            "machine": machine,
            "figures": self.figures.iter().map(Figure::json).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    /// The scenario's section of `docs/benchmarks.md`.
    pub fn markdown(&self, machine: &Value, command: &str, date: &str) -> String {
        let mut out = format!(
            "Measured {date} on {} ({} cores), `{command}`.\n\n{}\n\n{}",
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cores"],
            self.setup,
            self.table()
        );
        for note in &self.notes {
            out.push_str(&format!("\n- {note}"));
        }
        out.push('\n');
        out
    }
}

/// The machine the run is on: CPU model, cores, memory, kernel.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    json!({ "cpu": cpu, "cores": cores, "memory_gib": mem_gib, "kernel": kernel })
}

/// Replaces the scenario's section between its markers in `docs/benchmarks.md`
/// (appending one if it has none), so the file always holds the latest run of each.
pub fn update_docs(path: &std::path::Path, scenario: &str, section: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let begin = format!("<!-- bench:{scenario} -->");
    let end = format!("<!-- /bench:{scenario} -->");
    let block = format!("{begin}\n{section}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n\n## {scenario}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, updated)
}

/// Peak and current resident memory of a process, in MiB (from /proc).
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile_us(&mut samples, 0.5), 51.0);
        assert_eq!(quantile_us(&mut samples, 0.99), 99.0);
        assert!(quantile_us(&mut [], 0.5).is_nan());
    }

    #[test]
    fn a_missed_target_shows_in_the_table() {
        let report = ScenarioReport {
            name: "t".into(),
            setup: String::new(),
            figures: vec![
                Figure::ratio("throughput", "req/s", 40.0, 100.0, Some(Target::AtLeast(0.5))),
                Figure::plain("p99", "ms", 4.0, Some(Target::AtMost(10.0))),
            ],
            notes: vec![],
        };
        let table = report.table();
        assert!(table.contains("0.40x") && table.contains("**no**"), "{table}");
        assert!(table.lines().last().unwrap().contains("| yes |"), "{table}");
    }

    #[test]
    fn docs_sections_are_replaced_not_duplicated() {
        let dir = crate::TempDir::new("bench-docs");
        let path = dir.path().join("benchmarks.md");
        update_docs(&path, "write", "first\n").unwrap();
        update_docs(&path, "read", "other\n").unwrap();
        update_docs(&path, "write", "second\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("second") && !text.contains("first") && text.contains("other"), "{text}");
        assert_eq!(text.matches("## write").count(), 1, "{text}");
    }
}

//! `meridian demo`: a multi-region cluster on one machine, in one command.
//!
//! The demo starts one `meridian serve` process per region (the same
//! binary), each with its own data directory under `--dir`, certificates
//! and an admin token made on first run, and WAN-like one-way delays between
//! regions (half the public round-trip time, with a little jitter), imposed
//! by each node's own link emulation. It prints where everything is, stays
//! in the foreground, reports a region that crashes, and stops every region
//! cleanly on Ctrl-C.
//!
//! A second terminal drives the running demo: `meridian demo status`,
//! `partition <region>`, `heal`, `kill <region>`, `restart <region>`. They
//! find the demo through `<dir>/demo.json`; kill and restart go through the
//! supervisor's small control endpoint, so restarted regions stay its children.
//!
//! Every region serves the live dashboard at `/`. The supervisor tells each
//! region where the others and the control endpoint are (environment
//! variables the dashboard reads), and the control endpoint answers the
//! dashboard's `GET /status` and, with the admin token, its kill, restart and
//! load buttons.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http_client;

/// Regions started when `--regions` is not given.
pub const DEFAULT_REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-southeast"];
/// Most regions a demo runs.
pub const REGIONS_MAX: usize = 9;

/// Flags of `meridian demo`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    /// Drive a running demo instead of starting one.
    #[command(subcommand)]
    pub action: Option<DemoAction>,
    /// Regions to start, comma-separated (1 to 9)
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_REGIONS.map(String::from))]
    pub regions: Vec<String>,
    /// Directory for the demo's data, certificates and state
    #[arg(long, default_value = "meridian-demo", global = true)]
    pub dir: PathBuf,
    /// Wipe the directory first
    #[arg(long)]
    pub fresh: bool,
    /// No emulated WAN delays between regions
    #[arg(long)]
    pub no_latency: bool,
    /// Run a built-in workload at this many writes per second across regions
    #[arg(long, value_name = "WRITES_PER_SECOND")]
    pub load: Option<u32>,
    /// First HTTP port (regions use consecutive ports; peers use this + 100, the control endpoint this - 1)
    #[arg(long, default_value_t = 7070)]
    pub base_port: u16,
}

/// Commands for a running demo.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DemoAction {
    /// Show every region: up or down, documents, digest, staleness, convergence.
    Status,
    /// Cut a region off from all others (both directions).
    Partition {
        /// The region to isolate.
        region: String,
    },
    /// Heal every partition (WAN delays stay in force).
    Heal,
    /// Kill a region's process (kill -9).
    Kill {
        /// The region.
        region: String,
    },
    /// Restart a killed region.
    Restart {
        /// The region.
        region: String,
    },
}

/// What a running demo writes to `<dir>/demo.json` so other commands find it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DemoState {
    /// The supervisor's process id.
    pub supervisor_pid: u32,
    /// Its control endpoint.
    pub control: String,
    /// Admin bearer token of every region.
    pub admin_token: String,
    /// Whether WAN delays are emulated.
    pub latency: bool,
    /// The regions.
    pub regions: Vec<RegionState>,
}

/// One region of a running demo.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RegionState {
    /// Region name.
    pub name: String,
    /// HTTP address.
    pub http: String,
    /// Peer (QUIC) address.
    pub peer: String,
}

/// Approximate public round-trip times between well-known regions, in ms.
fn rtt_ms(a: &str, b: &str) -> u32 {
    let known: [(&str, &str, u32); 3] =
        [("us-east", "eu-west", 70), ("us-east", "ap-southeast", 220), ("eu-west", "ap-southeast", 170)];
    for (x, y, rtt) in known {
        if (a == x && b == y) || (a == y && b == x) {
            return rtt;
        }
    }
    // Other names get a stable made-up distance between 40 and 240 ms.
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let hash = lo
        .bytes()
        .chain([b'|'])
        .chain(hi.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    40 + (hash % 200) as u32
}

/// The one-way fault a node imposes towards `other`.
fn latency_fault(me: &str, other: &str) -> serde_json::Value {
    let one_way = rtt_ms(me, other) / 2;
    json!({ "peer_region": other, "delay_ms": one_way, "jitter_ms": (one_way / 20).max(1) })
}

fn validate_regions(regions: &[String]) -> Result<(), String> {
    if regions.is_empty() || regions.len() > REGIONS_MAX {
        return Err(format!("--regions takes 1 to {REGIONS_MAX} names, got {}", regions.len()));
    }
    for region in regions {
        crate::certs::validate_node_name(region).map_err(|err| format!("region {region:?}: {err}"))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = regions.iter().find(|r| !seen.insert(*r)) {
        return Err(format!("region {dup:?} is listed twice"));
    }
    Ok(())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("demo.json")
}

fn load_state(dir: &Path) -> Result<DemoState, String> {
    let path = state_path(dir);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!("no running demo found ({} is missing); start one with `meridian demo`", path.display())
    })?;
    serde_json::from_str(&text).map_err(|err| format!("{} is unreadable ({err}); restart the demo", path.display()))
}

/// Entry point for `meridian demo ...`; returns the process exit code.
pub fn run(args: DemoArgs) -> i32 {
    let result = match args.action.clone() {
        None => supervise(args),
        Some(action) => drive(&args.dir, action),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("meridian demo: {message}");
            1
        }
    }
}

/// Runs one command against a running demo.
fn drive(dir: &Path, action: DemoAction) -> Result<(), String> {
    let state = load_state(dir)?;
    let auth = format!("Bearer {}", state.admin_token);
    let region = |name: &str| {
        state.regions.iter().find(|r| r.name == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = state.regions.iter().map(|r| r.name.as_str()).collect();
            format!("no region {name:?} in this demo; regions are {}", names.join(", "))
        })
    };
    let timeout = Duration::from_secs(5);
    let post_fault = |http: &str, fault: &serde_json::Value| {
        http_client::request(
            http,
            "POST",
            "/v1/admin/faults",
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(&fault.to_string()),
            timeout,
        )
    };
    match action {
        DemoAction::Status => {
            println!(
                "{:<14} {:<22} {:<6} {:>6} {:>10} {:>14}  CONVERGED",
                "REGION", "HTTP", "STATE", "DOCS", "DIGEST", "STALENESS MS"
            );
            for r in &state.regions {
                match http_client::request(&r.http, "GET", "/v1/cluster", &[], None, timeout) {
                    Ok(reply) if reply.status == 200 => {
                        let c = reply.json();
                        let staleness = c["convergence"][0]["origins"]
                            .as_object()
                            .map(|o| o.values().filter_map(|v| v["staleness_ms"].as_u64()).max().unwrap_or(0))
                            .unwrap_or(0);
                        println!(
                            "{:<14} {:<22} {:<6} {:>6} {:>10} {:>14}  {}",
                            r.name,
                            format!("http://{}", r.http),
                            "up",
                            c["node"]["documents"].as_u64().unwrap_or(0),
                            c["node"]["digest"].as_str().unwrap_or("").get(..8).unwrap_or(""),
                            staleness,
                            c["converged"].as_bool().unwrap_or(false)
                        );
                    }
                    _ => println!("{:<14} {:<22} {:<6}", r.name, format!("http://{}", r.http), "down"),
                }
            }
            Ok(())
        }
        DemoAction::Partition { region: name } => {
            let target = region(&name)?;
            for other in state.regions.iter().filter(|r| r.name != target.name) {
                let mut cut = if state.latency {
                    latency_fault(&target.name, &other.name)
                } else {
                    json!({"peer_region": other.name})
                };
                cut["cut"] = json!(true);
                post_fault(&target.http, &cut).map_err(|e| format!("{}: {e}", target.name))?;
                let mut back = if state.latency {
                    latency_fault(&other.name, &target.name)
                } else {
                    json!({"peer_region": target.name})
                };
                back["cut"] = json!(true);
                let _ = post_fault(&other.http, &back);
            }
            println!("{name} is cut off from every other region; `meridian demo heal` reconnects it");
            Ok(())
        }
        DemoAction::Heal => {
            for r in &state.regions {
                let _ = http_client::request(
                    &r.http,
                    "DELETE",
                    "/v1/admin/faults",
                    &[("authorization", &auth)],
                    None,
                    timeout,
                );
                if state.latency {
                    for other in state.regions.iter().filter(|o| o.name != r.name) {
                        let _ = post_fault(&r.http, &latency_fault(&r.name, &other.name));
                    }
                }
            }
            println!("every link healed{}", if state.latency { " (WAN delays still in force)" } else { "" });
            Ok(())
        }
        DemoAction::Kill { region: name } | DemoAction::Restart { region: name } if region(&name).is_err() => {
            region(&name).map(|_| ())
        }
        DemoAction::Kill { region: name } => control(&state, &format!("/kill/{name}")),
        DemoAction::Restart { region: name } => control(&state, &format!("/restart/{name}")),
    }
}

fn control(state: &DemoState, path: &str) -> Result<(), String> {
    let auth = format!("Bearer {}", state.admin_token);
    let headers = [("authorization", auth.as_str())];
    let reply =
        http_client::request(&state.control, "POST", path, &headers, None, Duration::from_secs(30)).map_err(|err| {
            format!(
                "the demo supervisor does not answer at {} ({err}); is `meridian demo` still running?",
                state.control
            )
        })?;
    println!("{}", reply.body.trim());
    if reply.status == 200 {
        Ok(())
    } else {
        Err(format!("the supervisor refused (HTTP {})", reply.status))
    }
}

/// A region process the supervisor owns.
struct Region {
    name: String,
    http: String,
    peer: String,
    child: Option<Child>,
    /// Set when the region was stopped on purpose (kill, shutdown): not a crash.
    expected_exit: bool,
}

struct Supervisor {
    dir: PathBuf,
    binary: PathBuf,
    latency: bool,
    regions: Mutex<Vec<Region>>,
    /// Control requests must carry it: any web page could otherwise POST to a loopback port.
    admin_token: String,
    /// `http://` URL of the control endpoint, handed to regions for their dashboards.
    control_url: String,
    /// The built-in workload, when running.
    load: Mutex<Option<LoadRun>>,
    /// Set on Ctrl-C; a workload started from the dashboard stops with it.
    stopping: Arc<AtomicBool>,
}

/// A running built-in workload.
struct LoadRun {
    rate: u32,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
}

/// Most writes per second the dashboard may ask the built-in workload for.
const LOAD_RATE_MAX: u32 = 5_000;

impl Supervisor {
    fn spawn(&self, index: usize) -> Result<Child, String> {
        let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let region = &regions[index];
        let region_dir = self.dir.join(&region.name);
        std::fs::create_dir_all(&region_dir).map_err(|e| format!("{}: {e}", region_dir.display()))?;
        // Faults in force from the start: WAN delays towards every other region.
        let mut config = String::new();
        if self.latency {
            for other in regions.iter().filter(|r| r.name != region.name) {
                let fault = latency_fault(&region.name, &other.name);
                config.push_str(&format!(
                    "[[faults]]\npeer_region = \"{}\"\ndelay_ms = {}\njitter_ms = {}\n\n",
                    other.name, fault["delay_ms"], fault["jitter_ms"]
                ));
            }
        }
        let config_path = region_dir.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let log = std::fs::File::create(region_dir.join("meridian.log"))
            .map_err(|e| format!("{}: {e}", region_dir.display()))?;
        // Every region joins through the first; the first through the second, so it can rejoin after a restart.
        let seed = if index == 0 { regions.get(1) } else { regions.first() };
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .args(["--region", &region.name, "--listen-http", &region.http, "--listen-peer", &region.peer])
            .arg("--data-dir")
            .arg(region_dir.join("data"))
            .arg("--certs")
            .arg(self.dir.join("certs"))
            .arg("--admin-token-file")
            .arg(self.dir.join("admin.token"))
            // Tokens are checked when presented; clients without one still get in, so the
            // dashboard and the examples work with or without them.
            .arg("--tokens-file")
            .arg(self.dir.join("tokens"))
            .arg("--allow-anonymous")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(seed) = seed {
            command.args(["--peer", &seed.peer]);
        }
        // Where the dashboard finds the other regions and the demo's controls:
        // nodes only learn each other's QUIC addresses, not their HTTP ones.
        let all: Vec<String> = regions.iter().map(|r| format!("{}=http://{}", r.name, r.http)).collect();
        command.env(meridian_web::dashboard::REGIONS_ENV, all.join(","));
        command.env(meridian_web::dashboard::DEMO_CONTROL_ENV, &self.control_url);
        command.spawn().map_err(|e| format!("starting region {}: {e}", region.name))
    }

    fn wait_ready(&self, http: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if http_client::request(http, "GET", "/readyz", &[], None, Duration::from_millis(500))
                .is_ok_and(|r| r.status == 200)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn start_region(&self, index: usize) -> Result<(), String> {
        let child = self.spawn(index)?;
        let http = {
            let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
            regions[index].child = Some(child);
            regions[index].expected_exit = false;
            regions[index].http.clone()
        };
        if !self.wait_ready(&http, Duration::from_secs(30)) {
            let name = self.regions.lock().unwrap_or_else(|e| e.into_inner())[index].name.clone();
            return Err(format!(
                "region {name} did not become ready; see {}",
                self.dir.join(&name).join("meridian.log").display()
            ));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a grace period.
    fn stop_region(&self, index: usize, grace: Duration) {
        let child = {
            let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
            regions[index].expected_exit = true;
            regions[index].child.take()
        };
        let Some(mut child) = child else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner()).iter().position(|r| r.name == name)
    }

    /// What `GET /status` answers: regions, whether each process runs, the workload.
    fn status_json(&self) -> serde_json::Value {
        let regions: Vec<serde_json::Value> = self
            .regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| json!({"region": r.name, "url": format!("http://{}", r.http), "running": r.child.is_some()}))
            .collect();
        let load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "regions": regions,
            "latency": self.latency,
            "load": load.as_ref().map(|run| json!({
                "rate": run.rate,
                "writes_per_second": run.stats.last_rate.load(Ordering::Relaxed),
                "errors": run.stats.errors_total.load(Ordering::Relaxed),
            })),
        })
    }

    /// Starts the built-in workload at `rate` writes/s, replacing a running one.
    fn start_load(&self, rate: u32) {
        let http: Vec<String> =
            self.regions.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r.http.clone()).collect();
        self.stop_load();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = start_load(&http, rate, stop.clone(), self.stopping.clone());
        *self.load.lock().unwrap_or_else(|e| e.into_inner()) = Some(LoadRun { rate, stop, stats });
    }

    fn stop_load(&self) -> bool {
        match self.load.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(run) => {
                run.stop.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Handles one control request: `/kill/<region>`, `/restart/<region>`,
    /// `/load/start?rate=<writes per second>` or `/load/stop`.
    fn handle_control(&self, path: &str) -> (u16, String) {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        match route {
            "/load/start" => {
                let rate = match query.split('&').find_map(|kv| kv.strip_prefix("rate=")) {
                    None => 100,
                    Some(text) => match text.parse::<u32>() {
                        Ok(rate) if (1..=LOAD_RATE_MAX).contains(&rate) => rate,
                        _ => return (400, format!("rate must be a whole number from 1 to {LOAD_RATE_MAX}")),
                    },
                };
                self.start_load(rate);
                println!("[demo] load started from the dashboard: {rate} writes/s");
                return (200, format!("load running at {rate} writes/s"));
            }
            "/load/stop" => {
                return if self.stop_load() {
                    println!("[demo] load stopped from the dashboard");
                    (200, "load stopped".into())
                } else {
                    (409, "no load is running".into())
                };
            }
            _ => {}
        }
        let (action, name) = match route.trim_start_matches('/').split_once('/') {
            Some((action, name)) => (action, name),
            None => return (404, "unknown control command".into()),
        };
        let Some(index) = self.index_of(name) else { return (404, format!("no region {name:?}")) };
        match action {
            "kill" => {
                let child = {
                    let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
                    regions[index].expected_exit = true;
                    regions[index].child.take()
                };
                match child {
                    Some(mut child) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        println!("[demo] killed {name} (kill -9); `meridian demo restart {name}` brings it back");
                        (200, format!("killed {name}"))
                    }
                    None => (409, format!("{name} is not running")),
                }
            }
            "restart" => {
                let running = self.regions.lock().unwrap_or_else(|e| e.into_inner())[index].child.is_some();
                if running {
                    self.stop_region(index, Duration::from_secs(10));
                }
                match self.start_region(index) {
                    Ok(()) => {
                        println!("[demo] restarted {name}");
                        (200, format!("restarted {name}"))
                    }
                    Err(err) => (500, err),
                }
            }
            _ => (404, format!("unknown control command {action:?}")),
        }
    }
}

fn supervise(args: DemoArgs) -> Result<(), String> {
    validate_regions(&args.regions)?;
    let dir = args.dir.clone();
    if let Ok(existing) = load_state(&dir) {
        if Path::new(&format!("/proc/{}", existing.supervisor_pid)).exists()
            && existing.supervisor_pid != std::process::id()
        {
            return Err(format!(
                "a demo is already running from {} (pid {}); stop it with Ctrl-C first",
                dir.display(),
                existing.supervisor_pid
            ));
        }
    }
    if args.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot wipe {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::certs::init(&certs).map_err(|e| e.to_string())?;
    }
    for region in &args.regions {
        if !certs.join(format!("{region}.pem")).exists() {
            crate::certs::issue(&certs, region).map_err(|e| e.to_string())?;
        }
    }
    let token_path = dir.join("admin.token");
    let admin_token = match std::fs::read_to_string(&token_path) {
        Ok(token) if token.trim().len() >= 16 => token.trim().to_string(),
        _ => {
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| format!("cannot make a token: {e}"))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&token_path, &token).map_err(|e| format!("{}: {e}", token_path.display()))?;
            token
        }
    };
    let client_tokens = ensure_client_tokens(&dir.join("tokens"))?;
    let control_port = args.base_port.checked_sub(1).ok_or("--base-port must be at least 1")?;
    let regions: Vec<Region> = args
        .regions
        .iter()
        .enumerate()
        .map(|(i, name)| Region {
            name: name.clone(),
            http: format!("127.0.0.1:{}", args.base_port as usize + i),
            peer: format!("127.0.0.1:{}", args.base_port as usize + 100 + i),
            child: None,
            expected_exit: false,
        })
        .collect();
    let binary = std::env::current_exe().map_err(|e| format!("cannot find the meridian binary: {e}"))?;
    let stopping = Arc::new(AtomicBool::new(false));
    let supervisor = Arc::new(Supervisor {
        dir: dir.clone(),
        binary,
        latency: !args.no_latency,
        regions: Mutex::new(regions),
        admin_token: admin_token.clone(),
        control_url: format!("http://127.0.0.1:{control_port}"),
        load: Mutex::new(None),
        stopping: stopping.clone(),
    });

    // The control endpoint, so `meridian demo kill|restart` can reach us.
    let control = std::net::TcpListener::bind(("127.0.0.1", control_port))
        .map_err(|e| format!("cannot open the control endpoint on 127.0.0.1:{control_port} ({e}); is another demo running? try --base-port"))?;
    let state = DemoState {
        supervisor_pid: std::process::id(),
        control: format!("127.0.0.1:{control_port}"),
        admin_token: admin_token.clone(),
        latency: !args.no_latency,
        regions: supervisor
            .regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| RegionState { name: r.name.clone(), http: r.http.clone(), peer: r.peer.clone() })
            .collect(),
    };
    std::fs::write(state_path(&dir), serde_json::to_string_pretty(&state).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", state_path(&dir).display()))?;

    {
        let stopping = stopping.clone();
        install_ctrl_c(move || stopping.store(true, Ordering::SeqCst));
    }
    let count = state.regions.len();
    println!("starting {count} region{} in {} ...", if count == 1 { "" } else { "s" }, dir.display());
    for index in 0..count {
        if let Err(err) = supervisor.start_region(index) {
            for i in 0..count {
                supervisor.stop_region(i, Duration::from_secs(5));
            }
            let _ = std::fs::remove_file(state_path(&dir));
            return Err(err);
        }
    }
    print_banner(&state, !args.no_latency, &client_tokens);
    {
        let supervisor = supervisor.clone();
        std::thread::spawn(move || serve_control(control, supervisor));
    }
    if let Some(rate) = args.load {
        supervisor.start_load(rate.clamp(1, LOAD_RATE_MAX));
    }
    let mut last_progress = Instant::now();
    while !stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        // Report regions that exit on their own.
        let mut regions = supervisor.regions.lock().unwrap_or_else(|e| e.into_inner());
        for region in regions.iter_mut() {
            if let Some(child) = region.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // Ctrl-C reaches the regions too (one process group), and a
                    // region can finish its clean stop before our own handler
                    // has run: give a clean exit a moment to turn out expected.
                    if status.success() && !region.expected_exit {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    if !region.expected_exit && !stopping.load(Ordering::SeqCst) {
                        println!(
                            "[demo] region {} exited unexpectedly ({status}); see {}; `meridian demo restart {}` starts it again",
                            region.name,
                            dir.join(&region.name).join("meridian.log").display(),
                            region.name
                        );
                    }
                    region.child = None;
                }
            }
        }
        drop(regions);
        let load_stats = supervisor.load.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.stats.clone());
        if let Some(stats) = &load_stats {
            if last_progress.elapsed() >= Duration::from_secs(1) {
                let elapsed = last_progress.elapsed().as_secs_f64();
                last_progress = Instant::now();
                let writes = stats.writes.swap(0, Ordering::Relaxed);
                let errors = stats.errors.swap(0, Ordering::Relaxed);
                stats.last_rate.store((writes as f64 / elapsed).round() as u64, Ordering::Relaxed);
                let cluster = http_client::request(
                    &state.regions[0].http,
                    "GET",
                    "/v1/cluster",
                    &[],
                    None,
                    Duration::from_secs(2),
                )
                .map(|r| r.json());
                let (converged, staleness) = match &cluster {
                    Ok(c) => (
                        c["converged"].as_bool().unwrap_or(false),
                        c["convergence"].as_array().map(|rows| {
                            rows.iter()
                                .flat_map(|row| row["origins"].as_object().into_iter().flat_map(|o| o.values()))
                                .filter_map(|v| v["staleness_ms"].as_u64())
                                .max()
                                .unwrap_or(0)
                        }),
                    ),
                    Err(_) => (false, None),
                };
                println!(
                    "[load] {:>6.0} writes/s  {:>4} errors  {}",
                    writes as f64 / elapsed,
                    errors,
                    match (converged, staleness) {
                        (true, _) => "converged".to_string(),
                        (false, Some(ms)) => format!("converging (slowest replica {ms} ms behind)"),
                        (false, None) => format!("{} does not answer", state.regions[0].name),
                    }
                );
            }
        }
    }
    supervisor.stop_load();
    println!("\nstopping every region ...");
    for index in 0..count {
        supervisor.stop_region(index, Duration::from_secs(10));
    }
    let _ = std::fs::remove_file(state_path(&dir));
    println!("stopped; data kept in {} (run again to continue, or --fresh to start over)", dir.display());
    Ok(())
}

/// A demo's client tokens: one read-only, one read-write.
struct ClientTokens {
    read: String,
    write: String,
}

fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot make a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the demo's tokens file, or makes one (a read token and a write
/// token) when it is missing or does not hold both.
fn ensure_client_tokens(path: &Path) -> Result<ClientTokens, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let find = |scope: &str| {
            text.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                let token = words.next()?;
                (words.next() == Some(scope) && token.len() >= 16).then(|| token.to_string())
            })
        };
        if let (Some(read), Some(write)) = (find("read"), find("read,write")) {
            return Ok(ClientTokens { read, write });
        }
    }
    let tokens = ClientTokens { read: random_token()?, write: random_token()? };
    let text = format!(
        "# Client tokens of this demo: `token scopes` (read, write, admin), one a line.\n{} read\n{} read,write\n",
        tokens.read, tokens.write
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(tokens)
}

fn print_banner(state: &DemoState, latency: bool, tokens: &ClientTokens) {
    println!();
    println!(
        "Meridian demo: {} regions{}",
        state.regions.len(),
        if latency { ", with WAN-like delays between them" } else { "" }
    );
    println!();
    println!("  {:<14} {:<24} PEERS (QUIC)", "REGION", "HTTP API");
    for r in &state.regions {
        let url = format!("http://{}", r.http);
        println!("  {:<14} {url:<24} {}", r.name, r.peer);
    }
    println!();
    println!("  admin token:  {}", state.admin_token);
    println!("  read token:   {}", tokens.read);
    println!("  write token:  {}", tokens.write);
    println!("                (a wrong token gets 401 and a read token writing 403; requests without a token");
    println!("                 are let in too here, via --allow-anonymous, so the dashboard needs none)");
    if latency && state.regions.len() > 1 {
        println!("  one-way delays:");
        for (i, a) in state.regions.iter().enumerate() {
            for b in &state.regions[i + 1..] {
                println!("    {:<14} <-> {:<14} {} ms", a.name, b.name, rtt_ms(&a.name, &b.name) / 2);
            }
        }
    }
    let first = &state.regions[0];
    let last = state.regions.last().unwrap_or(first);
    println!();
    println!(
        "  dashboard:    http://{}/  (every region serves it; enter the admin token there for the controls)",
        first.http
    );
    println!();
    println!("Try:");
    println!("  # write in {}", first.name);
    println!(
        "  curl -s -X PUT http://{}/v1/docs/hello -H 'authorization: Bearer {}' -H 'content-type: application/json' -d '{{\"from\":\"{}\"}}'",
        first.http, tokens.write, first.name
    );
    println!("  # read in {}: right after the write it may not be there yet (404); the Meridian-Staleness headers say how stale the answer is", last.name);
    println!("  curl -si http://{}/v1/docs/hello -H 'authorization: Bearer {}'", last.http, tokens.read);
    println!("  # read there with the write's token: waits until the write has arrived");
    println!("  curl -si \"http://{}/v1/docs/hello?after=$(curl -s -X PUT http://{}/v1/docs/hello -H 'content-type: application/json' -d '{{\"n\":2}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')\"", last.http, first.http);
    println!();
    println!(
        "From another terminal: meridian demo status | partition <region> | heal | kill <region> | restart <region>"
    );
    println!("Ctrl-C stops every region; the data stays for the next run.");
    println!();
}

/// Serves the control endpoint: `POST /kill/<region>`, `/restart/<region>`,
/// `/load/start?rate=N`, `/load/stop` (each with the admin token), and
/// `GET /status`, for the demo subcommands and the dashboards (hence CORS).
fn serve_control(listener: std::net::TcpListener, supervisor: Arc<Supervisor>) {
    use std::io::{BufRead, BufReader, Write};
    for stream in listener.incoming().flatten() {
        let supervisor = supervisor.clone();
        std::thread::spawn(move || {
            let Ok(clone) = stream.try_clone() else { return };
            let mut reader = BufReader::new(clone);
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                return;
            }
            // Read the headers (bounded: a control request is a line and a few headers).
            let mut authorization = String::new();
            let mut line = String::new();
            let mut header_count = 0;
            while header_count < 64 && reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                header_count += 1;
                if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("authorization") {
                        authorization = value.trim().to_string();
                    }
                }
                line.clear();
            }
            let mut parts = first.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let expected = format!("Bearer {}", supervisor.admin_token);
            let (status, body, content_type) = match method {
                "OPTIONS" => (204, String::new(), "text/plain"),
                "GET" if path == "/status" => (200, supervisor.status_json().to_string(), "application/json"),
                "POST" if authorization.as_bytes() == expected.as_bytes() => {
                    let (status, body) = supervisor.handle_control(path);
                    (status, body, "text/plain")
                }
                "POST" => (401, "send Authorization: Bearer <admin token>".to_string(), "text/plain"),
                _ => (405, "use POST, or GET /status".to_string(), "text/plain"),
            };
            let mut stream = stream;
            // CORS: dashboards at the regions' origins read /status and, with the token, press buttons.
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET, POST\r\n\
                 Access-Control-Allow-Headers: authorization\r\nAccess-Control-Max-Age: 600\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

/// Counters of the built-in workload.
#[derive(Default)]
struct LoadStats {
    writes: AtomicU64,
    errors: AtomicU64,
    /// Errors since the start, for the dashboard (`errors` is reset every progress line).
    errors_total: AtomicU64,
    /// Writes/s over the last progress interval.
    last_rate: AtomicU64,
}

/// Runs the built-in workload: counters, list appends and field updates over
/// a few hundred documents, spread across `regions` (HTTP addresses), at
/// `rate` writes/s, until `stop` or `stopping` is set.
fn start_load(regions: &[String], rate: u32, stop: Arc<AtomicBool>, stopping: Arc<AtomicBool>) -> Arc<LoadStats> {
    let stats = Arc::new(LoadStats::default());
    let regions = regions.to_vec();
    {
        let (stats, stop, stopping) = (stats.clone(), stop.clone(), stopping.clone());
        // Its own thread: preparing the lists takes a moment, and the dashboard's button should answer at once.
        std::thread::spawn(move || run_load(&regions, rate, stop, stopping, stats));
    }
    stats
}

fn run_load(regions: &[String], rate: u32, stop: Arc<AtomicBool>, stopping: Arc<AtomicBool>, stats: Arc<LoadStats>) {
    // The lists exist before anyone appends, so appends never race on creating them.
    let first = regions[0].clone();
    for list in 0..30 {
        let path = format!("/v1/docs/demo/lists/{list}");
        let has_list = http_client::request(&first, "GET", &path, &[], None, Duration::from_secs(5))
            .is_ok_and(|r| r.status == 200 && r.json()["items"].is_array());
        if !has_list {
            let create = r#"[{"op":"add","path":"/items","value":[]}]"#;
            let _ = http_client::request(
                &first,
                "PATCH",
                &path,
                &[("content-type", "application/json-patch+json")],
                Some(create),
                Duration::from_secs(5),
            );
        }
    }
    let workers = (rate / 50).clamp(1, 16);
    let per_worker = (rate / workers).max(1);
    for worker in 0..workers {
        let (stats, stopping, stop, regions) = (stats.clone(), stopping.clone(), stop.clone(), regions.to_vec());
        std::thread::spawn(move || {
            let interval = Duration::from_secs_f64(1.0 / f64::from(per_worker));
            let mut next = Instant::now();
            let mut i: u64 = u64::from(worker) * 1_000_003;
            while !stopping.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                i += 1;
                let http = &regions[(i % regions.len() as u64) as usize];
                let doc = i % 300;
                let (path, content_type, body) = match i % 3 {
                    0 => (
                        format!("/v1/docs/demo/counters/{}", doc % 50),
                        "application/json-patch+json",
                        json!([{"op":"increment","path":"/n","value":1}]).to_string(),
                    ),
                    1 => (
                        format!("/v1/docs/demo/lists/{}", doc % 30),
                        "application/json-patch+json",
                        json!([{"op":"add","path":"/items/-","value":i}]).to_string(),
                    ),
                    _ => (
                        format!("/v1/docs/demo/fields/{doc}"),
                        "application/merge-patch+json",
                        json!({"writer": worker, "i": i}).to_string(),
                    ),
                };
                let result = http_client::request(
                    http,
                    "PATCH",
                    &path,
                    &[("content-type", content_type)],
                    Some(&body),
                    Duration::from_secs(5),
                );
                match result {
                    Ok(reply) if reply.status < 300 => {
                        stats.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    // Ctrl-C reaches the regions as it reaches the demo: writes
                    // in flight while they stop are not failures to report.
                    _ if stopping.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) => break,
                    other => {
                        // Say why, once per kind of failure, so a person can act on it.
                        let reason = match &other {
                            Ok(reply) => format!(
                                "HTTP {} from {http}{path}: {}",
                                reply.status,
                                reply.body.chars().take(200).collect::<String>()
                            ),
                            Err(err) => format!("{http}{path}: {err}"),
                        };
                        stats.errors_total.fetch_add(1, Ordering::Relaxed);
                        if stats.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("[load] write failed: {reason}");
                        }
                    }
                };
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
    }
}

/// Calls `on_signal` on Ctrl-C (SIGINT) or SIGTERM.
fn install_ctrl_c(on_signal: impl Fn() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        });
        on_signal();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_times_are_symmetric_and_known_ones_match() {
        assert_eq!(rtt_ms("us-east", "eu-west"), 70);
        assert_eq!(rtt_ms("ap-southeast", "us-east"), 220);
        assert_eq!(rtt_ms("a", "b"), rtt_ms("b", "a"));
        assert!((40..240).contains(&rtt_ms("mars", "venus")));
    }

    #[test]
    fn region_lists_are_validated() {
        assert!(validate_regions(&["us-east".into()]).is_ok());
        assert!(validate_regions(&[]).is_err());
        assert!(validate_regions(&(0..10).map(|i| format!("r{i}")).collect::<Vec<_>>()).is_err());
        assert!(validate_regions(&["a".into(), "a".into()]).unwrap_err().contains("twice"));
        assert!(validate_regions(&["Bad Name".into()]).is_err());
    }
}

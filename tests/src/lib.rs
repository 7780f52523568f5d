//! Shared helpers for Meridian's integration tests: temporary directories,
//! an in-process node driven through the real router, and real `meridian`
//! processes started, killed and restarted by id.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meridian_server::{Config, NodeRuntime};
use meridian_web::router;
use tower::ServiceExt;

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, empty directory whose name starts with `name`.
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("meridian-test-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: axum::http::HeaderMap,
    /// Body parsed as JSON (Null when empty or not JSON).
    pub json: serde_json::Value,
    /// Raw body text.
    pub text: String,
}

impl Reply {
    /// A header as text, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    }
}

/// A node running in this process, reached through the real router without sockets.
pub struct InProcessNode {
    /// The runtime (for shutdown and restart).
    pub runtime: Arc<NodeRuntime>,
    router: Router,
    /// The data directory.
    pub config: Config,
}

impl InProcessNode {
    /// Opens (or reopens) a node on `dir`.
    pub fn open(dir: &Path) -> InProcessNode {
        InProcessNode::open_with(dir, |_| {})
    }

    /// Opens a node on `dir` after `configure` adjusts the test configuration
    /// (tokens, limits, admin token).
    pub fn open_with(dir: &Path, configure: impl FnOnce(&mut Config)) -> InProcessNode {
        let mut config = Config::for_tests(dir);
        configure(&mut config);
        let runtime = Arc::new(NodeRuntime::open(&config).expect("open node"));
        let router = router(runtime.clone(), config.web_config());
        InProcessNode { runtime, router, config }
    }

    /// Sends one request. `headers` are (name, value) pairs.
    pub async fn request(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response =
            self.router.clone().oneshot(builder.body(body.into()).expect("request")).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply { status, headers, json, text }
    }

    /// Stops the storage thread (final commit and checkpoint).
    pub fn shutdown(&self) {
        self.runtime.shutdown();
    }
}

/// Path of the `meridian` binary, built once per test run if needed.
pub fn meridian_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            // Test executables live in target/<profile>/deps, the bench binary in
            // target/<profile>; the meridian binary in target/<profile>.
            let exe = std::env::current_exe().expect("current exe");
            let mut profile_dir = exe.parent().expect("target/<profile>").to_path_buf();
            if profile_dir.file_name().is_some_and(|n| n == "deps") {
                profile_dir = profile_dir.parent().expect("target/<profile>").to_path_buf();
            }
            let binary = profile_dir.join("meridian");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "-p", "meridian-server", "--bin", "meridian"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building the meridian binary failed");
            assert!(binary.exists(), "no binary at {}", binary.display());
            binary
        })
        .clone()
}

/// A real `meridian serve` process.
pub struct NodeProcess {
    child: Child,
    /// Base URL of its HTTP API.
    pub url: String,
}

impl NodeProcess {
    /// Starts `meridian serve` on `data_dir` with an ephemeral port and waits
    /// until it is ready. `extra` are additional flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProcess {
        NodeProcess::start_within(data_dir, extra, Duration::from_secs(30))
    }

    /// [`NodeProcess::start`], allowing `ready_within` for recovery (large stores).
    pub fn start_within(data_dir: &Path, extra: &[&str], ready_within: Duration) -> NodeProcess {
        let mut child = Command::new(meridian_binary())
            .args(["serve", "--listen-http", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // The node's own default, so tests and benchmarks run it as deployed.
            .env("RUST_LOG", meridian_server::DEFAULT_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meridian");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(http) = value["fields"]["http"].as_str() {
                            let _ = tx.send(http.to_string());
                            sent = true;
                        }
                    }
                }
                // Keep draining so the child never blocks on a full pipe.
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(30)).expect("meridian did not report its address");
        let process = NodeProcess { child, url: format!("http://{address}") };
        process.wait_ready(ready_within);
        process
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let ready = probe::ready_check();
        while Instant::now() < deadline {
            if ready(&format!("{}/readyz", self.url)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("meridian at {} did not become ready", self.url);
    }

    /// Sends SIGKILL (`kill -9`) and reaps the process.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop: the node checkpoints) and waits up to
    /// `limit` for it to exit, then kills it.
    pub fn terminate(mut self, limit: Duration) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Never leave a process behind, even when a test fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking readiness probe over a raw TCP socket, so helpers need no runtime.
mod probe {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn ready_check() -> impl Fn(&str) -> bool {
        |url: &str| {
            let rest = url.trim_start_matches("http://");
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let Ok(mut stream) = TcpStream::connect(host) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response.starts_with("HTTP/1.1 200")
        }
    }
}

pub mod bench;
pub mod history;
pub mod sim;
pub mod simulation;
pub mod webdriver;

/// A free UDP port on loopback (bound, read, released; a tiny race is acceptable in tests).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("free port")
}

/// The admin token every test cluster uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    /// Region (also its certificate name).
    pub region: String,
    /// Data directory.
    pub data: PathBuf,
    /// QUIC port, kept across restarts.
    pub peer_port: u16,
    /// Flags it was started with (reused on restart).
    pub args: Vec<String>,
    /// The running process, if any.
    pub process: Option<NodeProcess>,
}

/// Real `meridian` processes replicating over loopback QUIC with real certificates.
pub struct TestCluster {
    /// Holds certificates, data and the admin token file.
    pub dir: TempDir,
    /// Certificate directory.
    pub certs: PathBuf,
    /// Nodes by index.
    pub nodes: Vec<ClusterNode>,
}

impl TestCluster {
    /// Makes a CA and a certificate per region (nothing started yet).
    pub fn new(name: &str, regions: &[&str]) -> TestCluster {
        let dir = TempDir::new(name);
        let certs = dir.path().join("certs");
        meridian_server::certs::init(&certs).expect("certs init");
        for region in regions {
            meridian_server::certs::issue(&certs, region).expect("certs issue");
        }
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).expect("token file");
        let nodes = regions
            .iter()
            .map(|region| ClusterNode {
                region: region.to_string(),
                data: dir.path().join(format!("data-{region}")),
                peer_port: free_udp_port(),
                args: Vec::new(),
                process: None,
            })
            .collect();
        TestCluster { dir, certs, nodes }
    }

    /// Starts node `i`, joining through `seeds`, with `extra` flags.
    pub fn start(&mut self, i: usize, seeds: &[usize], extra: &[&str]) {
        let mut args: Vec<String> = vec![
            "--region".into(),
            self.nodes[i].region.clone(),
            "--certs".into(),
            self.certs.display().to_string(),
            "--listen-peer".into(),
            format!("127.0.0.1:{}", self.nodes[i].peer_port),
            "--admin-token-file".into(),
            self.dir.path().join("admin.token").display().to_string(),
        ];
        for &seed in seeds {
            args.push("--peer".into());
            args.push(format!("127.0.0.1:{}", self.nodes[seed].peer_port));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.nodes[i].args = args;
        self.restart(i);
    }

    /// Starts node `i` again with the flags it had.
    pub fn restart(&mut self, i: usize) {
        let args: Vec<&str> = self.nodes[i].args.iter().map(String::as_str).collect();
        let process = NodeProcess::start(&self.nodes[i].data, &args);
        self.nodes[i].process = Some(process);
    }

    /// `kill -9` node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(process) = self.nodes[i].process.take() {
            process.kill9();
        }
    }

    /// Base URL of node `i`'s HTTP API.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].process.as_ref().expect("node running").url.clone()
    }
}

//! Configuration: command-line flags, `MERIDIAN_*` environment variables and
//! an optional TOML file (`--config`), in that order of precedence, then
//! defaults. [`Config::resolve`] validates every field and names the one that
//! is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_web::auth::Tokens;
use meridian_web::limits::Limits;
use meridian_web::WebConfig;
use serde::Deserialize;

/// Flags of `meridian serve`. Every flag can also come from the environment
/// (shown in `--help`) or from the `--config` file (same names, snake_case).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Region this node serves, e.g. eu-west [default: local]
    #[arg(long, env = "MERIDIAN_REGION")]
    pub region: Option<String>,
    /// Directory for the node's store [default: ./meridian-data]
    #[arg(long, env = "MERIDIAN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:7070]
    #[arg(long, env = "MERIDIAN_LISTEN_HTTP", value_name = "ADDR")]
    pub listen_http: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Largest request body in bytes [default: 1048576]
    #[arg(long, env = "MERIDIAN_BODY_LIMIT_BYTES", value_name = "BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// How often dirty documents are snapshotted, in ms [default: 5000]
    #[arg(long, env = "MERIDIAN_CHECKPOINT_INTERVAL_MS", value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Memory for the store's page cache, in MiB [default: 64]
    #[arg(long, env = "MERIDIAN_STORAGE_CACHE_MB", value_name = "MIB")]
    pub storage_cache_mb: Option<usize>,
    /// Documents kept in memory; others load from disk on first use [default: 20000]
    #[arg(long, env = "MERIDIAN_DOC_CACHE", value_name = "DOCS")]
    pub doc_cache: Option<usize>,
    /// Documents that may wait for a durable snapshot before local writes wait for checkpoints [default: 40000]
    #[arg(long, env = "MERIDIAN_UNPERSISTED_DOCS_MAX", value_name = "DOCS")]
    pub unpersisted_docs_max: Option<usize>,
    /// Directory with ca.pem and this node's certificate (see `meridian certs`); enables replication
    #[arg(long, env = "MERIDIAN_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Which certificate in --certs is this node's [default: the region]
    #[arg(long, env = "MERIDIAN_CERT_NAME", value_name = "NAME")]
    pub cert_name: Option<String>,
    /// QUIC address for peers [default: 127.0.0.1:7171]
    #[arg(long, env = "MERIDIAN_LISTEN_PEER", value_name = "ADDR")]
    pub listen_peer: Option<String>,
    /// Address peers should dial to reach this node [default: --listen-peer]
    #[arg(long, env = "MERIDIAN_ADVERTISE_PEER", value_name = "ADDR")]
    pub advertise_peer: Option<String>,
    /// A peer to join through (repeatable; one is enough)
    #[arg(long = "peer", env = "MERIDIAN_PEERS", value_name = "ADDR", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Cluster name; nodes of other clusters are refused [default: meridian]
    #[arg(long, env = "MERIDIAN_CLUSTER")]
    pub cluster: Option<String>,
    /// Heartbeat period in ms [default: 100]
    #[arg(long, env = "MERIDIAN_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// A peer whose clock runs further ahead than this is flagged and cannot move our clock [default: 500]
    #[arg(long, env = "MERIDIAN_MAX_CLOCK_OFFSET_MS", value_name = "MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// File holding the admin bearer token (admin endpoints are off without one)
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File of client tokens, one `token scopes` a line (scopes: read, write, admin); MERIDIAN_TOKENS adds inline ones
    #[arg(long, env = "MERIDIAN_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Serve clients without a token (needed to listen beyond loopback without tokens)
    #[arg(long, env = "MERIDIAN_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Longest a request may take, in ms, plus any wait_ms the read asks for [default: 10000]
    #[arg(long, env = "MERIDIAN_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Requests handled at once; beyond, 503 with Retry-After [default: 512]
    #[arg(long, env = "MERIDIAN_CONCURRENCY_MAX", value_name = "N")]
    pub concurrency_max: Option<usize>,
    /// Server-sent event streams open at once; beyond, 503 [default: 256]
    #[arg(long, env = "MERIDIAN_STREAMS_MAX", value_name = "N")]
    pub streams_max: Option<usize>,
    /// Sustained requests per second per token (per IP without one); 0 turns it off [default: 5000]
    #[arg(long, env = "MERIDIAN_RATE_LIMIT_PER_SECOND", value_name = "N")]
    pub rate_limit_per_second: Option<u32>,
    /// Requests a client may burst above its rate [default: twice the rate]
    #[arg(long, env = "MERIDIAN_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// TCP connections open at once; beyond, 503 and closed [default: 768]
    #[arg(long, env = "MERIDIAN_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<usize>,
    /// Time a client has to send request headers, and idle keep-alive time, in ms [default: 10000]
    #[arg(long, env = "MERIDIAN_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
}

/// A link fault imposed from the start (TOML `[[faults]]`): the same shape
/// the admin API takes (`peer_region`, `delay_ms`, `jitter_ms`, `loss`, `cut`, `direction`).
pub use meridian_web::FaultSpec as FaultConfig;

/// The same settings as read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    region: Option<String>,
    data_dir: Option<PathBuf>,
    listen_http: Option<String>,
    log_format: Option<String>,
    body_limit_bytes: Option<usize>,
    checkpoint_interval_ms: Option<u64>,
    storage_cache_mb: Option<usize>,
    doc_cache: Option<usize>,
    unpersisted_docs_max: Option<usize>,
    certs: Option<PathBuf>,
    cert_name: Option<String>,
    listen_peer: Option<String>,
    advertise_peer: Option<String>,
    peers: Option<Vec<String>>,
    cluster: Option<String>,
    heartbeat_ms: Option<u64>,
    max_clock_offset_ms: Option<u64>,
    admin_token_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    request_timeout_ms: Option<u64>,
    concurrency_max: Option<usize>,
    streams_max: Option<usize>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    connections_max: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    #[serde(default)]
    faults: Vec<FaultConfig>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration value that is wrong, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    /// The setting's name (as in the TOML file).
    pub field: &'static str,
    /// What is wrong and what to use instead.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { field, reason: reason.into() }
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Region name.
    pub region: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen_http: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Snapshot interval.
    pub checkpoint_interval: Duration,
    /// Bytes of memory for the store's page cache.
    pub storage_cache_bytes: usize,
    /// Documents kept in memory (the document cache).
    pub doc_cache: usize,
    /// Documents changed and not yet in a durable snapshot beyond which
    /// local writes wait for checkpoints (such documents cannot leave memory).
    pub unpersisted_docs_max: usize,
    /// Replication settings; `None` runs the node alone.
    pub replication: Option<ReplicationConfig>,
    /// Admin bearer token; admin endpoints answer 404 without one.
    pub admin_token: Option<String>,
    /// Client tokens; with any, every non-public endpoint needs one.
    pub tokens: Tokens,
    /// Serve clients without a token even though tokens exist, or beyond loopback without tokens.
    pub allow_anonymous: bool,
    /// Timeouts, concurrency, rate and connection limits.
    pub limits: Limits,
}

/// Settings that exist only when the node replicates (it has certificates).
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Certificate directory.
    pub certs: PathBuf,
    /// This node's certificate name in it.
    pub cert_name: String,
    /// QUIC bind address.
    pub listen_peer: SocketAddr,
    /// Address peers dial.
    pub advertise_peer: SocketAddr,
    /// Seeds.
    pub peers: Vec<SocketAddr>,
    /// Cluster name.
    pub cluster: String,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Largest tolerated clock lead of a peer.
    pub max_clock_offset: Duration,
    /// Faults in force from the start.
    pub faults: Vec<FaultConfig>,
}

/// Smallest and largest accepted body limits.
/// The store's page cache by default. redb's own default is 1 GiB, most of a
/// node's memory for little gain: reads are served from documents in memory,
/// and the store is read in bulk only at recovery.
pub const STORAGE_CACHE_MB_DEFAULT: usize = 64;
/// Default document cache: about 400 MiB of small automerge documents.
pub const DOC_CACHE_DEFAULT: usize = 20_000;
/// The log filter when `RUST_LOG` is not set. automerge opens an info span
/// on every transaction commit (a few percent of the writer thread's CPU,
/// formatting fields nobody reads); its warnings still show.
pub const DEFAULT_LOG_FILTER: &str = "info,automerge=warn";
/// Default for `--unpersisted-docs-max`: at about 20 KB per small resident
/// document, 40,000 of them and a full default cache stay well inside 2 GiB.
pub const UNPERSISTED_DOCS_MAX_DEFAULT: usize = 40_000;
const BODY_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);

impl Config {
    /// A configuration for tests: a data directory, an ephemeral port, defaults otherwise.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            region: "local".into(),
            data_dir: data_dir.to_path_buf(),
            listen_http: "127.0.0.1:0".parse().expect("valid"),
            log_format: LogFormat::Text,
            body_limit_bytes: 1 << 20,
            checkpoint_interval: Duration::from_millis(5000),
            storage_cache_bytes: STORAGE_CACHE_MB_DEFAULT << 20,
            // `MERIDIAN_DOC_CACHE=1 cargo test` runs every test with one resident document.
            doc_cache: std::env::var("MERIDIAN_DOC_CACHE")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DOC_CACHE_DEFAULT),
            unpersisted_docs_max: UNPERSISTED_DOCS_MAX_DEFAULT,
            replication: None,
            admin_token: None,
            tokens: Tokens::new(),
            allow_anonymous: false,
            limits: Limits::default(),
        }
    }

    /// The HTTP layer's share of the configuration.
    pub fn web_config(&self) -> WebConfig {
        WebConfig {
            body_limit_bytes: self.body_limit_bytes,
            admin_token: self.admin_token.clone(),
            tokens: self.tokens.clone(),
            allow_anonymous: self.allow_anonymous,
            limits: self.limits.clone(),
        }
    }

    /// Merges flags/environment (already merged by clap) over the file over defaults, then validates.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| invalid("config", format!("cannot read {}: {err}", path.display())))?;
                toml::from_str(&text).map_err(|err| invalid("config", format!("{}: {err}", path.display())))?
            }
        };
        let limits = resolve_limits(&args_limits(&args), &file)?;
        let region = args.region.or(file.region).unwrap_or_else(|| "local".into());
        if region.is_empty()
            || region.len() > 64
            || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "region",
                format!("{region:?} must be 1 to 64 characters of a-z, 0-9 and '-', like eu-west"),
            ));
        }
        let listen_text = args.listen_http.or(file.listen_http).unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen_http: SocketAddr = listen_text.parse().map_err(|_| {
            invalid("listen_http", format!("{listen_text:?} is not an address; use host:port like 127.0.0.1:7070"))
        })?;
        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid("log_format", format!("{other:?} is not a log format; use text or json")))
            }
        };
        let body_limit_bytes = args.body_limit_bytes.or(file.body_limit_bytes).unwrap_or(1 << 20);
        if !BODY_LIMIT_RANGE.contains(&body_limit_bytes) {
            return Err(invalid(
                "body_limit_bytes",
                format!("{body_limit_bytes} is out of range; use 1024 to {}", BODY_LIMIT_RANGE.end()),
            ));
        }
        let checkpoint_ms = args.checkpoint_interval_ms.or(file.checkpoint_interval_ms).unwrap_or(5000);
        if !(10..=3_600_000).contains(&checkpoint_ms) {
            return Err(invalid(
                "checkpoint_interval_ms",
                format!("{checkpoint_ms} is out of range; use 10 to 3600000"),
            ));
        }
        let storage_cache_mb = args.storage_cache_mb.or(file.storage_cache_mb).unwrap_or(STORAGE_CACHE_MB_DEFAULT);
        if !(1..=65_536).contains(&storage_cache_mb) {
            return Err(invalid("storage_cache_mb", format!("{storage_cache_mb} is out of range; use 1 to 65536")));
        }
        let doc_cache = args.doc_cache.or(file.doc_cache).unwrap_or(DOC_CACHE_DEFAULT);
        if !(1..=100_000_000).contains(&doc_cache) {
            return Err(invalid("doc_cache", format!("{doc_cache} is out of range; use 1 to 100000000 documents")));
        }
        let unpersisted_docs_max =
            args.unpersisted_docs_max.or(file.unpersisted_docs_max).unwrap_or(UNPERSISTED_DOCS_MAX_DEFAULT);
        if !(1..=100_000_000).contains(&unpersisted_docs_max) {
            return Err(invalid(
                "unpersisted_docs_max",
                format!("{unpersisted_docs_max} is out of range; use 1 to 100000000 documents"),
            ));
        }
        let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("meridian-data"));
        let admin_token = match std::env::var("MERIDIAN_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            Some(token) => Some(token.trim().to_string()),
            None => match args.admin_token_file.or(file.admin_token_file) {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|err| invalid("admin_token_file", format!("cannot read {}: {err}", path.display())))?;
                    let token = text.trim().to_string();
                    if token.len() < 16 {
                        return Err(invalid(
                            "admin_token_file",
                            format!(
                                "{} holds a token shorter than 16 characters; use a long random token",
                                path.display()
                            ),
                        ));
                    }
                    Some(token)
                }
            },
        };
        let mut tokens = Tokens::new();
        if let Some(path) = args.tokens_file.or(file.tokens_file) {
            let text = std::fs::read_to_string(&path)
                .map_err(|err| invalid("tokens_file", format!("cannot read {}: {err}", path.display())))?;
            tokens
                .parse_into(&text, &path.display().to_string(), false)
                .map_err(|err| invalid("tokens_file", err.to_string()))?;
        }
        if let Ok(text) = std::env::var("MERIDIAN_TOKENS") {
            tokens.parse_into(&text, "MERIDIAN_TOKENS", true).map_err(|err| invalid("tokens", err.to_string()))?;
        }
        let allow_anonymous = args.allow_anonymous || file.allow_anonymous.unwrap_or(false);
        // Beyond loopback, an open node is open to everyone who can route to it: say so, and how to fix it.
        if !listen_http.ip().to_canonical().is_loopback() && tokens.is_empty() && !allow_anonymous {
            return Err(invalid(
                "tokens_file",
                format!(
                    "listen_http {listen_http} is reachable from other machines and no client tokens are configured, so anyone could read and write every document. Give tokens with --tokens-file FILE (one `token scopes` a line, e.g. `<random 32 characters> read,write`; or MERIDIAN_TOKENS_FILE, MERIDIAN_TOKENS), or pass --allow-anonymous to serve without client authentication"
                ),
            ));
        }
        let peers_text = if args.peers.is_empty() { file.peers.unwrap_or_default() } else { args.peers };
        let certs = args.certs.or(file.certs);
        let replication = match certs {
            None => {
                if !peers_text.is_empty() {
                    return Err(invalid(
                        "peer",
                        "--peer needs --certs: peers authenticate each other with certificates. Make them with `meridian certs init --dir certs` and `meridian certs issue --dir certs --node <region>` (once per region), then start each node with `--certs certs`",
                    ));
                }
                None
            }
            Some(certs) => {
                let cert_name = args.cert_name.or(file.cert_name).unwrap_or_else(|| region.clone());
                let listen_text = args.listen_peer.or(file.listen_peer).unwrap_or_else(|| "127.0.0.1:7171".into());
                let listen_peer: SocketAddr = listen_text.parse().map_err(|_| {
                    invalid(
                        "listen_peer",
                        format!("{listen_text:?} is not an address; use host:port like 127.0.0.1:7171"),
                    )
                })?;
                let advertise_peer = match args.advertise_peer.or(file.advertise_peer) {
                    Some(text) => resolve("advertise_peer", &text)?,
                    None if listen_peer.ip().is_unspecified() => {
                        return Err(invalid(
                            "advertise_peer",
                            format!(
                            "listen_peer is {listen_peer}: set advertise_peer to the address other nodes should dial"
                        ),
                        ))
                    }
                    None => listen_peer,
                };
                let peers = peers_text.iter().map(|p| resolve("peer", p)).collect::<Result<Vec<_>, _>>()?;
                let cluster = args.cluster.or(file.cluster).unwrap_or_else(|| "meridian".into());
                if cluster.is_empty() || cluster.len() > 64 {
                    return Err(invalid("cluster", "use 1 to 64 characters"));
                }
                let heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(100);
                if !(10..=10_000).contains(&heartbeat_ms) {
                    return Err(invalid("heartbeat_ms", format!("{heartbeat_ms} is out of range; use 10 to 10000")));
                }
                let offset_ms = args.max_clock_offset_ms.or(file.max_clock_offset_ms).unwrap_or(500);
                if !(1..=3_600_000).contains(&offset_ms) {
                    return Err(invalid(
                        "max_clock_offset_ms",
                        format!("{offset_ms} is out of range; use 1 to 3600000"),
                    ));
                }
                for fault in &file.faults {
                    let link = meridian_gossip::link::LinkFault {
                        delay_ms: fault.delay_ms,
                        jitter_ms: fault.jitter_ms,
                        loss: fault.loss,
                        cut: fault.cut,
                    };
                    meridian_gossip::link::validate(&link).map_err(|reason| {
                        invalid("faults", format!("peer_region {:?}: {reason}", fault.peer_region))
                    })?;
                }
                Some(ReplicationConfig {
                    certs,
                    cert_name,
                    listen_peer,
                    advertise_peer,
                    peers,
                    cluster,
                    heartbeat: Duration::from_millis(heartbeat_ms),
                    max_clock_offset: Duration::from_millis(offset_ms),
                    faults: file.faults,
                })
            }
        };
        Ok(Config {
            region,
            data_dir,
            listen_http,
            log_format,
            body_limit_bytes,
            checkpoint_interval: Duration::from_millis(checkpoint_ms),
            storage_cache_bytes: storage_cache_mb << 20,
            doc_cache,
            unpersisted_docs_max,
            replication,
            admin_token,
            tokens,
            allow_anonymous,
            limits,
        })
    }
}

/// The limit flags, taken out of the arguments before those are consumed.
fn args_limits(args: &ServeArgs) -> LimitSettings {
    LimitSettings {
        request_timeout_ms: args.request_timeout_ms,
        concurrency_max: args.concurrency_max,
        streams_max: args.streams_max,
        rate_limit_per_second: args.rate_limit_per_second,
        rate_limit_burst: args.rate_limit_burst,
        connections_max: args.connections_max,
        header_read_timeout_ms: args.header_read_timeout_ms,
    }
}

/// Limit settings from one layer (flags and environment).
struct LimitSettings {
    request_timeout_ms: Option<u64>,
    concurrency_max: Option<usize>,
    streams_max: Option<usize>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    connections_max: Option<usize>,
    header_read_timeout_ms: Option<u64>,
}

/// Merges the limit flags over the file over the defaults, checking each range.
fn resolve_limits(args: &LimitSettings, file: &FileConfig) -> Result<Limits, ConfigError> {
    use meridian_web::limits as defaults;
    fn within<T: PartialOrd + std::fmt::Display + Copy>(
        field: &'static str,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(field, format!("{value} is out of range; use {} to {}", range.start(), range.end())))
        }
    }
    let request_timeout_ms = within(
        "request_timeout_ms",
        args.request_timeout_ms.or(file.request_timeout_ms).unwrap_or(defaults::REQUEST_TIMEOUT_MS_DEFAULT),
        100..=600_000,
    )?;
    let concurrency_max = within(
        "concurrency_max",
        args.concurrency_max.or(file.concurrency_max).unwrap_or(defaults::CONCURRENCY_MAX_DEFAULT),
        1..=100_000,
    )?;
    let streams_max = within(
        "streams_max",
        args.streams_max.or(file.streams_max).unwrap_or(defaults::STREAMS_MAX_DEFAULT),
        0..=100_000,
    )?;
    let rate_limit_per_second = within(
        "rate_limit_per_second",
        args.rate_limit_per_second.or(file.rate_limit_per_second).unwrap_or(defaults::RATE_LIMIT_PER_SECOND_DEFAULT),
        0..=1_000_000,
    )?;
    // Twice the rate unless said otherwise: a client may catch up after a pause of two seconds.
    let rate_limit_burst = within(
        "rate_limit_burst",
        args.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(rate_limit_per_second.saturating_mul(2).max(1)),
        1..=10_000_000,
    )?;
    let connections_max = within(
        "connections_max",
        args.connections_max.or(file.connections_max).unwrap_or(defaults::CONNECTIONS_MAX_DEFAULT),
        1..=1_000_000,
    )?;
    let header_read_timeout_ms = within(
        "header_read_timeout_ms",
        args.header_read_timeout_ms.or(file.header_read_timeout_ms).unwrap_or(defaults::HEADER_READ_TIMEOUT_MS_DEFAULT),
        100..=600_000,
    )?;
    Ok(Limits {
        request_timeout: Duration::from_millis(request_timeout_ms),
        concurrency_max,
        streams_max,
        rate_limit_per_second,
        rate_limit_burst,
        connections_max,
        header_read_timeout: Duration::from_millis(header_read_timeout_ms),
    })
}

/// Resolves `host:port` (a name or an IP) to one socket address.
fn resolve(field: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|err| invalid(field, format!("{text:?} does not resolve ({err}); use host:port like 127.0.0.1:7171")))?
        .next()
        .ok_or_else(|| invalid(field, format!("{text:?} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("meridian-config-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let path = write_file("layers", "region = \"eu-west\"\nlisten_http = \"127.0.0.1:9000\"\n");
        let args = ServeArgs {
            config: Some(path.clone()),
            listen_http: Some("127.0.0.1:9100".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.region, "eu-west");
        assert_eq!(config.listen_http.port(), 9100);
        assert_eq!(config.body_limit_bytes, 1 << 20);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::resolve(ServeArgs { region: Some("EU West".into()), ..ServeArgs::default() }).unwrap_err();
        assert_eq!(err.field, "region");
        let err = Config::resolve(ServeArgs { listen_http: Some("nope".into()), ..ServeArgs::default() }).unwrap_err();
        assert_eq!(err.field, "listen_http");
        for bad in [0, 65_537] {
            let err = Config::resolve(ServeArgs { storage_cache_mb: Some(bad), ..ServeArgs::default() }).unwrap_err();
            assert_eq!(err.field, "storage_cache_mb");
            assert!(err.to_string().contains("use 1 to 65536"), "{err}");
        }
        for bad in [0, 100_000_001] {
            let err = Config::resolve(ServeArgs { doc_cache: Some(bad), ..ServeArgs::default() }).unwrap_err();
            assert_eq!(err.field, "doc_cache");
            assert!(err.to_string().contains("use 1 to 100000000"), "{err}");
        }
        for bad in [0, 100_000_001] {
            let err =
                Config::resolve(ServeArgs { unpersisted_docs_max: Some(bad), ..ServeArgs::default() }).unwrap_err();
            assert_eq!(err.field, "unpersisted_docs_max");
            assert!(err.to_string().contains("use 1 to 100000000"), "{err}");
        }
        let path = write_file("cache", "storage_cache_mb = 256\ndoc_cache = 500\n");
        let config = Config::resolve(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).unwrap();
        assert_eq!(config.storage_cache_bytes, 256 << 20);
        assert_eq!(config.doc_cache, 500);
        std::fs::remove_file(path).unwrap();
        let path = write_file("unknown", "regoin = \"x\"\n");
        let err = Config::resolve(ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }).unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}

//! The terminal client: `meridian get|put|patch|delete|ls|status|watch`
//! for people at a shell, and `meridian backup|restore` for operators.
//!
//! Every command talks plain HTTP to one node through the std-only
//! [`crate::http_client`]. The node is `--url` (or `MERIDIAN_URL`, default
//! the serve default `http://127.0.0.1:7070`); `--token` (or
//! `MERIDIAN_TOKEN`) is sent as `Authorization: Bearer` on every request,
//! and nothing is sent without one, so the commands work with and without
//! client authentication.
//!
//! Output: documents and write results go to stdout as JSON (so they pipe
//! into `jq`); readable summaries (freshness, "created", next-page hints) go
//! to stderr. Errors print the problem's title and detail and exit with
//! [`EXIT_FAILURE`], [`EXIT_NOT_FOUND`] or [`EXIT_UNREACHABLE`]; clap exits
//! with 2 on a bad command line.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use meridian_crdt::DocId;
use serde_json::Value as Json;

use crate::backup::{self, BackupError};
use crate::http_client::{self, RawResponse};

/// A request was refused or failed, or a local step (reading input, a file) failed.
pub const EXIT_FAILURE: u8 = 1;
/// The document (or endpoint) does not exist: 404.
pub const EXIT_NOT_FOUND: u8 = 3;
/// The node could not be reached (connection refused, timeout, bad URL host).
pub const EXIT_UNREACHABLE: u8 = 4;

/// Largest JSON body read from stdin or an argument (the server's default limit is 1 MiB).
const INPUT_BYTES_MAX: u64 = 64 << 20;
/// Largest backup downloaded (it is held in memory, as the node holds its documents).
const BACKUP_BYTES_MAX: u64 = 16 << 30;
/// Time allowed for a request beyond any wait the request itself asks for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most pages `ls --all` follows; a node whose cursor never ends would otherwise loop forever.
const LS_PAGES_MAX: usize = 100_000;
/// Pause between `watch` reconnects, growing to the maximum.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(250);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the node is and how to authenticate.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The node's base URL (plain HTTP).
    #[arg(long, env = "MERIDIAN_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer <token>` on every request.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The client commands, flattened into `meridian`'s own.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a document (JSON on stdout) and how fresh the read is (stderr).
    Get(GetArgs),
    /// Create or replace a document from JSON (an argument, or `-` for stdin).
    Put(PutArgs),
    /// Patch a document: merge patch (RFC 7396, default) or JSON Patch (RFC 6902).
    Patch(PatchArgs),
    /// Delete a document.
    Delete(DeleteArgs),
    /// List document ids, optionally under a prefix.
    Ls(LsArgs),
    /// This node and every member as a table: state, RTT, staleness per region, digests.
    Status(StatusArgs),
    /// Follow a document's changes as they are applied here, until Ctrl-C.
    Watch(WatchArgs),
    /// Save a consistent snapshot of a running node to a file (needs the admin token).
    Backup(BackupArgs),
    /// Prepare a new data directory from a backup; start it with --peer to rejoin.
    Restore(RestoreArgs),
}

/// `meridian get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    target: Target,
    /// Document id, e.g. users/42.
    id: String,
    /// Wait until this replica has applied what the token names (read-your-writes).
    #[arg(long)]
    after: Option<String>,
    /// Refuse (exit 1) if the read would be more stale than this.
    #[arg(long)]
    max_staleness_ms: Option<u64>,
    /// Read the consistent snapshot at this time (RFC 3339, optionally with `_<logical>`).
    #[arg(long)]
    at: Option<String>,
    /// How long --after or --at may wait (the node's default is 2000).
    #[arg(long)]
    wait_ms: Option<u64>,
    /// Print the document on one line.
    #[arg(long)]
    compact: bool,
    /// Leave out the freshness line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

/// `meridian put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    target: Target,
    /// Document id.
    id: String,
    /// The document as a JSON object, or `-` to read it from stdin.
    json: String,
    /// Write only if the document's ETag is still this (optimistic concurrency).
    #[arg(long)]
    if_match: Option<String>,
}

/// `meridian patch`.
#[derive(Args, Debug)]
pub struct PatchArgs {
    #[command(flatten)]
    target: Target,
    /// Document id.
    id: String,
    /// The patch as JSON, or `-` to read it from stdin.
    json: String,
    /// The patch is a JSON merge patch (RFC 7396): null removes a member. The default.
    #[arg(long, conflicts_with = "json_patch")]
    merge: bool,
    /// The patch is a JSON Patch (RFC 6902) array, with Meridian's `increment` op.
    #[arg(long)]
    json_patch: bool,
    /// Patch only if the document's ETag is still this.
    #[arg(long)]
    if_match: Option<String>,
}

/// `meridian delete`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    target: Target,
    /// Document id.
    id: String,
    /// Delete only if the document's ETag is still this.
    #[arg(long)]
    if_match: Option<String>,
}

/// `meridian ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    target: Target,
    /// Only ids starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Ids per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after a previous page (its cursor, printed on stderr).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow every page to the end instead of printing one.
    #[arg(long)]
    all: bool,
}

/// `meridian status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the raw /v1/cluster JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// `meridian watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    target: Target,
    /// Document id.
    id: String,
    /// Stop after this many changes (default: follow until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Print each event as its JSON line instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// `meridian backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The node to back up.
    #[arg(long, env = "MERIDIAN_URL", default_value = "http://127.0.0.1:7070")]
    url: String,
    /// The node's admin token.
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the admin token (as passed to serve --admin-token-file).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The backup file to write (refused if it exists).
    #[arg(long)]
    out: PathBuf,
    /// How long the node may take to answer, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// `meridian restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The data directory to create (must not exist, or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Region of the restored node (default: the backed-up node's region).
    #[arg(long)]
    region: Option<String>,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or its input is wrong.
    #[error("{0}")]
    Usage(String),
    /// The node could not be reached.
    #[error("cannot reach {url}: {source}. Is the node running? Set --url or MERIDIAN_URL")]
    Unreachable {
        /// The URL.
        url: String,
        /// The connection error.
        source: std::io::Error,
    },
    /// The node answered with an error (problem+json).
    #[error("{status} {title}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's title.
        title: String,
        /// The problem's detail (what to fix).
        detail: String,
    },
    /// The node's answer could not be understood.
    #[error("unexpected answer from {url}: {what}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// A local file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A backup could not be read, verified or restored.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused { status: 404, .. } => EXIT_NOT_FOUND,
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Usage(_) => 2,
            _ => EXIT_FAILURE,
        }
    }
}

/// Runs a client command; prints errors as `meridian: ...` on stderr.
pub fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Get(args) => get(args),
        ClientCommand::Put(args) => put(args),
        ClientCommand::Patch(args) => patch(args),
        ClientCommand::Delete(args) => delete(args),
        ClientCommand::Ls(args) => ls(args),
        ClientCommand::Status(args) => status(args),
        ClientCommand::Watch(args) => watch(args),
        ClientCommand::Backup(args) => take_backup(args),
        ClientCommand::Restore(args) => restore(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meridian: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// A node's address split for the raw client.
#[derive(Debug)]
struct Endpoint {
    /// host:port for the socket.
    host: String,
    /// Path prefix (empty, or like `/meridian` behind a proxy).
    base: String,
    /// The URL as given, for messages.
    url: String,
    /// Authorization header value.
    authorization: Option<String>,
}

impl Endpoint {
    fn new(url: &str, token: Option<&str>) -> Result<Endpoint, CliError> {
        let trimmed = url.trim();
        let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
            rest
        } else if trimmed.starts_with("https://") {
            return Err(CliError::Usage(format!(
                "--url {trimmed}: https is not supported by the built-in client; reach the node over http (e.g. through a local tunnel) or use curl"
            )));
        } else if trimmed.contains("://") {
            return Err(CliError::Usage(format!("--url {trimmed}: only http:// URLs are supported")));
        } else {
            trimmed
        };
        let (host, base) = rest.split_once('/').map_or((rest, String::new()), |(h, p)| (h, format!("/{p}")));
        let base = base.trim_end_matches('/').to_string();
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c)) {
            return Err(CliError::Usage(format!(
                "--url {trimmed}: expected http://host:port, like http://127.0.0.1:7070"
            )));
        }
        if !base.chars().all(|c| c.is_ascii_graphic() && c != '?' && c != '#') {
            return Err(CliError::Usage(format!("--url {trimmed}: the path may hold only visible characters")));
        }
        let host = if host.contains(':') && !host.ends_with(']') { host.to_string() } else { format!("{host}:80") };
        let authorization = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(token) if token.chars().all(|c| c.is_ascii_graphic()) => Some(format!("Bearer {token}")),
            Some(_) => {
                return Err(CliError::Usage(
                    "the token may hold only visible ASCII characters (check --token or MERIDIAN_TOKEN)".into(),
                ))
            }
        };
        Ok(Endpoint { host, base, url: trimmed.trim_end_matches('/').to_string(), authorization })
    }

    fn from_target(target: &Target) -> Result<Endpoint, CliError> {
        Endpoint::new(&target.url, target.token.as_deref())
    }

    /// Sends a request; answers every status (callers decide what is an error).
    fn send(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
        limit: u64,
    ) -> Result<RawResponse, CliError> {
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
        if let Some(auth) = &self.authorization {
            headers.push(("Authorization", auth));
        }
        headers.extend_from_slice(extra);
        let full = format!("{}{path}", self.base);
        http_client::request_bytes(&self.host, method, &full, &headers, body, timeout, limit).map_err(|source| {
            if source.kind() == std::io::ErrorKind::InvalidData {
                CliError::BadAnswer { url: self.url.clone(), what: source.to_string() }
            } else {
                CliError::Unreachable { url: self.url.clone(), source }
            }
        })
    }

    /// Sends a request and turns any non-2xx answer into [`CliError::Refused`].
    fn call(
        &self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RawResponse, CliError> {
        let response = self.send(method, path, extra, body, timeout, http_client::RESPONSE_BYTES_MAX)?;
        if (200..300).contains(&response.status) {
            Ok(response)
        } else {
            Err(refused(response.status, &response.body))
        }
    }
}

/// A problem+json (or any) error body as a readable error.
fn refused(status: u16, body: &[u8]) -> CliError {
    let json: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
    let title = json["title"].as_str().map(str::to_string).unwrap_or_else(|| reason(status).to_string());
    let mut detail = match json["detail"].as_str() {
        Some(detail) => detail.to_string(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no detail)".to_string()
            } else {
                text.chars().take(500).collect()
            }
        }
    };
    if status == 401 {
        detail.push_str(" (pass --token or set MERIDIAN_TOKEN)");
    }
    CliError::Refused { status, title, detail }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Checks an id here, so nothing but a valid id ever reaches a request line.
fn doc_id(id: &str) -> Result<DocId, CliError> {
    DocId::new(id).map_err(|err| CliError::Usage(format!("document id {id:?}: {err}")))
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_query(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The JSON body of a write: the argument, or stdin for `-`. Checked to be
/// JSON here so a typo is reported before anything is sent.
fn read_body(arg: &str) -> Result<Vec<u8>, CliError> {
    let bytes = if arg == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().take(INPUT_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|source| CliError::Io {
            action: "read",
            path: "stdin".into(),
            source,
        })?;
        if bytes.len() as u64 > INPUT_BYTES_MAX {
            return Err(CliError::Usage(format!("stdin holds more than {INPUT_BYTES_MAX} bytes")));
        }
        bytes
    } else {
        arg.as_bytes().to_vec()
    };
    if let Err(err) = serde_json::from_slice::<Json>(&bytes) {
        let source = if arg == "-" { "stdin" } else { "the argument" };
        return Err(CliError::Usage(format!("{source} is not valid JSON: {err}")));
    }
    Ok(bytes)
}

fn print_json(value: &Json, compact: bool) {
    let text = if compact { serde_json::to_string(value) } else { serde_json::to_string_pretty(value) };
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) is not an error worth a message.
    let _ = writeln!(out, "{}", text.unwrap_or_default());
}

fn get(args: GetArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let id = doc_id(&args.id)?;
    let path = format!(
        "/v1/docs/{id}{}",
        query(&[
            ("after", args.after.clone()),
            ("max_staleness_ms", args.max_staleness_ms.map(|n| n.to_string())),
            ("at", args.at.clone()),
            ("wait_ms", args.wait_ms.map(|n| n.to_string())),
        ])
    );
    let wait = Duration::from_millis(args.wait_ms.unwrap_or(2_000).min(30_000));
    let response = endpoint.send("GET", &path, &[], None, REQUEST_TIMEOUT + wait, http_client::RESPONSE_BYTES_MAX)?;
    let summary = freshness_line(&response);
    if !(200..300).contains(&response.status) {
        if response.status == 404 && !args.quiet {
            // "Missing" is itself a read with a freshness: say how fresh.
            eprintln!("{summary}");
        }
        return Err(refused(response.status, &response.body));
    }
    let json = response.json();
    if json.is_null() {
        return Err(CliError::BadAnswer { url: endpoint.url, what: "the document is not JSON".into() });
    }
    print_json(&json, args.compact);
    if !args.quiet {
        eprintln!("{summary}");
    }
    Ok(())
}

/// One line saying how fresh a read is, from its headers.
fn freshness_line(response: &RawResponse) -> String {
    let staleness = response.header("meridian-staleness-ms").unwrap_or("?");
    let per_region = response.header("meridian-staleness").filter(|s| !s.is_empty());
    let mut line = format!("freshness: {staleness} ms stale");
    if let Some(regions) = per_region {
        line.push_str(&format!(" ({})", regions.replace('=', " ").replace(", ", " ms, ") + " ms"));
    }
    if let Some(safe) = response.header("meridian-safe-time") {
        line.push_str(&format!("; safe time {safe}"));
    }
    if let Some(token) = response.header("meridian-token").filter(|t| !t.is_empty()) {
        line.push_str(&format!("; token {token}"));
    }
    if let Some(etag) = response.header("etag") {
        line.push_str(&format!("; etag {etag}"));
    }
    line
}

/// Prints a write's answer: the JSON on stdout, a sentence on stderr.
fn report_write(response: RawResponse, id: &DocId, verb: &str) {
    let json = response.json();
    let what = if response.status == 201 { "created" } else { verb };
    eprintln!("{id}: {what} (token {})", json["token"].as_str().unwrap_or("?"));
    print_json(&json, true);
}

fn put(args: PutArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let id = doc_id(&args.id)?;
    let body = read_body(&args.json)?;
    let mut headers = vec![("Content-Type", "application/json")];
    push_if_match(&mut headers, args.if_match.as_deref())?;
    let response = endpoint.call("PUT", &format!("/v1/docs/{id}"), &headers, Some(&body), REQUEST_TIMEOUT)?;
    report_write(response, &id, "replaced");
    Ok(())
}

fn patch(args: PatchArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let id = doc_id(&args.id)?;
    let body = read_body(&args.json)?;
    let kind = if args.json_patch { "application/json-patch+json" } else { "application/merge-patch+json" };
    let mut headers = vec![("Content-Type", kind)];
    push_if_match(&mut headers, args.if_match.as_deref())?;
    let response = endpoint.call("PATCH", &format!("/v1/docs/{id}"), &headers, Some(&body), REQUEST_TIMEOUT)?;
    report_write(response, &id, "patched");
    Ok(())
}

fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let id = doc_id(&args.id)?;
    let mut headers = Vec::new();
    push_if_match(&mut headers, args.if_match.as_deref())?;
    let response = endpoint.call("DELETE", &format!("/v1/docs/{id}"), &headers, None, REQUEST_TIMEOUT)?;
    report_write(response, &id, "deleted");
    Ok(())
}

/// A header value with nothing that could end the header line.
/// Adds `If-Match` from `--if-match`, when given (put, patch and delete share it).
fn push_if_match<'a>(headers: &mut Vec<(&'a str, &'a str)>, tag: Option<&'a str>) -> Result<(), CliError> {
    if let Some(tag) = tag {
        headers.push(("If-Match", header_safe(tag, "--if-match")?));
    }
    Ok(())
}

fn header_safe<'a>(value: &'a str, flag: &str) -> Result<&'a str, CliError> {
    if value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        Ok(value)
    } else {
        Err(CliError::Usage(format!("{flag} may hold only visible ASCII characters")))
    }
}

fn ls(args: LsArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    if !args.prefix.is_empty() {
        doc_id(&args.prefix)
            .map_err(|_| CliError::Usage(format!("--prefix {:?} is not a valid id prefix", args.prefix)))?;
    }
    if !(1..=1000).contains(&args.limit) {
        return Err(CliError::Usage(format!("--limit must be from 1 to 1000, got {}", args.limit)));
    }
    let mut cursor = args.cursor.clone();
    let mut out = std::io::stdout().lock();
    for _ in 0..LS_PAGES_MAX {
        let path = format!(
            "/v1/docs{}",
            query(&[
                ("prefix", Some(args.prefix.clone()).filter(|p| !p.is_empty())),
                ("limit", Some(args.limit.to_string())),
                ("cursor", cursor.clone()),
            ])
        );
        let page = endpoint.call("GET", &path, &[], None, REQUEST_TIMEOUT)?.json();
        let Some(ids) = page["ids"].as_array() else {
            return Err(CliError::BadAnswer { url: endpoint.url, what: "the listing has no ids".into() });
        };
        for id in ids {
            if writeln!(out, "{}", id.as_str().unwrap_or_default()).is_err() {
                return Ok(());
            }
        }
        let next = page["next_cursor"].as_str().map(str::to_string);
        match next {
            None => return Ok(()),
            Some(next) if args.all => {
                if cursor.as_deref() == Some(next.as_str()) {
                    return Err(CliError::BadAnswer { url: endpoint.url, what: "the cursor did not advance".into() });
                }
                cursor = Some(next);
            }
            Some(next) => {
                let prefix = if args.prefix.is_empty() { String::new() } else { format!(" --prefix {}", args.prefix) };
                eprintln!("more: meridian ls{prefix} --cursor {next}   (or --all)");
                return Ok(());
            }
        }
    }
    Err(CliError::BadAnswer { url: endpoint.url, what: format!("more than {LS_PAGES_MAX} pages") })
}

fn status(args: StatusArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let cluster = endpoint.call("GET", "/v1/cluster", &[], None, REQUEST_TIMEOUT)?.json();
    if cluster.is_null() {
        return Err(CliError::BadAnswer { url: endpoint.url, what: "/v1/cluster is not JSON".into() });
    }
    if args.json {
        print_json(&cluster, false);
        return Ok(());
    }
    print!("{}", render_status(&cluster));
    Ok(())
}

/// The cluster view as a table. STALENESS is how far behind this node is
/// towards each region (what its reads may miss); VIEW is the worst
/// staleness in that member's own row of the convergence matrix.
pub fn render_status(cluster: &Json) -> String {
    let node = &cluster["node"];
    let own_region = node["region"].as_str().unwrap_or("?");
    let own_digest = node["digest"].as_str().unwrap_or("");
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let mut out = String::new();
    out.push_str(&format!(
        "node {} ({own_region}) at {}: {} documents, digest {}, {}\n",
        node["id"].as_str().unwrap_or("?"),
        node["hlc"].as_str().unwrap_or("?"),
        node["documents"].as_u64().unwrap_or(0),
        short(own_digest),
        match cluster["converged"].as_bool() {
            Some(true) => "CONVERGED",
            Some(false) => "converging (not every live member holds the same changes yet)",
            None => "convergence unknown",
        }
    ));
    if node["replication"].as_bool() == Some(false) {
        out.push_str("replication is off: this node runs alone\n");
    }
    // This node's row of the convergence matrix: per origin region, applied seq and staleness.
    let rows = cluster["convergence"].as_array().cloned().unwrap_or_default();
    let own_row = rows.iter().find(|r| r["replica"] == own_region && r.get("state").is_none());
    let cell = |region: &str| own_row.map(|r| &r["origins"][region]);
    let view = |region: &str| {
        rows.iter()
            .find(|r| r["replica"] == region && r.get("state").is_some())
            .and_then(|r| r["origins"].as_object().map(|o| o.values().filter_map(|c| c["staleness_ms"].as_u64()).max()))
            .flatten()
    };
    let mut table: Vec<[String; 8]> = vec![[
        "REGION".into(),
        "NODE".into(),
        "STATE".into(),
        "RTT".into(),
        "HEARD".into(),
        "APPLIED".into(),
        "STALENESS".into(),
        "DIGEST".into(),
    ]];
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |n| format!("{n} ms"));
    let own_cell = cell(own_region);
    table.push([
        format!("{own_region} (this)"),
        short(node["id"].as_str().unwrap_or("?")),
        "self".into(),
        "-".into(),
        "-".into(),
        own_cell.and_then(|c| c["seq"].as_u64()).map_or("-".into(), |n| n.to_string()),
        "0 ms".into(),
        short(own_digest),
    ]);
    for member in cluster["members"].as_array().into_iter().flatten() {
        let region = member["region"].as_str().unwrap_or("?");
        let digest = member["digest"].as_str().unwrap_or("-");
        let digest_mark = if digest == own_digest || digest == "-" { "" } else { " ≠" };
        let rtt = member["rtt_ms"].as_f64().map_or("-".to_string(), |r| format!("{r:.1} ms"));
        let mut state = member["state"].as_str().unwrap_or("?").to_string();
        if member["clock_offset_exceeded"].as_bool() == Some(true) {
            state.push_str(" (clock ahead)");
        }
        if let Some(fault) = member["link_fault"].as_object() {
            if fault.get("cut").and_then(Json::as_bool) == Some(true) {
                state.push_str(" (link cut)");
            }
        }
        let c = cell(region);
        let staleness = ms(c.and_then(|c| c["staleness_ms"].as_u64()));
        let staleness = match view(region) {
            Some(worst) => format!("{staleness} (its view {worst} ms)"),
            None => staleness,
        };
        table.push([
            region.to_string(),
            short(member["id"].as_str().unwrap_or("?")),
            state,
            rtt,
            member["last_heartbeat_ms_ago"].as_u64().map_or("never".into(), |n| format!("{n} ms ago")),
            c.and_then(|c| c["seq"].as_u64()).map_or("-".into(), |n| n.to_string()),
            staleness,
            format!("{}{digest_mark}", short(digest)),
        ]);
    }
    let widths: Vec<usize> =
        (0..8).map(|i| table.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
    for row in &table {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = width)).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let refused = cluster["refused"].as_array().map_or(0, Vec::len);
    if refused > 0 {
        out.push_str(&format!("{refused} peer(s) refused; see `meridian status --json` under \"refused\"\n"));
    }
    out
}

fn watch(args: WatchArgs) -> Result<(), CliError> {
    let endpoint = Endpoint::from_target(&args.target)?;
    let id = doc_id(&args.id)?;
    let path = format!("{}/v1/docs/{id}/events", endpoint.base);
    let mut last_event_id: Option<String> = None;
    let mut seen = 0u64;
    let mut retry = WATCH_RETRY_MIN;
    let interactive = std::io::stderr().is_terminal();
    loop {
        let mut headers: Vec<(&str, &str)> = vec![("Accept", "text/event-stream")];
        if let Some(auth) = &endpoint.authorization {
            headers.push(("Authorization", auth));
        }
        if let Some(last) = &last_event_id {
            headers.push(("Last-Event-ID", last));
        }
        // No read timeout: the node sends a keep-alive every 15 s, and a person stops this with Ctrl-C.
        let opened = http_client::open_stream(&endpoint.host, &path, &headers, REQUEST_TIMEOUT, None);
        let mut stream = match opened {
            Ok(stream) => stream,
            // Never connected at all: say so instead of retrying forever against a typo.
            Err(source) if last_event_id.is_none() && seen == 0 => {
                return Err(CliError::Unreachable { url: endpoint.url, source })
            }
            Err(err) => {
                eprintln!("meridian: connection lost ({err}); retrying in {} ms", retry.as_millis());
                std::thread::sleep(retry);
                retry = (retry * 2).min(WATCH_RETRY_MAX);
                continue;
            }
        };
        if !(200..300).contains(&stream.status) {
            let status = stream.status;
            return Err(refused(status, stream.read_rest().as_bytes()));
        }
        if interactive && last_event_id.is_none() {
            eprintln!("watching {id} at {} (Ctrl-C to stop)", endpoint.url);
        }
        let started = Instant::now();
        loop {
            match http_client::next_sse_event(stream.reader()) {
                Ok(Some(event)) => {
                    if event.id.is_some() {
                        last_event_id = event.id.clone();
                    }
                    print_event(&event, args.json);
                    if event.event == "change" {
                        seen += 1;
                        if args.count.is_some_and(|count| seen >= count) {
                            return Ok(());
                        }
                    }
                }
                Ok(None) => {
                    eprintln!("meridian: the node closed the stream; reconnecting");
                    break;
                }
                Err(err) => {
                    eprintln!("meridian: the stream failed ({err}); reconnecting");
                    break;
                }
            }
        }
        // A stream that stayed up a while resets the backoff.
        if started.elapsed() > WATCH_RETRY_MAX {
            retry = WATCH_RETRY_MIN;
        }
        std::thread::sleep(retry);
        retry = (retry * 2).min(WATCH_RETRY_MAX);
    }
}

fn print_event(event: &http_client::SseEvent, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", event.data);
    } else {
        let data: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
        let line = match event.event.as_str() {
            "change" => format!(
                "{}  {} changed by {} (seq {}, token {})",
                data["hlc"].as_str().unwrap_or("?"),
                data["doc"].as_str().unwrap_or("?"),
                data["region"].as_str().unwrap_or("?"),
                data["seq"].as_u64().map_or("?".into(), |n| n.to_string()),
                data["token"].as_str().unwrap_or("?"),
            ),
            "gap" => format!(
                "note: events after {} are no longer kept; resuming at {}",
                data["missing_after"], data["resumes_at"]
            ),
            other => format!("{other}: {}", event.data),
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn take_backup(args: BackupArgs) -> Result<(), CliError> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| CliError::Io { action: "read the token file", path: path.clone(), source })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if token.is_none() {
        return Err(CliError::Usage(
            "backups need the node's admin token: pass --token, --token-file, or set MERIDIAN_ADMIN_TOKEN".into(),
        ));
    }
    let endpoint = Endpoint::new(&args.url, token.as_deref())?;
    if args.out.exists() {
        return Err(CliError::Usage(format!(
            "{} already exists; choose another --out (a backup never overwrites a file)",
            args.out.display()
        )));
    }
    let started = Instant::now();
    let response = endpoint.send(
        "GET",
        "/v1/admin/backup",
        &[("Accept", "application/vnd.meridian.backup")],
        None,
        Duration::from_secs(args.timeout_secs.max(1)),
        BACKUP_BYTES_MAX,
    )?;
    if !(200..300).contains(&response.status) {
        return Err(refused(response.status, &response.body));
    }
    // Verify before keeping: a download cut short or damaged is never left looking like a backup.
    let backup = backup::decode(&args.out, &response.body)?;
    // Beside the target (same filesystem, so the rename is atomic), unique per process.
    let mut partial_name = args.out.file_name().unwrap_or_default().to_os_string();
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = args.out.with_file_name(partial_name);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create_new(&partial)?;
        file.write_all(&response.body)?;
        file.sync_all()?;
        std::fs::rename(&partial, &args.out)
    };
    if let Err(source) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(CliError::Io { action: "write", path: args.out.clone(), source });
    }
    let changes: u64 = backup.covered.count();
    eprintln!(
        "backup of {} (node {}) written to {}: {} documents, {} changes covered, {} bytes, {} ms",
        backup.source_region,
        backup.source_node,
        args.out.display(),
        backup.documents.len(),
        changes,
        response.body.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}

fn restore(args: RestoreArgs) -> Result<(), CliError> {
    if let Some(region) = &args.region {
        // The same rule serve applies, checked now so the data dir is not made for a region serve refuses.
        let valid = !region.is_empty()
            && region.len() <= 64
            && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(CliError::Usage(format!(
                "--region {region:?} must be 1 to 64 characters of a-z, 0-9 and '-', like eu-west"
            )));
        }
    }
    let restored = backup::restore(&args.from, &args.data_dir, args.region.as_deref())?;
    eprintln!(
        "restored {} documents ({} changes) from {} into {}",
        restored.backup.documents.len(),
        restored.backup.covered.count(),
        args.from.display(),
        args.data_dir.display()
    );
    eprintln!(
        "new node id {} (the backup came from node {} in {}); region {}",
        restored.node_id, restored.backup.source_node, restored.backup.source_region, restored.region
    );
    eprintln!(
        "next: meridian serve --region {} --data-dir {} --certs <dir> --peer <a member's peer address>  (it catches up from the cluster)",
        restored.region,
        args.data_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_base() {
        let e = Endpoint::new("http://127.0.0.1:7070/", None).unwrap();
        assert_eq!((e.host.as_str(), e.base.as_str()), ("127.0.0.1:7070", ""));
        let e = Endpoint::new("localhost:7071/proxy/", Some("t")).unwrap();
        assert_eq!((e.host.as_str(), e.base.as_str()), ("localhost:7071", "/proxy"));
        assert_eq!(e.authorization.as_deref(), Some("Bearer t"));
        assert!(Endpoint::new("https://x:1", None).unwrap_err().to_string().contains("https"));
        assert!(Endpoint::new("http://a b:1", None).is_err());
        assert!(Endpoint::new("http://a:1", Some("bad\r\ntoken")).is_err());
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(
            query(&[("at", Some("2026-01-01T00:00:00Z_1".into())), ("x", None), ("p", Some("a/b c".into()))]),
            "?at=2026-01-01T00%3A00%3A00Z_1&p=a%2Fb%20c"
        );
    }

    #[test]
    fn problems_read_as_title_and_detail() {
        let err = refused(404, br#"{"title":"Not Found","detail":"document \"x\" does not exist","status":404}"#);
        assert_eq!(err.to_string(), "404 Not Found: document \"x\" does not exist");
        assert_eq!(err.exit_code(), EXIT_NOT_FOUND);
        assert_eq!(refused(502, b"").to_string(), "502 Error: (no detail)");
    }

    #[test]
    fn status_renders_a_row_per_member() {
        let cluster = serde_json::json!({
            "node": {"id": "00000000000000aa", "region": "us-east", "digest": "abcdef", "documents": 3, "hlc": "t", "replication": true},
            "converged": true,
            "members": [{"id": "00000000000000bb", "region": "eu-west", "state": "alive", "rtt_ms": 0.5, "digest": "abcdef", "last_heartbeat_ms_ago": 20}],
            "convergence": [
                {"replica": "us-east", "origins": {"us-east": {"seq": 4, "staleness_ms": 0}, "eu-west": {"seq": 2, "staleness_ms": 31}}},
                {"replica": "eu-west", "state": "alive", "origins": {"us-east": {"seq": 4, "staleness_ms": 40}, "eu-west": {"seq": 2, "staleness_ms": 0}}}
            ],
        });
        let text = render_status(&cluster);
        assert!(text.contains("CONVERGED"), "{text}");
        let row = text.lines().find(|l| l.starts_with("eu-west")).unwrap();
        assert!(row.contains("alive") && row.contains("31 ms (its view 40 ms)") && row.contains("0.5 ms"), "{row}");
    }
}

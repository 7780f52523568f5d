//! Client authentication (issue #9): bearer tokens with read, write and
//! admin scopes, over the real router in-process, and `meridian serve`
//! refusing to listen beyond loopback without tokens, as a real process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use meridian_tests::{meridian_binary, InProcessNode, NodeProcess, Reply, TempDir};
use meridian_web::auth::Tokens;

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

fn tokens() -> Tokens {
    Tokens::parse(&format!("{READ} read\n{WRITE} read,write\n"), "test tokens").expect("tokens")
}

/// A node with a read and a write token, and the admin token.
fn secured(dir: &TempDir, allow_anonymous: bool) -> InProcessNode {
    InProcessNode::open_with(dir.path(), |config| {
        config.tokens = tokens();
        config.admin_token = Some(ADMIN.to_string());
        config.allow_anonymous = allow_anonymous;
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_problem(reply: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.json["type"], format!("urn:meridian:problem:{kind}"), "{}", reply.text);
    assert!(reply.json["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

async fn put(node: &InProcessNode, id: &str, token: Option<&str>) -> Reply {
    let auth = token.map(bearer);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    node.request("PUT", &format!("/v1/docs/{id}"), &headers, r#"{"a":1}"#).await
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_with_a_bearer_challenge() {
    let dir = TempDir::new("auth-401");
    let node = secured(&dir, false);
    for (headers, path) in [
        (vec![], "/v1/docs/a"),
        (vec![], "/v1/docs"),
        (vec![], "/v1/cluster"),
        (vec![("authorization", "Bearer not-a-token-at-all-0000")], "/v1/docs/a"),
        (vec![("authorization", "Basic dXNlcjpwYXNz")], "/v1/docs/a"),
        (vec![("authorization", "Bearer")], "/v1/docs/a"),
    ] {
        let reply = node.request("GET", path, &headers, "").await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(reply.header("www-authenticate").starts_with("Bearer"), "{path}: {:?}", reply.headers);
    }
    let reply = put(&node, "a", None).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = put(&node, "a", Some("wrong-token-0123456789abcdef")).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    // Unknown paths need a token too: probing reveals nothing.
    let reply = node.request("GET", "/nowhere", &[], "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The refusal never echoes a token.
    assert!(!reply.text.contains("not-a-token"));
    node.shutdown();
}

#[tokio::test]
async fn scopes_limit_what_a_token_may_do() {
    let dir = TempDir::new("auth-scopes");
    let node = secured(&dir, false);
    // A read token cannot write: 403, and nothing is written.
    let reply = put(&node, "doc", Some(READ)).await;
    assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(reply.json["needed_scope"], "write");
    let reply = node.request("GET", "/v1/docs/doc", &[("authorization", &bearer(READ))], "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "the refused write changed something: {}", reply.text);
    let reply = node.request("DELETE", "/v1/docs/doc", &[("authorization", &bearer(READ))], "").await;
    assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");

    // A write token writes and reads.
    let reply = put(&node, "doc", Some(WRITE)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let token = reply.json["token"].as_str().unwrap().to_string();
    // A read token reads documents, lists, receipts and the cluster view.
    for path in
        ["/v1/docs/doc".to_string(), "/v1/docs?prefix=d".into(), format!("/v1/writes/{token}"), "/v1/cluster".into()]
    {
        let reply = node.request("GET", &path, &[("authorization", &bearer(READ))], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }
    // Only admin-scoped tokens reach admin endpoints; the admin token has every scope.
    for token in [READ, WRITE] {
        let reply = node.request("GET", "/v1/admin/faults", &[("authorization", &bearer(token))], "").await;
        assert_problem(&reply, StatusCode::FORBIDDEN, "forbidden");
    }
    let reply = node.request("GET", "/v1/admin/faults", &[("authorization", &bearer(ADMIN))], "").await;
    // Past authentication: this in-process node has no replication, so its faults are "off".
    assert_problem(&reply, StatusCode::NOT_FOUND, "off");
    let reply = put(&node, "by-admin", Some(ADMIN)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    node.shutdown();
}

#[tokio::test]
async fn probes_the_dashboard_and_metrics_need_no_token() {
    let dir = TempDir::new("auth-public");
    let node = secured(&dir, false);
    for path in ["/healthz", "/readyz", "/", "/dashboard/app.js", "/v1/dashboard", "/metrics"] {
        let reply = node.request("GET", path, &[], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }
    let metrics = node.request("GET", "/metrics", &[], "").await.text;
    assert!(metrics.contains("meridian_http_refused_total{reason=\"unauthorized\"}"), "{metrics}");
    node.shutdown();
}

#[tokio::test]
async fn reads_may_carry_the_token_in_the_query_for_event_sources() {
    let dir = TempDir::new("auth-query");
    let node = secured(&dir, false);
    assert_eq!(put(&node, "q/1", Some(WRITE)).await.status, StatusCode::CREATED);
    // The list endpoint refuses unknown parameters, so a 200 also shows the token left the query.
    let reply = node.request("GET", &format!("/v1/docs?prefix=q/&access_token={READ}"), &[], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["ids"], serde_json::json!(["q/1"]));
    // Writes never take it from the query.
    let reply = node
        .request("PUT", &format!("/v1/docs/q/2?access_token={WRITE}"), &[("content-type", "application/json")], "{}")
        .await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    node.shutdown();
}

#[tokio::test]
async fn allow_anonymous_keeps_the_node_open_but_still_checks_given_tokens() {
    let dir = TempDir::new("auth-anonymous");
    let node = secured(&dir, true);
    assert_eq!(put(&node, "open", None).await.status, StatusCode::CREATED);
    assert_eq!(node.request("GET", "/v1/docs/open", &[], "").await.status, StatusCode::OK);
    let reply = put(&node, "open", Some("wrong-token-0123456789abcdef")).await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_problem(&put(&node, "open", Some(READ)).await, StatusCode::FORBIDDEN, "forbidden");
    // Admin endpoints still need the admin token.
    let reply = node.request("GET", "/v1/admin/faults", &[], "").await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    node.shutdown();
}

#[tokio::test]
async fn without_tokens_everything_stays_open_and_admin_is_off() {
    let dir = TempDir::new("auth-none");
    let node = InProcessNode::open(dir.path());
    assert_eq!(put(&node, "open", None).await.status, StatusCode::CREATED);
    let reply = node.request("GET", "/v1/admin/faults", &[], "").await;
    assert_problem(&reply, StatusCode::NOT_FOUND, "no-route");
    node.shutdown();
}

/// Runs `meridian serve` with `args` and waits (at most 30 s) for it to exit.
fn serve_exit(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(meridian_binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("MERIDIAN_TOKENS")
        .env_remove("MERIDIAN_TOKENS_FILE")
        .env_remove("MERIDIAN_ALLOW_ANONYMOUS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().expect("stderr").read_to_string(&mut stderr);
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meridian serve {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_refuses_a_public_address_without_tokens_and_names_the_fix() {
    let dir = TempDir::new("auth-serve-public");
    // The configuration is refused before anything is bound, so this test opens no public socket.
    let (code, stderr) = serve_exit(&dir, &["--listen-http", "0.0.0.0:0"], &[]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}; stderr: {stderr}");
    for needle in ["--allow-anonymous", "--tokens-file", "0.0.0.0:0"] {
        assert!(stderr.contains(needle), "the error does not mention {needle}: {stderr}");
    }
    // A malformed tokens file is refused by line.
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "short read\n").unwrap();
    let (code, stderr) = serve_exit(&dir, &["--tokens-file", tokens.to_str().unwrap()], &[]);
    assert!(code.is_some_and(|c| c != 0), "{stderr}");
    assert!(stderr.contains("tokens_file") && stderr.contains("line 1"), "{stderr}");
}

#[test]
fn serve_accepts_a_public_address_with_tokens_or_allow_anonymous() {
    // Resolved, not started: tests bind loopback only, and resolution is where the check lives.
    use meridian_server::{Config, ServeArgs};
    let dir = TempDir::new("auth-serve-accept");
    let args = |allow_anonymous, tokens_file: Option<std::path::PathBuf>| ServeArgs {
        listen_http: Some("0.0.0.0:7070".into()),
        data_dir: Some(dir.path().join("data")),
        allow_anonymous,
        tokens_file,
        ..ServeArgs::default()
    };
    let config = Config::resolve(args(true, None)).expect("--allow-anonymous is enough");
    assert!(config.allow_anonymous && config.tokens.is_empty());
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# comment\n{READ} read\n")).unwrap();
    let config = Config::resolve(args(false, Some(tokens))).expect("tokens are enough");
    assert_eq!(config.tokens.len(), 1);
    assert!(Config::resolve(args(false, None)).is_err());
}

#[tokio::test]
async fn a_real_node_with_a_tokens_file_checks_tokens_over_http() {
    let dir = TempDir::new("auth-process");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{READ} read\n{WRITE} write\n")).unwrap();
    let data = dir.path().join("data");
    let node = tokio::task::spawn_blocking({
        let tokens = tokens.display().to_string();
        move || NodeProcess::start(&data, &["--tokens-file", &tokens])
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("{}/v1/docs/real", node.url);
    let reply = client.put(&url).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(reply.status(), 401);
    assert_eq!(reply.headers()["www-authenticate"], "Bearer");
    let reply = client.put(&url).bearer_auth(READ).header("content-type", "application/json").body("{}").send();
    assert_eq!(reply.await.unwrap().status(), 403);
    let reply = client.put(&url).bearer_auth(WRITE).header("content-type", "application/json").body("{}").send();
    assert_eq!(reply.await.unwrap().status(), 201);
    assert_eq!(client.get(&url).bearer_auth(READ).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/healthz", node.url)).send().await.unwrap().status(), 200);
}

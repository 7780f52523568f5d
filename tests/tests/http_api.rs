//! The v1 HTTP API over the real node runtime (real storage, real router),
//! driven in-process: every endpoint and every error the foundation issue
//! names, plus durability across an in-process restart.

use meridian_tests::{InProcessNode, Reply, TempDir};
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");
const MERGE: (&str, &str) = ("content-type", "application/merge-patch+json");
const PATCH: (&str, &str) = ("content-type", "application/json-patch+json");

fn assert_problem(reply: &Reply, status: u16, detail_contains: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    assert_eq!(reply.header("content-type"), "application/problem+json", "{}", reply.text);
    assert_eq!(reply.json["status"], status);
    let detail = reply.json["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(detail_contains), "detail {detail:?} lacks {detail_contains:?}");
    assert!(reply.json["type"].as_str().unwrap_or_default().starts_with("urn:meridian:problem:"));
}

#[tokio::test]
async fn put_get_patch_delete_round_trip() {
    let dir = TempDir::new("round-trip");
    let node = InProcessNode::open(dir.path());

    let created = node.request("PUT", "/v1/docs/users/42", &[JSON], r#"{"name":"ada","tags":["a"]}"#).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["id"], "users/42");
    let token = created.json["token"].as_str().unwrap().to_string();
    assert_eq!(created.header("meridian-token"), token);
    assert!(created.json["hlc"].as_str().unwrap().contains("Z_"));
    assert_eq!(created.header("location"), "/v1/docs/users/42");
    let etag = created.header("etag");
    assert!(etag.starts_with('"'));

    let read = node.request("GET", "/v1/docs/users/42", &[], "").await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json, json!({"name":"ada","tags":["a"]}));
    assert_eq!(read.header("etag"), etag);
    assert!(!read.header("meridian-token").is_empty());

    let replaced = node.request("PUT", "/v1/docs/users/42", &[JSON], r#"{"name":"ada lovelace","tags":["a"]}"#).await;
    assert_eq!(replaced.status, 200);
    assert_ne!(replaced.json["token"], token, "every write names its own position");

    let merged = node.request("PATCH", "/v1/docs/users/42", &[MERGE], r#"{"tags":null,"city":"london"}"#).await;
    assert_eq!(merged.status, 200, "{}", merged.text);
    let patched = node
        .request("PATCH", "/v1/docs/users/42", &[PATCH], r#"[{"op":"increment","path":"/views","value":5},{"op":"add","path":"/langs","value":[]},{"op":"add","path":"/langs/-","value":"en"}]"#)
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let read = node.request("GET", "/v1/docs/users/42", &[], "").await;
    assert_eq!(read.json, json!({"name":"ada lovelace","city":"london","views":5,"langs":["en"]}));

    let deleted = node.request("DELETE", "/v1/docs/users/42", &[], "").await;
    assert_eq!(deleted.status, 200);
    assert!(deleted.json["token"].is_string());
    assert_problem(&node.request("GET", "/v1/docs/users/42", &[], "").await, 404, "does not exist");
    assert_problem(&node.request("DELETE", "/v1/docs/users/42", &[], "").await, 404, "does not exist");

    // A write after a delete recreates the document.
    let again = node.request("PATCH", "/v1/docs/users/42", &[MERGE], r#"{"back":true}"#).await;
    assert_eq!(again.status, 201);
    assert_eq!(node.request("GET", "/v1/docs/users/42", &[], "").await.json, json!({"back": true}));
}

#[tokio::test]
async fn patch_creates_missing_documents_from_empty() {
    let dir = TempDir::new("patch-create");
    let node = InProcessNode::open(dir.path());
    let created =
        node.request("PATCH", "/v1/docs/counters/a", &[PATCH], r#"[{"op":"increment","path":"/n","value":2}]"#).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let created = node.request("PATCH", "/v1/docs/m", &[MERGE], r#"{"a":{"b":1,"c":null}}"#).await;
    assert_eq!(created.status, 201);
    assert_eq!(node.request("GET", "/v1/docs/m", &[], "").await.json, json!({"a":{"b":1}}));
}

#[tokio::test]
async fn conditional_requests() {
    let dir = TempDir::new("conditional");
    let node = InProcessNode::open(dir.path());
    let created = node.request("PUT", "/v1/docs/c", &[JSON], r#"{"v":1}"#).await;
    let etag = created.header("etag");

    let not_modified = node.request("GET", "/v1/docs/c", &[("if-none-match", &etag)], "").await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), etag);
    assert_eq!(node.request("GET", "/v1/docs/c", &[("if-none-match", "\"other\"")], "").await.status, 200);

    for (method, content_type, body) in [("PUT", JSON, r#"{"v":2}"#), ("PATCH", MERGE, r#"{"v":2}"#)] {
        let refused = node.request(method, "/v1/docs/c", &[content_type, ("if-match", "\"stale\"")], body).await;
        assert_problem(&refused, 412, "current ETag");
        assert_eq!(refused.header("etag"), etag, "412 tells the current ETag");
    }
    assert_problem(&node.request("DELETE", "/v1/docs/c", &[("if-match", "\"stale\"")], "").await, 412, "If-Match");
    assert_problem(
        &node.request("PUT", "/v1/docs/missing", &[JSON, ("if-match", "*")], "{}").await,
        412,
        "does not exist",
    );

    let updated = node.request("PUT", "/v1/docs/c", &[JSON, ("if-match", &etag)], r#"{"v":3}"#).await;
    assert_eq!(updated.status, 200);
    assert_ne!(updated.header("etag"), etag);
    assert_eq!(node.request("DELETE", "/v1/docs/c", &[("if-match", &updated.header("etag"))], "").await.status, 200);
}

#[tokio::test]
async fn json_patch_failures_apply_nothing_and_name_the_operation() {
    let dir = TempDir::new("patch-fail");
    let node = InProcessNode::open(dir.path());
    node.request("PUT", "/v1/docs/p", &[JSON], r#"{"a":1,"list":[1,2]}"#).await;
    let before = node.request("GET", "/v1/docs/p", &[], "").await;

    let failed_test = node
        .request(
            "PATCH",
            "/v1/docs/p",
            &[PATCH],
            r#"[{"op":"replace","path":"/a","value":9},{"op":"test","path":"/a","value":1}]"#,
        )
        .await;
    assert_problem(&failed_test, 409, "operation 1");
    assert_eq!(failed_test.json["operation"], 1);

    let bad_path = node
        .request(
            "PATCH",
            "/v1/docs/p",
            &[PATCH],
            r#"[{"op":"add","path":"/a","value":2},{"op":"remove","path":"/nope"}]"#,
        )
        .await;
    assert_problem(&bad_path, 409, "operation 1");
    let out_of_range =
        node.request("PATCH", "/v1/docs/p", &[PATCH], r#"[{"op":"add","path":"/list/5","value":0}]"#).await;
    assert_problem(&out_of_range, 409, "out of range");

    let invalid = node
        .request("PATCH", "/v1/docs/p", &[PATCH], r#"[{"op":"add","path":"/b","value":1},{"op":"jump","path":"/a"}]"#)
        .await;
    assert_problem(&invalid, 422, "operation 1");
    assert_eq!(invalid.json["operation"], 1);
    assert_problem(&node.request("PATCH", "/v1/docs/p", &[PATCH], r#"{"op":"add"}"#).await, 422, "array");
    assert_problem(
        &node.request("PATCH", "/v1/docs/p", &[PATCH], r#"[{"op":"remove","path":""}]"#).await,
        422,
        "DELETE",
    );
    assert_problem(
        &node.request("PATCH", "/v1/docs/p", &[PATCH], r#"[{"op":"replace","path":"","value":[1]}]"#).await,
        422,
        "object",
    );
    assert_problem(&node.request("PATCH", "/v1/docs/p", &[MERGE], r#"[1,2]"#).await, 422, "object");

    let after = node.request("GET", "/v1/docs/p", &[], "").await;
    assert_eq!(after.json, before.json, "failed patches changed the document");
    assert_eq!(after.header("etag"), before.header("etag"));
}

#[tokio::test]
async fn malformed_input_gets_a_clear_4xx_and_changes_nothing() {
    let dir = TempDir::new("bad-input");
    let node = InProcessNode::open(dir.path());
    node.request("PUT", "/v1/docs/x", &[JSON], r#"{"keep":true}"#).await;

    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], r#"{"a":"#).await, 400, "not valid JSON");
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], "").await, 400, "empty");
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], "[1,2]").await, 422, "JSON object");
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], "\"text\"").await, 422, "JSON object");
    assert_problem(
        &node.request("PUT", "/v1/docs/x", &[("content-type", "text/plain")], "{}").await,
        415,
        "application/json",
    );
    assert_problem(&node.request("PUT", "/v1/docs/x", &[], "{}").await, 415, "got none");
    let wrong_patch_type = node.request("PATCH", "/v1/docs/x", &[JSON], "{}").await;
    assert_problem(&wrong_patch_type, 415, "merge-patch+json");
    assert!(wrong_patch_type.header("accept-patch").contains("json-patch+json"));

    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(2 << 20));
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], big).await, 413, "larger than the limit");
    let deep = format!("{}1{}", r#"{"a":"#.repeat(70), "}".repeat(70));
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], deep).await, 422, "deeper than 64");
    let very_deep = format!("{{\"a\":{}{}}}", "[".repeat(500), "]".repeat(500));
    assert_problem(&node.request("PUT", "/v1/docs/x", &[JSON], very_deep).await, 422, "deeper than 64");
    let deep_patch = format!(r#"[{{"op":"add","path":"/a","value":{}1{}}}]"#, r#"{"a":"#.repeat(64), "}".repeat(64));
    assert_problem(&node.request("PATCH", "/v1/docs/x", &[PATCH], deep_patch).await, 422, "deeper than 64");

    assert_problem(&node.request("GET", "/v1/docs/a%20b", &[], "").await, 400, "not allowed");
    assert_problem(
        &node.request("PUT", &format!("/v1/docs/{}", "x".repeat(257)), &[JSON], "{}").await,
        400,
        "limit is 256",
    );
    assert_problem(&node.request("GET", "/v1/docs/missing", &[], "").await, 404, "does not exist");
    let not_allowed = node.request("POST", "/v1/docs/x", &[JSON], "{}").await;
    assert_problem(&not_allowed, 405, "POST");
    assert!(not_allowed.header("allow").contains("PUT"));
    assert_problem(&node.request("GET", "/v2/nothing", &[], "").await, 404, "no endpoint");

    assert_eq!(node.request("GET", "/v1/docs/x", &[], "").await.json, json!({"keep": true}));
    // Refused writes to new ids leave nothing behind: no history, not listed.
    assert_problem(&node.request("DELETE", "/v1/docs/never", &[], "").await, 404, "does not exist");
    assert_problem(
        &node.request("PUT", "/v1/docs/never2", &[JSON, ("if-match", "*")], "{}").await,
        412,
        "does not exist",
    );
    assert_problem(
        &node.request("PATCH", "/v1/docs/never3", &[PATCH], r#"[{"op":"test","path":"/a","value":1}]"#).await,
        409,
        "operation 0",
    );
    for id in ["never", "never2", "never3"] {
        assert_eq!(
            node.request("GET", &format!("/v1/docs/{id}/history"), &[], "").await.status,
            404,
            "{id} left a trace"
        );
    }
}

#[tokio::test]
async fn listing_paginates_with_an_opaque_cursor() {
    let dir = TempDir::new("list");
    let node = InProcessNode::open(dir.path());
    for id in ["a/1", "a/2", "a/3", "b/1", "a/4", "c"] {
        assert!(node.request("PUT", &format!("/v1/docs/{id}"), &[JSON], "{}").await.status.is_success());
    }
    node.request("DELETE", "/v1/docs/a/4", &[], "").await;

    let mut seen = Vec::new();
    let mut uri = "/v1/docs?prefix=a/&limit=2".to_string();
    loop {
        let page = node.request("GET", &uri, &[], "").await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(page.json["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
        match page.json["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/docs?prefix=a/&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a/1", "a/2", "a/3"]);
    let all = node.request("GET", "/v1/docs", &[], "").await;
    assert_eq!(all.json["ids"], json!(["a/1", "a/2", "a/3", "b/1", "c"]));

    assert_problem(&node.request("GET", "/v1/docs?limit=0", &[], "").await, 400, "limit");
    assert_problem(&node.request("GET", "/v1/docs?limit=5000", &[], "").await, 400, "limit");
    assert_problem(&node.request("GET", "/v1/docs?limit=ten", &[], "").await, 400, "limit");
    assert_problem(&node.request("GET", "/v1/docs?cursor=!!", &[], "").await, 400, "cursor");
    assert_problem(&node.request("GET", "/v1/docs?limt=5", &[], "").await, 400, "unknown query parameter");
    assert_problem(&node.request("GET", "/v1/docs?prefix=a%20b", &[], "").await, 400, "prefix");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = TempDir::new("ops");
    let node = InProcessNode::open(dir.path());
    assert_eq!(node.request("GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(node.request("GET", "/readyz", &[], "").await.status, 200);
    node.request("PUT", "/v1/docs/m", &[JSON], "{}").await;
    node.request("GET", "/v1/docs/nope", &[], "").await;
    let metrics = node.request("GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    for needle in [
        r#"meridian_http_requests_total{route="/v1/docs/{*id}",method="PUT",status="201"} 1"#,
        r#"meridian_http_requests_total{route="/v1/docs/{*id}",method="GET",status="404"} 1"#,
        "meridian_http_request_duration_seconds_bucket{",
        "meridian_write_duration_seconds_count 1",
        "meridian_fsync_duration_seconds_count",
        "meridian_documents 1",
        "meridian_log_entries 1",
    ] {
        assert!(metrics.text.contains(needle), "metrics lack {needle}\n{}", metrics.text);
    }
}

/// A checkpoint's log truncation goes a chunk (512 records) per commit, in
/// memory and on disk alike, and finishes on its own with no further writes.
#[tokio::test]
async fn the_log_is_truncated_in_chunks_after_a_checkpoint() {
    use std::time::{Duration, Instant};
    let dir = TempDir::new("truncate");
    let node = InProcessNode::open_with(dir.path(), |c| c.checkpoint_interval = Duration::from_millis(100));
    const WRITES: i64 = 1300;
    for i in 0..WRITES {
        let reply = node.request("PUT", &format!("/v1/docs/t{}", i % 3), &[JSON], format!(r#"{{"i":{i}}}"#)).await;
        assert!(reply.status.is_success(), "{}", reply.text);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = node.request("GET", "/metrics", &[], "").await.text;
        if metrics.lines().any(|l| l == "meridian_log_entries 0") {
            break;
        }
        let log: Vec<&str> = metrics.lines().filter(|l| l.starts_with("meridian_log")).collect();
        assert!(Instant::now() < deadline, "the log was not truncated within 30 s: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown();
    drop(node);
    let (store, recovered) = meridian_server::storage::Store::open(dir.path(), "local").expect("reopen the store");
    assert!(recovered.log.is_empty(), "{} log records left on disk", recovered.log.len());
    drop(store);
    let node = InProcessNode::open(dir.path());
    for d in 0..3 {
        let last = (0..WRITES).filter(|i| i % 3 == d).max().unwrap();
        let reply = node.request("GET", &format!("/v1/docs/t{d}"), &[], "").await;
        assert_eq!(reply.json, json!({ "i": last }), "t{d}");
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart_with_checkpoints() {
    let dir = TempDir::new("restart");
    {
        let node = InProcessNode::open(dir.path());
        for i in 0..50 {
            let reply = node
                .request(
                    "PATCH",
                    &format!("/v1/docs/d{}", i % 7),
                    &[PATCH],
                    format!(r#"[{{"op":"increment","path":"/n","value":{i}}}]"#),
                )
                .await;
            assert!(reply.status.is_success(), "{}", reply.text);
        }
        node.shutdown(); // final checkpoint: snapshots, log truncated
    }
    let node = InProcessNode::open(dir.path());
    let mut total = 0;
    for d in 0..7 {
        let reply = node.request("GET", &format!("/v1/docs/d{d}"), &[], "").await;
        total += reply.json["n"].as_i64().unwrap();
    }
    assert_eq!(total, (0..50).sum::<i64>());
    // New writes continue the sequence without reusing positions.
    let next = node.request("PUT", "/v1/docs/after", &[JSON], "{}").await;
    assert_eq!(next.status, 201);
    let body: Value = next.json;
    assert!(body["token"].is_string());
}

/// `/openapi.json` and the router agree: every documented operation is
/// routed (never "no route" or 405), and is answered as documented: its
/// status is one the description lists (or an error, which `default` covers).
/// The other direction (every route is documented) is a unit test in the web
/// crate; schemathesis checks the rest against a live node in CI.
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let dir = TempDir::new("openapi");
    let node = InProcessNode::open_with(dir.path(), |config| {
        config.admin_token = Some("openapi-admin-token-0123456789".into());
    });
    node.request("PUT", "/v1/docs/a", &[JSON], r#"{"n":1}"#).await;
    let spec = node.request("GET", "/openapi.json", &[], "").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json["openapi"], "3.0.3");
    let paths = spec.json["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "only {} paths", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("item") {
            let responses = operation["responses"].as_object().expect("responses");
            if responses.values().any(|r| r["content"].get("text/event-stream").is_some()) {
                continue; // streams never end; schemathesis covers them
            }
            let uri = path
                .replace("{id}", "a")
                .replace("{token}", "AQ")
                .replace("{file}", "app.js")
                .replace("{member}", "nobody");
            let auth = ("authorization", "Bearer openapi-admin-token-0123456789");
            let (headers, body): (Vec<(&str, &str)>, &str) = match method.as_str() {
                "put" => (vec![JSON, auth], r#"{"n":2}"#),
                "patch" => (vec![MERGE, auth], r#"{"m":3}"#),
                "post" => (vec![JSON, auth], r#"{"peer_region":"x"}"#),
                _ => (vec![auth], ""),
            };
            let reply = node.request(&method.to_uppercase(), &uri, &headers, body).await;
            let kind = reply.json["type"].as_str().unwrap_or_default();
            assert!(
                !kind.ends_with(":no-route") && !kind.ends_with(":method-not-allowed"),
                "{method} {uri} is documented but not routed: {}",
                reply.text
            );
            let status = reply.status.as_u16().to_string();
            assert!(
                responses.contains_key(&status) || reply.status.as_u16() >= 400,
                "{method} {uri} answered {status}, which the description does not list"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "checked only {checked} operations");
}

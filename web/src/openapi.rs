//! `GET /openapi.json`: the OpenAPI 3.0 description of every endpoint, its
//! parameters, headers and errors, built in code next to the router.
//!
//! It is built from small constructors rather than a derive macro so the
//! web crate stays free of a proc-macro dependency; what keeps it true is
//! twofold: a test walks every documented operation through the real router
//! (none may fall through to "no route"), and reads the router's source to
//! require that every route it serves is documented; CI runs schemathesis
//! against a live node, which fails on any 5xx or any response that does not
//! match this description.

use serde_json::{json, Map, Value as Json};

use crate::api::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};

/// The shared "any other error" response.
const PROBLEM: &str = "#/components/responses/Problem";

fn problem(description: &str) -> Json {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn header_ref(name: &str) -> Json {
    json!({"$ref": format!("#/components/headers/{name}")})
}

fn query(name: &str, description: &str, schema: Json) -> Json {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn header_param(name: &str, description: &str) -> Json {
    json!({"name": name, "in": "header", "required": false, "description": description, "schema": {"type": "string"}})
}

fn path_param(name: &str, description: &str) -> Json {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9._~:@/-]+$"}})
}

/// Freshness headers every document read carries.
fn freshness_headers() -> Json {
    json!({
        "Meridian-Staleness-Ms": header_ref("Meridian-Staleness-Ms"),
        "Meridian-Staleness": header_ref("Meridian-Staleness"),
        "Meridian-Safe-Time": header_ref("Meridian-Safe-Time"),
        "Meridian-Token": header_ref("Meridian-Token"),
    })
}

/// One operation. `errors` are (status, description) pairs answered as problem+json.
fn op(summary: &str, tag: &str, params: Vec<Json>, body: Option<Json>, ok: Json, errors: &[(u16, &str)]) -> Json {
    let mut responses = Map::new();
    if let Json::Object(ok) = ok {
        responses.extend(ok);
    }
    for (status, description) in errors {
        responses.insert(status.to_string(), problem(description));
    }
    // Authentication and overload protection apply to every route but the public ones.
    let public = matches!(tag, "operations" | "dashboard");
    if !public {
        responses.entry("401").or_insert_with(|| problem("No token, or a wrong one, where client authentication is on (unauthorized), with WWW-Authenticate: Bearer."));
        responses.entry("403").or_insert_with(|| {
            problem("The token's scope is too small (forbidden); `needed_scope` names the one needed.")
        });
        responses
            .entry("429")
            .or_insert_with(|| problem("This client is over its rate limit (rate-limited), with Retry-After."));
    }
    responses
        .entry("503")
        .or_insert_with(|| problem("Overloaded or timed out (overloaded, timeout), with Retry-After."));
    responses.insert("default".into(), json!({"$ref": PROBLEM}));
    let mut operation = json!({
        "summary": summary,
        "tags": [tag],
        "parameters": params,
        "responses": responses,
    });
    if let Some(body) = body {
        operation["requestBody"] = body;
    }
    operation["security"] = match tag {
        "admin" => json!([{"bearer": []}]),
        // Anonymous access is allowed only on loopback or with --allow-anonymous.
        "documents" | "events" | "cluster" => json!([{"bearer": []}, {}]),
        _ => json!([]),
    };
    operation
}

fn json_ok(description: &str, schema: Json) -> Json {
    json!({"200": {"description": description, "content": {"application/json": {"schema": schema}}}})
}

fn sse_ok(description: &str) -> Json {
    // Schemathesis and other tools check each event (`event`, `id`, `data`) against this.
    let event = json!({"type": "object", "properties": {"event": {"type": "string"}, "id": {"type": "string"}, "data": {"type": "string"}}});
    json!({"200": {"description": description, "content": {"text/event-stream": {"schema": event}}}})
}

fn read_params() -> Vec<Json> {
    vec![
        query(
            "after",
            "Token of a write (or read): wait until this replica holds it (read-your-writes across regions).",
            json!({"type": "string", "maxLength": 4096}),
        ),
        query(
            "wait_ms",
            "How long `after` and `at` may wait, in ms (default 2000).",
            json!({"type": "integer", "minimum": 0, "maximum": 30000}),
        ),
        query(
            "max_staleness_ms",
            "Answer only if no write older than this may be missing here; otherwise 503.",
            json!({"type": "integer", "minimum": 0}),
        ),
        query(
            "at",
            "Snapshot read: the document made of exactly the changes with HLC <= at (RFC 3339 with `_<logical>`).",
            json!({"type": "string"}),
        ),
        header_param("Meridian-After", "Same as the `after` query parameter."),
        header_param("If-None-Match", "ETags; 304 when one matches."),
    ]
}

fn write_ok(created: bool) -> Json {
    let schema = json!({"$ref": "#/components/schemas/WriteResponse"});
    let headers = json!({"ETag": header_ref("ETag"), "Meridian-Token": header_ref("Meridian-Token")});
    let mut out = json!({"200": {"description": "Written and durable here.", "headers": headers, "content": {"application/json": {"schema": schema}}}});
    if created {
        out["201"] = json!({
            "description": "Created and durable here.",
            "headers": {"ETag": header_ref("ETag"), "Meridian-Token": header_ref("Meridian-Token"), "Location": header_ref("Location")},
            "content": {"application/json": {"schema": schema}},
        });
    }
    out
}

const WRITE_ERRORS: [(u16, &str); 7] = [
    (400, "Bad id, JSON or header (bad-id, bad-json, bad-body)."),
    (412, "If-Match does not match the document's ETag (precondition-failed)."),
    (413, "Body over the limit (body-too-large)."),
    (415, "Wrong Content-Type (unsupported-media-type)."),
    (
        422,
        "Valid JSON the document cannot take: not an object, too deep, a bad patch (invalid-document, invalid-patch).",
    ),
    (503, "The node cannot take writes now (unavailable); retry after Retry-After."),
    (405, "The id ends in /conflicts, /history or /events: read-only views (method-not-allowed, with Allow)."),
];

/// The whole description.
pub fn spec() -> Json {
    let id = || {
        path_param("id", "Document id: 1-256 characters, `/` allowed; may not end in /conflicts, /history or /events.")
    };
    let if_match = header_param("If-Match", "Write only if the document's current ETag matches (`*`: if it exists).");
    let mut paths = Map::new();
    paths.insert(
        "/healthz".into(),
        json!({"get": op("Liveness", "operations", vec![], None, json_ok("The process answers.", json!({"type": "object", "properties": {"status": {"type": "string"}}})), &[])}),
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": op("Readiness", "operations", vec![], None, json_ok("Storage is open and recovered.", json!({"type": "object", "properties": {"status": {"type": "string"}}})), &[(503, "Not ready yet (not-ready).")])}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": op("Prometheus metrics", "operations", vec![], None,
            json!({"200": {"description": "Prometheus text exposition format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}}}), &[])}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": op("This description", "operations", vec![], None, json_ok("OpenAPI 3.0 document.", json!({"type": "object"})), &[])}),
    );
    paths.insert(
        "/v1/docs".into(),
        json!({"get": op("List document ids in order, paginated", "documents",
            vec![
                query("prefix", "Only ids starting with this.", json!({"type": "string", "maxLength": 256})),
                query("limit", &format!("Page size (default {LIST_LIMIT_DEFAULT})."), json!({"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX})),
                query("cursor", "`next_cursor` from the previous page, unchanged.", json!({"type": "string", "minLength": 1})),
            ],
            None,
            json_ok("A page of ids.", json!({"$ref": "#/components/schemas/ListResponse"})),
            &[(400, "Unknown parameter, bad prefix, limit or cursor (bad-query, bad-cursor).")])}),
    );
    let mut read = read_params();
    read.insert(0, id());
    let doc_ok = json!({
        "200": {"description": "The document.", "headers": {"ETag": header_ref("ETag"), "Meridian-Staleness-Ms": header_ref("Meridian-Staleness-Ms"), "Meridian-Staleness": header_ref("Meridian-Staleness"), "Meridian-Safe-Time": header_ref("Meridian-Safe-Time"), "Meridian-Token": header_ref("Meridian-Token")},
                "content": {"application/json": {"schema": {"type": "object"}}}},
        "304": {"description": "If-None-Match matched the document's ETag.", "headers": freshness_headers()},
    });
    let read_errors = [
        (400, "Bad id, token, `at` or parameter (bad-id, bad-token, bad-query)."),
        (404, "No such document here (not-found); freshness headers say how stale that answer is."),
        (503, "Staler than max_staleness_ms (too-stale), with Retry-After and per-region staleness; or unavailable."),
        (504, "`after` or `at` not reached within wait_ms (not-caught-up), naming the regions behind."),
    ];
    let put_params = vec![id(), if_match.clone()];
    paths.insert(
        "/v1/docs/{id}".into(),
        json!({
            "get": op("Read a document, with freshness controls", "documents", read, None, doc_ok, &read_errors),
            "put": op("Create or replace a document (smallest edit)", "documents", put_params, Some(json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}}})), write_ok(true), &WRITE_ERRORS),
            "patch": op("Merge patch (RFC 7396) or JSON Patch (RFC 6902, plus `increment`)", "documents", vec![id(), if_match.clone()],
                Some(json!({"required": true, "content": {
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/json-patch+json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/PatchOp"}}},
                }})),
                write_ok(true),
                &[WRITE_ERRORS[0], (404, "JSON Patch on a missing document (not-found)."), (409, "A patch test failed or an increment would leave i64 (conflict)."), WRITE_ERRORS[1], WRITE_ERRORS[2], WRITE_ERRORS[3], WRITE_ERRORS[4], WRITE_ERRORS[5], WRITE_ERRORS[6]]),
            "delete": op("Delete a document (an update concurrent with it wins)", "documents", vec![id(), if_match], None, write_ok(false),
                &[(400, "Bad id (bad-id)."), (404, "No such document (not-found)."), WRITE_ERRORS[1], WRITE_ERRORS[5], WRITE_ERRORS[6]]),
        }),
    );
    for (sub, summary) in [
        ("conflicts", "Paths holding concurrent values, and which one reads return"),
        ("history", "Every change with its origin, sequence number and HLC"),
    ] {
        paths.insert(
            format!("/v1/docs/{{id}}/{sub}"),
            json!({"get": op(summary, "documents", vec![id()], None, json_ok(summary, json!({"type": "object"})), &[(400, "Bad id (bad-id)."), (404, "No such document (not-found).")])}),
        );
    }
    paths.insert(
        "/v1/docs/{id}/events".into(),
        json!({"get": op("Follow one document's applied changes (server-sent events, resumable with Last-Event-ID)", "events",
            vec![id(), header_param("Last-Event-ID", "Resume after this event.")], None, sse_ok("Event stream."),
            &[(400, "Bad id or Last-Event-ID (bad-id, bad-event-id).")])}),
    );
    paths.insert(
        "/v1/events".into(),
        json!({"get": op("Follow every applied change, optionally by id prefix (server-sent events)", "events",
            vec![query("prefix", "Only documents whose id starts with this.", json!({"type": "string", "maxLength": 256})), header_param("Last-Event-ID", "Resume after this event.")],
            None, sse_ok("Event stream."),
            &[(400, "Bad prefix, parameter or Last-Event-ID (bad-query, bad-event-id).")])}),
    );
    paths.insert(
        "/v1/writes/{token}".into(),
        json!({"get": op("When each region applied a write", "documents",
            vec![json!({"name": "token", "in": "path", "required": true, "description": "A write's token.", "schema": {"type": "string"}})],
            None, json_ok("Per-region receipts.", json!({"type": "object"})), &[(400, "Not a token (bad-token).")])}),
    );
    paths.insert(
        "/v1/cluster".into(),
        json!({"get": op("Members, links, vectors, staleness matrix, digests and queues", "cluster", vec![], None, json_ok("Cluster status as this node sees it.", json!({"type": "object"})), &[])}),
    );
    paths.insert(
        "/v1/cluster/stream".into(),
        json!({"get": op("`/v1/cluster` as server-sent events, for dashboards", "cluster",
            vec![query("interval_ms", "Time between events (default 500).", json!({"type": "integer", "minimum": 100, "maximum": 5000}))],
            None, sse_ok("Event stream."), &[(400, "Bad interval_ms or unknown parameter (bad-query).")])}),
    );
    paths.insert(
        "/v1/dashboard".into(),
        json!({"get": op("Where the dashboard finds the other regions and the demo control", "dashboard", vec![], None, json_ok("Dashboard settings.", json!({"type": "object"})), &[])}),
    );
    paths.insert(
        "/".into(),
        json!({"get": op("The live convergence dashboard", "dashboard", vec![], None,
            json!({"200": {"description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}}), &[])}),
    );
    paths.insert(
        "/dashboard/{file}".into(),
        json!({"get": op("Dashboard assets (scripts and styles)", "dashboard",
            vec![json!({"name": "file", "in": "path", "required": true, "schema": {"type": "string"}})], None,
            json!({"200": {"description": "Asset.", "content": {"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}}}),
            &[(404, "No such asset (no-route).")])}),
    );
    let admin_errors = [
        (401, "Missing or wrong admin token (unauthorized)."),
        (404, "Admin endpoints are off (no admin token configured) or replication is off (off)."),
    ];
    let fault_body = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FaultSpec"}}}});
    paths.insert(
        "/v1/admin/faults".into(),
        json!({
            "get": op("Link faults in force", "admin", vec![], None, json_ok("Faults.", json!({"type": "object"})), &admin_errors),
            "post": op("Impose a link fault towards a region (delay, jitter, loss, cut)", "admin", vec![], Some(fault_body), json_ok("Faults now in force.", json!({"type": "object"})),
                &[(400, "Bad JSON (bad-json)."), admin_errors[0], admin_errors[1], (415, "Not application/json (unsupported-media-type)."), (422, "Not a valid fault (invalid-fault, invalid).")]),
            "delete": op("Heal every link", "admin", vec![], None, json_ok("No faults.", json!({"type": "object"})), &admin_errors),
        }),
    );
    paths.insert(
        "/v1/admin/members/{member}/decommission".into(),
        json!({"post": op("Remove a stopped member for good", "admin",
            vec![json!({"name": "member", "in": "path", "required": true, "description": "Region or node id (16 hex digits), as /v1/cluster shows.", "schema": {"type": "string"}})],
            None, json_ok("The member and the last change recorded for it.", json!({"type": "object", "properties": {"decommissioned": {"type": "string"}, "last_seq": {"type": "integer"}}})),
            &[admin_errors[0], admin_errors[1], (422, "Unknown member, or this node itself (invalid).")])}),
    );
    paths.insert(
        "/v1/admin/backup".into(),
        json!({"get": op("A consistent backup of every document and the changes they cover (meridian backup writes it, meridian restore reads it)", "admin",
            vec![], None,
            json!({"200": {"description": "Backup file, format version 1 (see server/src/backup.rs).", "content": {"application/vnd.meridian.backup": {"schema": {"type": "string", "format": "binary"}}}}}),
            &[admin_errors[0], admin_errors[1], (503, "Storage failed or the node is stopping (unavailable).")])}),
    );

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Meridian",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Multi-region replicated JSON documents. Every node accepts reads and writes locally and tells each reader how stale its answer may be. Errors are RFC 9457 problem+json with `type` `urn:meridian:problem:<kind>`.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "description": "urn:meridian:problem:<kind>"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string", "description": "What went wrong and what to change."},
                    },
                },
                "WriteResponse": {
                    "type": "object",
                    "required": ["id", "token", "hlc"],
                    "properties": {
                        "id": {"type": "string"},
                        "token": {"type": "string", "description": "Opaque; pass as `after` to read your write anywhere."},
                        "hlc": {"type": "string", "description": "The change's HLC (RFC 3339 with `_<logical>`)."},
                    },
                },
                "ListResponse": {
                    "type": "object",
                    "required": ["ids"],
                    "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "next_cursor": {"type": "string"},
                    },
                },
                "PatchOp": {
                    "type": "object",
                    "required": ["op", "path"],
                    "properties": {
                        "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test", "increment"]},
                        "path": {"type": "string"},
                        // Ignored by ops that take none (RFC 6902 section 4), so any type is accepted there.
                        "from": {"description": "JSON pointer, for move and copy."},
                        "value": {},
                    },
                },
                "FaultSpec": {
                    "type": "object",
                    "required": ["peer_region"],
                    "properties": {
                        "peer_region": {"type": "string"},
                        "delay_ms": {"type": "integer", "minimum": 0},
                        "jitter_ms": {"type": "integer", "minimum": 0},
                        "loss": {"type": "number", "minimum": 0, "maximum": 1},
                        "cut": {"type": "boolean"},
                        "direction": {"type": "string", "enum": ["both", "outbound", "inbound"]},
                    },
                },
            },
            "responses": {"Problem": problem("Any other error, as problem+json.")},
            "headers": {
                "ETag": {"description": "Strong validator of the document's state, equal on every replica holding the same state.", "schema": {"type": "string"}},
                "Location": {"description": "Where the created document lives.", "schema": {"type": "string"}},
                "Meridian-Token": {"description": "Opaque token naming the write, or the state a read saw.", "schema": {"type": "string"}},
                "Meridian-Staleness-Ms": {"description": "No write older than this many ms may be missing from this answer.", "schema": {"type": "string"}},
                "Meridian-Staleness": {"description": "The same per region: `region=ms, ...`; absent when no other region is known.", "schema": {"type": "string"}},
                "Meridian-Safe-Time": {"description": "Every write with an HLC at or below this is in this answer.", "schema": {"type": "string"}},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_the_router_serves_is_documented() {
        let spec = spec();
        let paths = spec["paths"].as_object().expect("paths");
        let sources = [include_str!("router.rs"), include_str!("dashboard.rs")];
        let mut routes = 0;
        for source in sources {
            for (index, _) in source.match_indices(".route(") {
                let rest = &source[index + ".route(".len()..];
                let rest = rest.trim_start();
                let Some(rest) = rest.strip_prefix('"') else { continue };
                let path = &rest[..rest.find('"').expect("closing quote")];
                let path = path.replace("{*id}", "{id}");
                // The methods are in the route's own call, up to the next `.route(` or the end.
                let call = &rest[..rest.find(".route(").unwrap_or(rest.len()).min(400)];
                let documented = paths.get(&path).unwrap_or_else(|| panic!("route {path} is not in /openapi.json"));
                for method in ["get", "put", "patch", "delete", "post"] {
                    if call.contains(&format!("{method}(")) {
                        assert!(
                            documented.get(method).is_some(),
                            "{} {path} is not in /openapi.json",
                            method.to_uppercase()
                        );
                        routes += 1;
                    }
                }
            }
        }
        assert!(routes >= 15, "found only {routes} routes in the router's source");
    }

    #[test]
    fn every_operation_answers_every_error_as_problem_json() {
        let spec = spec();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("item") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(responses.contains_key("default"), "{method} {path} has no default response");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"].get("application/problem+json").is_some(),
                            "{method} {path} {status} is not problem+json"
                        );
                    }
                }
            }
        }
    }
}

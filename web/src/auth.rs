//! Client authentication: bearer tokens with scopes, and which scope each
//! endpoint needs.
//!
//! A node holds a set of tokens, each with one of three scopes; `write`
//! implies `read`, `admin` implies both. Tokens come from a tokens file
//! (`--tokens-file`), from `MERIDIAN_TOKENS`, and the admin token
//! (`--admin-token-file`, `MERIDIAN_ADMIN_TOKEN`) joins them with the admin
//! scope. The text format, one token a line:
//!
//! ```text
//! # token                              scopes
//! 3f9c2a71d0e84b5fa1c6e29d7b40c8f3     read
//! 8b1e5d2c9a7f40e6b3d1c8a5f2e9b7d4     read,write
//! ```
//!
//! Client authentication is *on* when at least one client token is
//! configured: every endpoint except the public ones then needs a token with
//! the right scope (401 without a valid one, 403 with too small a scope).
//! With no client tokens, or with `allow_anonymous`, a request that carries
//! no token is let in with read and write scope, as before tokens existed;
//! a token that is presented is still checked, so tokens can be rolled out
//! to clients before anonymous access is turned off. Admin endpoints always
//! need an admin-scoped token and do not exist (404) when there is none.
//!
//! Guarantees: token comparison takes the same time whichever token (or how
//! much of one) matched, and no token is ever logged or printed by this
//! module; logs name a token by where it was defined ("tokens file line 3").

use std::fmt;

use axum::http::{header, HeaderMap, Method};

/// What a token may do. Ordered: a larger scope implies every smaller one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Reads: documents, lists, event streams, write receipts, the cluster view.
    Read,
    /// Document writes (PUT, PATCH, DELETE), and reads.
    Write,
    /// The admin endpoints, and reads and writes.
    Admin,
}

impl Scope {
    /// The scope's name as written in a tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shortest token accepted: shorter ones can be guessed.
pub const TOKEN_LEN_MIN: usize = 16;
/// Longest token accepted.
pub const TOKEN_LEN_MAX: usize = 512;
/// Most tokens a node holds; comparison is linear in their number.
pub const TOKENS_MAX: usize = 10_000;

/// One configured token.
#[derive(Clone)]
struct Entry {
    secret: Box<[u8]>,
    scope: Scope,
    /// Where it was defined, for logs: never the token itself.
    label: String,
}

/// A validated set of client tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

// Hand-written so that printing a configuration never prints a secret.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| format!("{} ({})", e.label, e.scope))).finish()
    }
}

/// Why a tokens file or `MERIDIAN_TOKENS` was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// An entry is malformed; `entry` names it (file line or list position).
    #[error("{entry}: {reason}")]
    Malformed {
        /// Which entry, e.g. "line 3".
        entry: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The same token appears twice (possibly with different scopes).
    #[error("{entry}: this token is already defined ({first}); each token may appear once")]
    Duplicate {
        /// The second occurrence.
        entry: String,
        /// The first.
        first: String,
    },
    /// More than [`TOKENS_MAX`] tokens.
    #[error("more than {TOKENS_MAX} tokens; use fewer")]
    TooMany,
}

fn valid_token_char(b: u8) -> bool {
    // RFC 6750's b64token alphabet, so every token fits in a header unquoted.
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

impl Tokens {
    /// No tokens.
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses `token scopes` entries, one per line (and, when `semicolons`,
    /// also separated by `;`, for the one-line `MERIDIAN_TOKENS`), adding
    /// them to this set. Blank lines and lines starting with `#` are
    /// skipped. `source` names where the text came from, for labels.
    pub fn parse_into(&mut self, text: &str, source: &str, semicolons: bool) -> Result<(), TokensError> {
        let entries: Vec<&str> = if semicolons { text.split(['\n', ';']).collect() } else { text.lines().collect() };
        let unit = if semicolons { "entry" } else { "line" };
        for (index, raw) in entries.into_iter().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = format!("{source} {unit} {}", index + 1);
            let malformed = |reason: String| TokensError::Malformed { entry: entry.clone(), reason };
            let mut words = line.split_whitespace();
            let token = words.next().unwrap_or("");
            let scopes_text: Vec<&str> = words.take_while(|w| !w.starts_with('#')).collect();
            if !(TOKEN_LEN_MIN..=TOKEN_LEN_MAX).contains(&token.len()) {
                return Err(malformed(format!(
                    "the token is {} characters; use {TOKEN_LEN_MIN} to {TOKEN_LEN_MAX} random characters",
                    token.len()
                )));
            }
            if !token.bytes().all(valid_token_char) {
                return Err(malformed(
                    "the token may hold only A-Z a-z 0-9 - . _ ~ + / = (write `token scopes`, e.g. `3f9c...c8f3 read,write`)"
                        .into(),
                ));
            }
            if scopes_text.is_empty() {
                return Err(malformed(
                    "no scopes after the token; write `token read`, `token read,write` or `token admin`".into(),
                ));
            }
            let mut scope = None;
            for name in scopes_text.iter().flat_map(|w| w.split(',')).filter(|s| !s.is_empty()) {
                let parsed = Scope::parse(name)
                    .ok_or_else(|| malformed(format!("unknown scope {name:?}; scopes are read, write and admin")))?;
                scope = scope.max(Some(parsed));
            }
            let Some(scope) = scope else {
                return Err(malformed("no scopes after the token; write `token read`".into()));
            };
            if let Some(first) = self.entries.iter().find(|e| constant_time_eq(&e.secret, token.as_bytes())) {
                return Err(TokensError::Duplicate { entry, first: first.label.clone() });
            }
            if self.entries.len() >= TOKENS_MAX {
                return Err(TokensError::TooMany);
            }
            self.entries.push(Entry { secret: token.as_bytes().into(), scope, label: entry });
        }
        Ok(())
    }

    /// Parses a tokens file's text (see the module docs).
    pub fn parse(text: &str, source: &str) -> Result<Tokens, TokensError> {
        let mut tokens = Tokens::new();
        tokens.parse_into(text, source, false)?;
        Ok(tokens)
    }

    /// Adds one token with `scope` (the admin token; it was validated where it was read).
    pub fn add(&mut self, token: &str, scope: Scope, label: &str) {
        if !self.entries.iter().any(|e| constant_time_eq(&e.secret, token.as_bytes())) {
            self.entries.push(Entry { secret: token.as_bytes().into(), scope, label: label.to_string() });
        }
    }
}

/// Who a request is, once its credential was looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No credential at all.
    Anonymous,
    /// A configured token: its index (a stable key for rate limiting) and scope.
    Token {
        /// Position in the node's token list.
        index: u32,
        /// What it may do.
        scope: Scope,
    },
    /// A credential that matches no token, or is not a bearer token.
    Invalid,
}

/// Why a request is refused by authentication (mapped to HTTP in `error.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, and this endpoint needs one (401).
    #[error("this endpoint needs Authorization: Bearer <token> with the {needed} scope")]
    Missing {
        /// The scope the endpoint needs.
        needed: Scope,
    },
    /// A token was given but matches none (401).
    #[error("the bearer token is not valid here; check it, or ask for one with the {needed} scope")]
    Invalid {
        /// The scope the endpoint needs.
        needed: Scope,
    },
    /// The token is valid but its scope is too small (403).
    #[error("this token has the {have} scope; this request needs {needed}")]
    Forbidden {
        /// The token's scope.
        have: Scope,
        /// The scope the endpoint needs.
        needed: Scope,
    },
    /// Admin endpoints are off: no admin-scoped token is configured (404).
    #[error("admin endpoints are off: start the node with --admin-token-file, MERIDIAN_ADMIN_TOKEN, or an admin token in --tokens-file")]
    AdminOff,
}

/// The node's authentication state: its tokens and whether anonymous
/// clients may read and write.
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Tokens,
    /// Whether a request without a token gets read and write scope.
    anonymous_allowed: bool,
    admin_configured: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new(Tokens::new(), None, false)
    }
}

impl Auth {
    /// Client tokens, the admin token (added with the admin scope), and
    /// whether anonymous clients stay allowed although tokens exist.
    /// Without client tokens anonymous clients are always allowed: that is
    /// how a node without authentication behaves.
    pub fn new(client_tokens: Tokens, admin_token: Option<&str>, allow_anonymous: bool) -> Auth {
        let anonymous_allowed = client_tokens.is_empty() || allow_anonymous;
        let mut tokens = client_tokens;
        if let Some(admin) = admin_token {
            tokens.add(admin, Scope::Admin, "admin token");
        }
        let admin_configured = tokens.entries.iter().any(|e| e.scope == Scope::Admin);
        Auth { tokens, anonymous_allowed, admin_configured }
    }

    /// Whether requests without a token are refused.
    pub fn required(&self) -> bool {
        !self.anonymous_allowed
    }

    /// Looks a credential up. Every token is compared, each without an
    /// early exit, so the time taken does not say which one matched or how
    /// much of one did.
    pub fn identify(&self, credential: Option<&str>) -> Identity {
        let Some(given) = credential else { return Identity::Anonymous };
        let mut found: Option<(u32, Scope)> = None;
        for (index, entry) in self.tokens.entries.iter().enumerate() {
            if constant_time_eq(&entry.secret, given.as_bytes()) && found.is_none() {
                found = Some((index as u32, entry.scope));
            }
        }
        match found {
            Some((index, scope)) => Identity::Token { index, scope },
            None => Identity::Invalid,
        }
    }

    /// Where token `index` was defined, for logs.
    pub fn label(&self, index: u32) -> &str {
        self.tokens.entries.get(index as usize).map_or("unknown token", |e| e.label.as_str())
    }

    /// Whether `identity` may do what needs `needed`.
    pub fn authorize(&self, identity: &Identity, needed: Scope) -> Result<(), AuthError> {
        if needed == Scope::Admin && !self.admin_configured {
            return Err(AuthError::AdminOff);
        }
        match identity {
            Identity::Token { scope, .. } if *scope >= needed => Ok(()),
            Identity::Token { scope, .. } => Err(AuthError::Forbidden { have: *scope, needed }),
            Identity::Invalid => Err(AuthError::Invalid { needed }),
            Identity::Anonymous if self.anonymous_allowed && needed < Scope::Admin => Ok(()),
            Identity::Anonymous => Err(AuthError::Missing { needed }),
        }
    }

    /// Checks the `Authorization` header of a request for `needed`; for
    /// handlers that check again what the middleware checked by path.
    pub fn require(&self, headers: &HeaderMap, needed: Scope) -> Result<(), AuthError> {
        self.authorize(&self.identify(bearer(headers).as_deref()), needed)
    }
}

/// The credential in `Authorization`: the bearer token, or `Some("")`
/// (which matches no token) for any other scheme, so a Basic header is
/// refused rather than treated as no credential at all.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().unwrap_or("");
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim().to_string()),
        _ => Some(String::new()),
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Liveness and readiness probes: no token, and exempt from rate
    /// limits and load shedding, so orchestrators see the truth under load.
    Probe,
    /// Open to anyone: the dashboard page and its assets, its bootstrap
    /// (`/v1/dashboard`: region names and URLs), the API description, and
    /// `/metrics` (counts and latencies, never document contents or ids;
    /// Prometheus scrapers rarely carry tokens).
    Public,
    /// Needs a token with this scope (when authentication is on).
    Needs(Scope),
}

/// Which scope a request needs, by method and path. Everything not listed
/// as public needs at least `read`, so a new route is protected by default.
pub fn access(method: &Method, path: &str) -> Access {
    match path {
        "/healthz" | "/readyz" => return Access::Probe,
        "/" | "/metrics" | "/v1/dashboard" | "/openapi.json" => return Access::Public,
        _ if path.starts_with("/dashboard/") => return Access::Public,
        _ => {}
    }
    if path == "/v1/admin" || path.starts_with("/v1/admin/") {
        Access::Needs(Scope::Admin)
    } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Access::Needs(Scope::Read)
    } else {
        Access::Needs(Scope::Write)
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "read-token-0123456789";
    const WRITE: &str = "write-token-0123456789";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# comment\n\n{READ} read\n{WRITE}   read,write  # trailing comment\n"), "tokens file")
            .unwrap()
    }

    #[test]
    fn files_parse_and_scopes_imply_smaller_ones() {
        let auth = Auth::new(tokens(), Some("admin-token-0123456789"), false);
        assert!(auth.required());
        let read = auth.identify(Some(READ));
        let write = auth.identify(Some(WRITE));
        let admin = auth.identify(Some("admin-token-0123456789"));
        assert_eq!(read, Identity::Token { index: 0, scope: Scope::Read });
        assert_eq!(auth.label(1), "tokens file line 4");
        assert!(auth.authorize(&read, Scope::Read).is_ok());
        assert_eq!(
            auth.authorize(&read, Scope::Write),
            Err(AuthError::Forbidden { have: Scope::Read, needed: Scope::Write })
        );
        assert!(auth.authorize(&write, Scope::Write).is_ok());
        assert!(auth.authorize(&write, Scope::Admin).is_err());
        for needed in [Scope::Read, Scope::Write, Scope::Admin] {
            assert!(auth.authorize(&admin, needed).is_ok());
        }
        assert_eq!(auth.authorize(&Identity::Anonymous, Scope::Read), Err(AuthError::Missing { needed: Scope::Read }));
        assert_eq!(auth.identify(Some("nope-nope-nope-nope")), Identity::Invalid);
        assert_eq!(auth.identify(Some("")), Identity::Invalid);
    }

    #[test]
    fn without_client_tokens_everything_but_admin_is_open() {
        let auth = Auth::new(Tokens::new(), None, false);
        assert!(!auth.required());
        assert!(auth.authorize(&Identity::Anonymous, Scope::Write).is_ok());
        assert_eq!(auth.authorize(&Identity::Anonymous, Scope::Admin), Err(AuthError::AdminOff));
        let auth = Auth::new(Tokens::new(), Some("admin-token-0123456789"), false);
        assert_eq!(
            auth.authorize(&Identity::Anonymous, Scope::Admin),
            Err(AuthError::Missing { needed: Scope::Admin })
        );
        // allow_anonymous with tokens: anonymous reads and writes, presented tokens still checked.
        let auth = Auth::new(tokens(), None, true);
        assert!(auth.authorize(&Identity::Anonymous, Scope::Write).is_ok());
        assert!(auth.authorize(&auth.identify(Some("wrong-wrong-wrong-wrong")), Scope::Read).is_err());
    }

    #[test]
    fn bad_entries_name_the_line() {
        for (text, needle) in [
            ("short read", "line 1: the token is 5 characters"),
            ("read-token-0123456789", "no scopes"),
            ("read-token-0123456789 reed", "unknown scope \"reed\""),
            ("read-token-01234567\"89 read", "may hold only"),
            (&format!("{READ} read\n{READ} write"), "line 2: this token is already defined (tokens file line 1)"),
        ] {
            let err = Tokens::parse(text, "tokens file").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let mut inline = Tokens::new();
        inline.parse_into(&format!("{READ} read; {WRITE} write"), "MERIDIAN_TOKENS", true).unwrap();
        assert_eq!(inline.len(), 2);
        assert!(!format!("{inline:?}").contains(READ), "Debug must not print tokens");
    }

    #[test]
    fn bearer_and_access_rules() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers).as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers).as_deref(), Some(""));
        assert_eq!(access(&Method::GET, "/healthz"), Access::Probe);
        assert_eq!(access(&Method::GET, "/dashboard/app.js"), Access::Public);
        assert_eq!(access(&Method::GET, "/v1/cluster/stream"), Access::Needs(Scope::Read));
        assert_eq!(access(&Method::PUT, "/v1/docs/a"), Access::Needs(Scope::Write));
        assert_eq!(access(&Method::GET, "/v1/admin/faults"), Access::Needs(Scope::Admin));
        assert_eq!(access(&Method::POST, "/nowhere"), Access::Needs(Scope::Write));
    }
}

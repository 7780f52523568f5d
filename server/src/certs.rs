//! Certificates for the node-to-node QUIC links: the files, how they are made
//! (`meridian certs init` and `meridian certs issue`) and the rustls/quinn
//! configurations built from them ([`load`]).
//!
//! # Files
//!
//! One directory (`--dir`, e.g. `certs/`) holds, all PEM:
//!
//! ```text
//! certs/            0700, created by `init`
//!   ca.pem          the cluster CA certificate: public, every node needs it
//!   ca.key          the CA private key, 0600: SECRET, stays where `init` ran
//!   eu-west.pem     node certificate for node `eu-west`, written by `issue`
//!   eu-west.key     that node's private key, 0600
//!   us-east.pem ...
//! ```
//!
//! A node in production needs exactly three files: `ca.pem`, `NAME.pem` and
//! `NAME.key`. [`load`] reads only those.
//!
//! # Trust model
//!
//! The cluster has its own CA, made by [`init`]; nothing is trusted from the
//! operating system's roots. Links use mutual TLS 1.3: the server requires a
//! client certificate and both sides accept a peer only if its certificate
//! chains to `ca.pem`. Peers are dialled by IP address, so every node
//! certificate carries the DNS name [`SERVER_NAME`] (`meridian`, plus
//! `localhost` and the node's own name) and clients always verify against
//! that fixed name: what is checked is membership of the cluster, i.e. the
//! signature of the cluster CA, not which node answered. A node's name is in
//! its certificate (subject CN and a SAN) for logs and diagnostics; the link
//! protocol must not treat it as more than a label.
//!
//! There is no revocation list. A node certificate stays valid for about ten
//! years, so a leaked node key is a cluster member until the CA is replaced
//! (a new `init` and a new `issue` for every node).
//!
//! # Why `ca.key` must not be shipped to nodes
//!
//! Whoever holds `ca.key` can mint certificates that every node accepts, for
//! any name, as many as they like, and none can be revoked. On a node it would
//! turn the compromise of one machine into the compromise of the whole
//! cluster, recoverable only by replacing the CA everywhere. Keep `ca.key` on
//! the machine where `init` ran (or offline), run `issue` there and copy
//! `ca.pem`, `NAME.pem` and `NAME.key` to the node. [`load`] logs a warning
//! when it finds `ca.key` next to a node's files.
//!
//! # Limits
//!
//! [`issue`] only works with a CA made by [`init`]: rcgen (without its
//! `x509-parser` feature) cannot read an arbitrary CA certificate, so the
//! issuer is rebuilt from `ca.key` (the CA's subject name is derived from its
//! key) and every new certificate is verified against `ca.pem` before it is
//! written. `ca.pem` may hold several CA certificates (all become roots),
//! which allows rolling to a new CA.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The DNS name in every node certificate, and the name every client
/// verifies: peers are dialled by IP address, so trust comes from the chain
/// to the cluster CA, not from the address.
pub const SERVER_NAME: &str = "meridian";

/// The ALPN protocol of node-to-node links; both sides require it.
pub const ALPN: &[u8] = b"meridian/1";

/// QUIC keep-alive interval of peer links, so an idle link stays open and
/// a dead peer is noticed.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// QUIC idle timeout of peer links: a peer silent this long (no
/// keep-alives answered) is considered gone and the connection fails.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const ORGANIZATION: &str = "Meridian";
/// Longest node name: it becomes a DNS label in the certificate.
const MAX_NODE_NAME_LEN: usize = 63;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// About ten years.
const NODE_LIFETIME: Duration = Duration::from_secs(3653 * 24 * 60 * 60);
/// About twenty years, so node certificates issued late still get most of
/// their lifetime (a chain is only valid while every link is).
const CA_LIFETIME: Duration = Duration::from_secs(7305 * 24 * 60 * 60);
/// Certificates start one day in the past to tolerate clock skew between
/// the machine that issues them and the nodes.
const BACKDATE: Duration = DAY;

/// Why a certificate command or [`load`] failed. Every message names the
/// file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The node name cannot be used in a certificate and a file name.
    #[error(
        "invalid node name {name:?}: {reason}; use 1 to 63 characters of a-z, 0-9 and '-' \
         that start and end with a letter or digit, like eu-west"
    )]
    InvalidNodeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca.pem` is missing.
    #[error(
        "no CA in {}: {} not found; run `meridian certs init --dir {}` to create the \
         cluster CA, or copy the cluster's ca.pem there",
        .dir.display(), .path.display(), .dir.display()
    )]
    NoCa {
        /// The certificate directory.
        dir: PathBuf,
        /// The missing `ca.pem`.
        path: PathBuf,
    },
    /// `ca.key` is missing, so no certificate can be issued here (which is
    /// how a node's directory should be).
    #[error(
        "{} not found: certificates are issued with the CA key; run `meridian certs issue` \
         on the machine where `meridian certs init` created it, then copy ca.pem, NODE.pem \
         and NODE.key to the node",
        .path.display()
    )]
    NoCaKey {
        /// The missing `ca.key`.
        path: PathBuf,
    },
    /// The node's certificate or key is missing.
    #[error(
        "{} not found: run `meridian certs issue --dir {} --node {node}` where the CA key \
         is kept, and copy {node}.pem and {node}.key here",
        .path.display(), .dir.display()
    )]
    NoNodeCert {
        /// The missing file (`NAME.pem` or `NAME.key`).
        path: PathBuf,
        /// The certificate directory.
        dir: PathBuf,
        /// The node name.
        node: String,
    },
    /// A file that would be written exists already.
    #[error("refusing to overwrite {}: {hint}", .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
        /// Why it is kept and what to do instead.
        hint: String,
    },
    /// Reading or writing a file or directory failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file is not the PEM certificate or key it should be.
    #[error(
        "{} is not a valid {what}: {detail}; it must be the PEM file written by \
         `meridian certs init` or `meridian certs issue`",
        .path.display()
    )]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A node's private key does not belong to its certificate.
    #[error(
        "{} is not the private key of {}: they come from different `meridian certs issue` \
         runs; copy the matching pair, or delete both and issue the node again",
        .key.display(), .cert.display()
    )]
    KeyMismatch {
        /// The node certificate.
        cert: PathBuf,
        /// The node key that does not match it.
        key: PathBuf,
    },
    /// `ca.key` is not the key of `ca.pem`.
    #[error(
        "{} does not belong to {}: a certificate signed with it is refused ({reason}); put \
         back the ca.key that `meridian certs init` wrote next to this ca.pem",
        .key.display(), .cert.display()
    )]
    CaKeyMismatch {
        /// `ca.pem`.
        cert: PathBuf,
        /// `ca.key`.
        key: PathBuf,
        /// Why the test certificate was refused.
        reason: String,
    },
    /// The node certificate is not accepted by the CA in `ca.pem`.
    #[error(
        "{} is not accepted by {}: {reason}; it was probably issued by another cluster's CA \
         or has expired: run `meridian certs issue --dir DIR --node {node}` where this \
         cluster's ca.key is kept and copy the new {node}.pem and {node}.key here",
        .cert.display(), .ca.display()
    )]
    Untrusted {
        /// The node certificate.
        cert: PathBuf,
        /// `ca.pem`.
        ca: PathBuf,
        /// The node name.
        node: String,
        /// What the verifier said.
        reason: String,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate {}: {source}", .path.display())]
    Generate {
        /// The file it was for.
        path: PathBuf,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls or quinn refused the configuration built from the files.
    #[error("cannot build the TLS configuration from {}: {reason}", .path.display())]
    Tls {
        /// The file the problem comes from.
        path: PathBuf,
        /// What rustls or quinn said.
        reason: String,
    },
}

/// What [`init`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    /// The certificate directory.
    pub dir: PathBuf,
    /// The CA certificate (`DIR/ca.pem`), to copy to every node.
    pub ca_cert: PathBuf,
    /// The CA private key (`DIR/ca.key`), never to be copied to a node.
    pub ca_key: PathBuf,
}

/// What [`issue`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueReport {
    /// The node name.
    pub node: String,
    /// The node certificate (`DIR/NAME.pem`).
    pub cert: PathBuf,
    /// The node private key (`DIR/NAME.key`).
    pub key: PathBuf,
    /// The CA certificate the node also needs (`DIR/ca.pem`).
    pub ca_cert: PathBuf,
}

/// The QUIC configurations of one node, from [`load`].
///
/// Both use TLS 1.3 only with the `ring` provider, require [`ALPN`], and set
/// [`KEEP_ALIVE_INTERVAL`] and [`MAX_IDLE_TIMEOUT`].
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Accepts only clients presenting a certificate that chains to the
    /// cluster CA; presents this node's certificate.
    pub server: quinn::ServerConfig,
    /// Trusts only the cluster CA, verifying [`SERVER_NAME`] (connect with
    /// `endpoint.connect_with(client, addr, SERVER_NAME)`); presents this
    /// node's certificate.
    pub client: quinn::ClientConfig,
    /// This node's name.
    pub node_name: String,
}

/// `meridian certs init --dir D`: creates `D` (mode 0700 if it is new) with
/// a new cluster CA, `ca.pem` and `ca.key` (0600). Refuses if either exists.
pub fn init(dir: &Path) -> Result<InitReport, CertError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert_hint = "this directory already holds a cluster CA and every node certificate \
                     chains to it; to start another cluster, use another --dir";
    let key_hint = format!(
        "a CA key is there without its certificate; move it away if it is not needed, \
         or restore the {CA_CERT_FILE} it belongs to"
    );
    refuse_existing(&cert_path, cert_hint)?;
    refuse_existing(&key_path, &key_hint)?;
    create_private_dir(dir)?;

    let key = KeyPair::generate().map_err(|source| CertError::Generate { path: key_path.clone(), source })?;
    let mut params = ca_params(&key);
    set_validity(&mut params, CA_LIFETIME);
    let cert = params.self_signed(&key).map_err(|source| CertError::Generate { path: cert_path.clone(), source })?;

    write_new(&key_path, key.serialize_pem().as_bytes(), true, &key_hint)?;
    if let Err(err) = write_new(&cert_path, cert.pem().as_bytes(), false, cert_hint) {
        let _ = fs::remove_file(&key_path);
        return Err(err);
    }
    tracing::info!(dir = %dir.display(), "created cluster CA");
    Ok(InitReport { dir: dir.to_path_buf(), ca_cert: cert_path, ca_key: key_path })
}

/// `meridian certs issue --dir D --node NAME`: writes `D/NAME.pem` and
/// `D/NAME.key` (0600), signed by `D/ca.pem` + `D/ca.key`. Refuses to
/// overwrite either.
///
/// The certificate has subject CN = NAME, the DNS names [`SERVER_NAME`],
/// `localhost` and NAME, both TLS server and client authentication, and a
/// validity of about ten years starting a day ago.
pub fn issue(dir: &Path, node: &str) -> Result<IssueReport, CertError> {
    validate_node_name(node)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let (cert_path, key_path) = node_paths(dir, node);

    let roots = Arc::new(load_roots(dir)?);
    let ca_key_pem = match fs::read_to_string(&ca_key_path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(CertError::NoCaKey { path: ca_key_path }),
        Err(source) => return Err(io_error("read", &ca_key_path, source)),
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|err| CertError::BadPem {
        path: ca_key_path.clone(),
        what: "CA private key",
        detail: err.to_string(),
    })?;

    let hint = format!(
        "node {node} already has a certificate; to replace it, delete {} and {} first \
         (then copy the new pair to the node)",
        cert_path.display(),
        key_path.display()
    );
    refuse_existing(&cert_path, &hint)?;
    refuse_existing(&key_path, &hint)?;

    // Without rcgen's x509-parser feature the issuer cannot be read from
    // ca.pem; it is rebuilt from ca.key (the CA name derives from the key)
    // and the result is checked against ca.pem below.
    let issuer = Issuer::new(ca_params(&ca_key), ca_key);
    let key = KeyPair::generate().map_err(|source| CertError::Generate { path: key_path.clone(), source })?;
    let cert = node_params(node)
        .and_then(|params| params.signed_by(&key, &issuer))
        .map_err(|source| CertError::Generate { path: cert_path.clone(), source })?;

    let provider = Arc::new(ring::default_provider());
    let verifiers = Verifiers::new(roots, provider, &ca_cert_path)?;
    verifiers.check(std::slice::from_ref(cert.der())).map_err(|reason| CertError::CaKeyMismatch {
        cert: ca_cert_path.clone(),
        key: ca_key_path.clone(),
        reason,
    })?;

    write_new(&key_path, key.serialize_pem().as_bytes(), true, &hint)?;
    if let Err(err) = write_new(&cert_path, cert.pem().as_bytes(), false, &hint) {
        let _ = fs::remove_file(&key_path);
        return Err(err);
    }
    tracing::info!(node, dir = %dir.display(), "issued node certificate");
    Ok(IssueReport { node: node.to_owned(), cert: cert_path, key: key_path, ca_cert: ca_cert_path })
}

/// Loads `D/ca.pem`, `D/NAME.pem` and `D/NAME.key` and builds the QUIC
/// configurations of node NAME.
///
/// Fails early, naming the file, if the node certificate is not accepted by
/// `ca.pem` (another cluster's CA, expired) or the key does not match it.
/// Logs a warning if `D/ca.key` is present or `NAME.key` is readable by
/// other users.
pub fn load(dir: &Path, node: &str) -> Result<PeerTls, CertError> {
    validate_node_name(node)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let (cert_path, key_path) = node_paths(dir, node);
    let missing =
        |path: &Path| CertError::NoNodeCert { path: path.to_path_buf(), dir: dir.to_path_buf(), node: node.to_owned() };

    let roots = Arc::new(load_roots(dir)?);
    let chain = read_certs(&cert_path, "node certificate", || missing(&cert_path))?;
    let key = read_key(&key_path, || missing(&key_path))?;
    warn_about_secrets(dir, &key_path);

    let provider = Arc::new(ring::default_provider());
    let verifiers = Verifiers::new(roots, provider.clone(), &ca_cert_path)?;
    verifiers.check(&chain).map_err(|reason| CertError::Untrusted {
        cert: cert_path.clone(),
        ca: ca_cert_path.clone(),
        node: node.to_owned(),
        reason,
    })?;

    let key_error = |err: rustls::Error| match err {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch { cert: cert_path.clone(), key: key_path.clone() },
        other => CertError::Tls { path: key_path.clone(), reason: other.to_string() },
    };
    let tls_error = |reason: String| CertError::Tls { path: cert_path.clone(), reason };
    let transport = transport_config();

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error(err.to_string()))?
        .with_client_cert_verifier(verifiers.client)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    // Clients do not resume (see below), so tickets would be wasted.
    server_tls.send_tls13_tickets = 0;
    let server_crypto = QuicServerConfig::try_from(server_tls).map_err(|err| tls_error(err.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| tls_error(err.to_string()))?
        .with_webpki_verifier(verifiers.server)
        .with_client_auth_cert(chain, key)
        .map_err(key_error)?;
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    // Every peer answers to the same SERVER_NAME, so a session cached from
    // one peer would be offered to all others; links are few and long-lived,
    // so resumption is not worth it.
    client_tls.resumption = rustls::client::Resumption::disabled();
    let client_crypto = QuicClientConfig::try_from(client_tls).map_err(|err| tls_error(err.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);

    Ok(PeerTls { server, client, node_name: node.to_owned() })
}

/// Checks a node name: 1 to 63 characters of a-z, 0-9 and '-', starting and
/// ending with a letter or digit, not all digits, not `ca`. The name becomes
/// a file name and a DNS name in the certificate.
pub fn validate_node_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason: String| Err(CertError::InvalidNodeName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("it is empty".into());
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return invalid(format!(
            "it is {} bytes long, more than the {MAX_NODE_NAME_LEN} a DNS label allows",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-')) {
        return invalid(if c.is_ascii_uppercase() {
            "it contains uppercase letters".into()
        } else {
            format!("it contains {c:?}")
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it starts or ends with '-'".into());
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("it is all digits, which TLS would read as part of an IP address".into());
    }
    if name == "ca" {
        return invalid(format!("`ca` is taken by the CA's own files ({CA_CERT_FILE}, {CA_KEY_FILE})"));
    }
    if DnsName::try_from(name).is_err() {
        return invalid("it is not a valid DNS name".into());
    }
    Ok(())
}

/// The two verifiers built from `ca.pem`: the server's check of clients and
/// the client's check of servers.
struct Verifiers {
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl Verifiers {
    fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>, ca_cert_path: &Path) -> Result<Self, CertError> {
        let tls_error = |reason: String| CertError::Tls { path: ca_cert_path.to_path_buf(), reason };
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|err| tls_error(err.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|err| tls_error(err.to_string()))?;
        Ok(Verifiers { client, server })
    }

    /// Checks `chain` the way peers will, both as a client and as a server
    /// certificate for [`SERVER_NAME`], at the current time.
    fn check(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (end_entity, intermediates) = chain.split_first().ok_or_else(|| "no certificate".to_owned())?;
        let now = UnixTime::now();
        self.client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|err| format!("as a client certificate: {err}"))?;
        let name = ServerName::try_from(SERVER_NAME).map_err(|err| err.to_string())?;
        self.server
            .verify_server_cert(end_entity, intermediates, &name, &[], now)
            .map_err(|err| format!("as a server certificate for {SERVER_NAME:?}: {err}"))?;
        Ok(())
    }
}

/// The CA's parameters, rebuilt identically from its key: the subject name
/// carries an id derived from the public key, so two clusters' CAs never
/// share a name (a foreign certificate then fails as "unknown issuer").
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let key_id = params.key_identifier(key);
    let cluster_id: String = key_id.iter().take(6).map(|b| format!("{b:02x}")).collect();
    params.distinguished_name = distinguished_name(&format!("Meridian cluster CA {cluster_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn node_params(node: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut names = vec![SERVER_NAME.to_owned(), "localhost".to_owned()];
    if !names.iter().any(|name| name == node) {
        names.push(node.to_owned());
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = distinguished_name(node);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_LIFETIME);
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + lifetime;
}

fn node_paths(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{node}.pem")), dir.join(format!("{node}.key")))
}

fn load_roots(dir: &Path) -> Result<RootCertStore, CertError> {
    let path = dir.join(CA_CERT_FILE);
    let certs = read_certs(&path, "CA certificate", || CertError::NoCa { dir: dir.to_path_buf(), path: path.clone() })?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|err| CertError::BadPem {
            path: path.clone(),
            what: "CA certificate",
            detail: err.to_string(),
        })?;
    }
    Ok(roots)
}

fn read_certs(
    path: &Path,
    what: &'static str,
    missing: impl FnOnce() -> CertError,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read_file(path, missing)?;
    let bad = |detail: String| CertError::BadPem { path: path.to_path_buf(), what, detail };
    let certs =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|err| bad(err.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it has no CERTIFICATE section".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path, missing: impl FnOnce() -> CertError) -> Result<PrivateKeyDer<'static>, CertError> {
    let bytes = read_file(path, missing)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| CertError::BadPem {
        path: path.to_path_buf(),
        what: "private key",
        detail: match err {
            rustls::pki_types::pem::Error::NoItemsFound => "it has no PRIVATE KEY section".into(),
            other => other.to_string(),
        },
    })
}

fn read_file(path: &Path, missing: impl FnOnce() -> CertError) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => missing(),
        _ => io_error("read", path, err),
    })
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> CertError {
    CertError::Io { action, path: path.to_path_buf(), source }
}

fn refuse_existing(path: &Path, hint: &str) -> Result<(), CertError> {
    // `symlink_metadata` also sees a dangling symlink, which would make the
    // exclusive create below fail anyway.
    match fs::symlink_metadata(path) {
        Ok(_) => Err(CertError::Exists { path: path.to_path_buf(), hint: hint.to_owned() }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("inspect", path, err)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|err| io_error("create directory", dir, err))
}

/// Writes a new file, never replacing one (exclusive create); secret files
/// get mode 0600. A partly written file is removed.
fn write_new(path: &Path, contents: &[u8], secret: bool, hint: &str) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|err| match err.kind() {
        io::ErrorKind::AlreadyExists => CertError::Exists { path: path.to_path_buf(), hint: hint.to_owned() },
        _ => io_error("create", path, err),
    })?;
    if let Err(err) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io_error("write", path, err));
    }
    Ok(())
}

fn warn_about_secrets(dir: &Path, node_key: &Path) {
    let ca_key = dir.join(CA_KEY_FILE);
    if ca_key.exists() {
        tracing::warn!(
            path = %ca_key.display(),
            "the cluster CA private key is in this node's certificate directory; \
             in production keep it off the nodes (a node needs only ca.pem, NAME.pem and NAME.key)"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(node_key) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %node_key.display(),
                    "the node private key is readable by other users; run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = node_key;
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport
        .max_idle_timeout(Some(quinn::IdleTimeout::try_from(MAX_IDLE_TIMEOUT).expect("5 s fits in a QUIC varint")));
    Arc::new(transport)
}

#[cfg(test)]
mod tests {
    use std::future::{Future, IntoFuture};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Bound on every await, so a hang fails the test instead of blocking CI.
    /// Above MAX_IDLE_TIMEOUT, so an idle timeout is reported as an error.
    const STEP: Duration = Duration::from_secs(10);

    /// A unique directory under the system temp dir, removed on drop (also
    /// when the test panics).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "meridian-certs-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn cert_of(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn certs_init_issue_load_round_trip() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");

        let init_report = init(&dir).unwrap();
        assert_eq!(
            init_report,
            InitReport { dir: dir.clone(), ca_cert: dir.join("ca.pem"), ca_key: dir.join("ca.key") }
        );
        let eu = issue(&dir, "eu-west").unwrap();
        assert_eq!(eu.node, "eu-west");
        assert_eq!(eu.cert, dir.join("eu-west.pem"));
        assert_eq!(eu.key, dir.join("eu-west.key"));
        assert_eq!(eu.ca_cert, dir.join("ca.pem"));
        issue(&dir, "us-east").unwrap();
        // The longest name, and names that only look odd, are fine.
        issue(&dir, &"a".repeat(63)).unwrap();
        issue(&dir, "eu-west-2").unwrap();

        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join("ca.key")), 0o600);
            assert_eq!(mode(&dir.join("eu-west.key")), 0o600);
            assert_eq!(mode(&dir.join("ca.pem")) & 0o600, 0o600);
        }
        let ca_pem = fs::read_to_string(dir.join("ca.pem")).unwrap();
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_pem}");
        let key_pem = fs::read_to_string(dir.join("eu-west.key")).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let eu_tls = load(&dir, "eu-west").unwrap();
        assert_eq!(eu_tls.node_name, "eu-west");
        let us_tls = load(&dir, "us-east").unwrap();
        assert_eq!(us_tls.node_name, "us-east");

        // The node certificate names SERVER_NAME, localhost and the node,
        // and nothing else.
        let roots = Arc::new(load_roots(&dir).unwrap());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots, Arc::new(ring::default_provider())).build().unwrap();
        let cert = cert_of(&dir.join("eu-west.pem"));
        let verify = |name: &'static str| {
            verifier.verify_server_cert(&cert, &[], &ServerName::try_from(name).unwrap(), &[], UnixTime::now())
        };
        for name in [SERVER_NAME, "localhost", "eu-west"] {
            verify(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        assert!(verify("us-east").is_err());
    }

    #[test]
    fn certs_init_and_issue_refuse_to_overwrite() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");
        init(&dir).unwrap();
        let ca_before = fs::read(dir.join("ca.pem")).unwrap();
        let ca_key_before = fs::read(dir.join("ca.key")).unwrap();

        let err = init(&dir).unwrap_err();
        assert!(matches!(&err, CertError::Exists { path, .. } if *path == dir.join("ca.pem")));
        let message = err.to_string();
        assert!(message.starts_with(&format!("refusing to overwrite {}", dir.join("ca.pem").display())), "{message}");
        assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
        assert_eq!(fs::read(dir.join("ca.key")).unwrap(), ca_key_before);

        issue(&dir, "eu-west").unwrap();
        let cert_before = fs::read(dir.join("eu-west.pem")).unwrap();
        let err = issue(&dir, "eu-west").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::Exists { .. }), "{message}");
        assert!(message.contains("eu-west.pem"), "{message}");
        assert!(message.contains("delete"), "{message}");
        assert_eq!(fs::read(dir.join("eu-west.pem")).unwrap(), cert_before);

        // A stray key alone also blocks, and is left alone.
        fs::write(dir.join("us-east.key"), "stray").unwrap();
        let err = issue(&dir, "us-east").unwrap_err();
        assert!(err.to_string().contains("us-east.key"), "{err}");
        assert!(!dir.join("us-east.pem").exists());
        assert_eq!(fs::read(dir.join("us-east.key")).unwrap(), b"stray");

        // A CA key without its certificate blocks init.
        let other = tmp.join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("ca.key"), "stray").unwrap();
        let err = init(&other).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert!(!other.join("ca.pem").exists());
    }

    #[test]
    fn certs_bad_node_names_are_refused() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");
        init(&dir).unwrap();
        let too_long = "a".repeat(64);
        for name in [
            "",
            "EU-West",
            "eu_west",
            "eu west",
            "eu.west",
            "../eu-west",
            "eu/west",
            "-eu",
            "eu-",
            "123",
            "ca",
            "é",
            too_long.as_str(),
        ] {
            let err = issue(&dir, name).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, CertError::InvalidNodeName { .. }), "{name:?}: {message}");
            assert!(message.starts_with(&format!("invalid node name {name:?}: ")), "{message}");
            assert!(message.contains("a-z, 0-9 and '-'"), "{message}");
            assert!(matches!(load(&dir, name), Err(CertError::InvalidNodeName { .. })));
        }
        // Nothing but the CA was written.
        let mut files: Vec<_> =
            fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        assert_eq!(files, ["ca.key", "ca.pem"]);
        let err = validate_node_name("EU").unwrap_err().to_string();
        assert!(err.contains("uppercase"), "{err}");
    }

    #[test]
    fn certs_missing_files_name_the_file_and_the_command() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");

        let err = issue(&dir, "eu-west").unwrap_err();
        assert!(matches!(err, CertError::NoCa { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("run `meridian certs init --dir {}`", dir.display())), "{message}");
        assert!(matches!(load(&dir, "eu-west"), Err(CertError::NoCa { .. })));

        init(&dir).unwrap();
        issue(&dir, "eu-west").unwrap();
        let err = load(&dir, "ap-south").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::NoNodeCert { .. }), "{message}");
        assert!(
            message.starts_with(&format!(
                "{} not found: run `meridian certs issue --dir {} --node ap-south`",
                dir.join("ap-south.pem").display(),
                dir.display()
            )),
            "{message}"
        );

        fs::remove_file(dir.join("eu-west.key")).unwrap();
        let message = load(&dir, "eu-west").unwrap_err().to_string();
        assert!(message.starts_with(&format!("{} not found", dir.join("eu-west.key").display())), "{message}");
        assert!(message.contains("--node eu-west"), "{message}");

        // Garbage where a certificate should be.
        fs::write(dir.join("us-east.pem"), "not a certificate\n").unwrap();
        fs::write(dir.join("us-east.key"), "not a key\n").unwrap();
        let err = load(&dir, "us-east").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::BadPem { .. }), "{message}");
        assert!(message.contains("us-east.pem"), "{message}");
    }

    #[test]
    fn certs_from_another_cluster_or_mismatched_are_refused() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");
        let foreign = tmp.join("foreign");
        init(&dir).unwrap();
        init(&foreign).unwrap();
        issue(&dir, "eu-west").unwrap();
        issue(&foreign, "eu-west").unwrap();

        // A node certificate of another cluster in this cluster's directory.
        fs::copy(foreign.join("eu-west.pem"), dir.join("mallory.pem")).unwrap();
        fs::copy(foreign.join("eu-west.key"), dir.join("mallory.key")).unwrap();
        let err = load(&dir, "mallory").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::Untrusted { .. }), "{message}");
        assert!(message.contains("mallory.pem"), "{message}");
        assert!(message.contains("ca.pem"), "{message}");
        assert!(message.contains("UnknownIssuer"), "{message}");

        // The key of another node next to a certificate.
        issue(&dir, "us-east").unwrap();
        fs::copy(dir.join("eu-west.key"), dir.join("swapped.key")).unwrap();
        fs::copy(dir.join("us-east.pem"), dir.join("swapped.pem")).unwrap();
        let err = load(&dir, "swapped").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{message}");
        assert!(message.contains("swapped.key"), "{message}");

        // ca.pem of one cluster with ca.key of another: issue refuses and
        // writes nothing.
        let mixed = tmp.join("mixed");
        fs::create_dir(&mixed).unwrap();
        fs::copy(dir.join("ca.pem"), mixed.join("ca.pem")).unwrap();
        fs::copy(foreign.join("ca.key"), mixed.join("ca.key")).unwrap();
        let err = issue(&mixed, "eu-west").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::CaKeyMismatch { .. }), "{message}");
        assert!(message.contains("ca.key"), "{message}");
        assert!(!mixed.join("eu-west.pem").exists());
        assert!(!mixed.join("eu-west.key").exists());
    }

    #[test]
    fn certs_node_directory_without_ca_key_loads_but_cannot_issue() {
        let tmp = TempDir::new();
        let dir = tmp.join("certs");
        init(&dir).unwrap();
        issue(&dir, "eu-west").unwrap();

        // What a production node gets: ca.pem, NAME.pem, NAME.key.
        let node = tmp.join("node");
        fs::create_dir(&node).unwrap();
        for file in ["ca.pem", "eu-west.pem", "eu-west.key"] {
            fs::copy(dir.join(file), node.join(file)).unwrap();
        }
        load(&node, "eu-west").unwrap();
        let err = issue(&node, "us-east").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CertError::NoCaKey { .. }), "{message}");
        assert!(message.starts_with(&format!("{} not found", node.join("ca.key").display())), "{message}");
    }

    // --- real QUIC handshakes over loopback ---

    async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(STEP, future).await.unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
    }

    /// What one side of a link saw: the bytes it received and the
    /// certificate the peer presented.
    #[derive(Debug)]
    struct Seen {
        received: Vec<u8>,
        peer_cert: Option<CertificateDer<'static>>,
        /// Negotiated ALPN protocol and the server name the client sent.
        alpn: Option<Vec<u8>>,
        server_name: Option<String>,
    }

    fn handshake(conn: &quinn::Connection) -> (Option<Vec<u8>>, Option<String>) {
        let data = conn.handshake_data().and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok());
        match data {
            Some(data) => (data.protocol, data.server_name),
            None => (None, None),
        }
    }

    fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
        let identity = conn.peer_identity()?;
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        chain.first().cloned()
    }

    /// Runs one server accept and one client connection between the two
    /// configurations; each side sends a greeting on a uni stream and reads
    /// the other's. Returns each side's outcome (connection errors are
    /// `Err`; a hang panics).
    async fn link(
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
    ) -> (Result<Seen, String>, Result<Seen, String>) {
        let server_endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let server_addr: SocketAddr = server_endpoint.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let incoming = bounded("accept", server_endpoint.accept()).await.expect("server endpoint closed");
            let result = async {
                let conn = bounded("server handshake", incoming.into_future()).await.map_err(|err| err.to_string())?;
                let peer_cert = peer_cert(&conn);
                let (alpn, server_name) = handshake(&conn);
                let mut recv = bounded("server accept_uni", conn.accept_uni()).await.map_err(|err| err.to_string())?;
                let received = bounded("server read", recv.read_to_end(1024)).await.map_err(|err| err.to_string())?;
                let mut send = bounded("server open_uni", conn.open_uni()).await.map_err(|err| err.to_string())?;
                bounded("server write", send.write_all(b"hello from the server"))
                    .await
                    .map_err(|err| err.to_string())?;
                send.finish().map_err(|err| err.to_string())?;
                // The client closes once it has read the reply.
                bounded("server waiting for close", conn.closed()).await;
                Ok(Seen { received, peer_cert, alpn, server_name })
            }
            .await;
            server_endpoint.close(0u32.into(), b"");
            result
        });

        let client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let client_result = async {
            let connecting =
                client_endpoint.connect_with(client, server_addr, SERVER_NAME).map_err(|err| err.to_string())?;
            let conn = bounded("client handshake", connecting).await.map_err(|err| err.to_string())?;
            let peer_cert = peer_cert(&conn);
            let (alpn, server_name) = handshake(&conn);
            let mut send = bounded("client open_uni", conn.open_uni()).await.map_err(|err| err.to_string())?;
            bounded("client write", send.write_all(b"hello from the client")).await.map_err(|err| err.to_string())?;
            send.finish().map_err(|err| err.to_string())?;
            let mut recv = bounded("client accept_uni", conn.accept_uni()).await.map_err(|err| err.to_string())?;
            let received = bounded("client read", recv.read_to_end(1024)).await.map_err(|err| err.to_string())?;
            conn.close(0u32.into(), b"done");
            Ok(Seen { received, peer_cert, alpn, server_name })
        }
        .await;
        let server_result = bounded("server task", server_task).await.unwrap();
        client_endpoint.close(0u32.into(), b"");
        (server_result, client_result)
    }

    /// Two clusters, each with nodes eu-west and us-east.
    struct Clusters {
        _tmp: TempDir,
        one: PathBuf,
        two: PathBuf,
    }

    fn clusters() -> Clusters {
        let tmp = TempDir::new();
        let one = tmp.join("one");
        let two = tmp.join("two");
        for dir in [&one, &two] {
            init(dir).unwrap();
            issue(dir, "eu-west").unwrap();
            issue(dir, "us-east").unwrap();
        }
        Clusters { _tmp: tmp, one, two }
    }

    #[tokio::test]
    async fn certs_quic_link_between_nodes_of_one_cluster() {
        let c = clusters();
        let eu = load(&c.one, "eu-west").unwrap();
        let us = load(&c.one, "us-east").unwrap();

        let (server, client) = link(eu.server.clone(), us.client.clone()).await;
        let server = server.expect("server side of the link");
        let client = client.expect("client side of the link");
        assert_eq!(server.received, b"hello from the client");
        assert_eq!(client.received, b"hello from the server");
        // Mutual TLS: each side saw the other's node certificate.
        assert_eq!(server.peer_cert, Some(cert_of(&c.one.join("us-east.pem"))));
        assert_eq!(client.peer_cert, Some(cert_of(&c.one.join("eu-west.pem"))));
        for side in [&server, &client] {
            assert_eq!(side.alpn.as_deref(), Some(ALPN));
        }
        assert_eq!(server.server_name.as_deref(), Some(SERVER_NAME));

        // And the other way round.
        let (server, client) = link(us.server, eu.client).await;
        assert_eq!(server.unwrap().received, b"hello from the client");
        assert_eq!(client.unwrap().received, b"hello from the server");
    }

    #[tokio::test]
    async fn certs_quic_server_refuses_a_client_from_another_cluster() {
        let c = clusters();
        let server = load(&c.one, "eu-west").unwrap().server;

        // (a) The client trusts cluster one's CA (so it accepts the server)
        // but presents a certificate from cluster two.
        let foreign = client_trusting(&c.one, Some(&c.two), "us-east");
        let (server_result, client_result) = link(server.clone(), foreign).await;
        let server_err = server_result.expect_err("server accepted a foreign client");
        let client_err = client_result.expect_err("foreign client got a working link");
        eprintln!("server: {server_err}\nclient: {client_err}");
        assert!(server_err.contains("UnknownIssuer"), "{server_err}");

        // A client with no certificate at all is refused too.
        let anonymous = client_trusting(&c.one, None, "us-east");
        let (server_result, client_result) = link(server, anonymous).await;
        let server_err = server_result.expect_err("server accepted a client without a cert");
        let client_err = client_result.expect_err("anonymous client got a working link");
        eprintln!("server: {server_err}\nclient: {client_err}");
        assert!(server_err.contains("no certificates"), "{server_err}");
    }

    #[tokio::test]
    async fn certs_quic_client_refuses_a_server_from_another_cluster() {
        let c = clusters();
        // (b) A cluster-one client dials a server holding a cluster-two
        // certificate.
        let server = load(&c.two, "eu-west").unwrap().server;
        let client = load(&c.one, "us-east").unwrap().client;
        let (server_result, client_result) = link(server, client).await;
        let client_err = client_result.expect_err("client accepted a foreign server");
        let server_err = server_result.expect_err("foreign server got a working link");
        eprintln!("server: {server_err}\nclient: {client_err}");
        assert!(client_err.contains("UnknownIssuer"), "{client_err}");
    }

    /// A client configuration that trusts `trust`'s CA and presents the
    /// certificate of `node` from `cert_dir` (or none), built by hand
    /// because `load` refuses such mixtures.
    fn client_trusting(trust: &Path, cert_dir: Option<&Path>, node: &str) -> quinn::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(load_roots(trust).unwrap());
        let mut tls = match cert_dir {
            Some(dir) => {
                let (cert_path, key_path) = node_paths(dir, node);
                builder
                    .with_client_auth_cert(vec![cert_of(&cert_path)], PrivateKeyDer::from_pem_file(key_path).unwrap())
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        config.transport_config(transport_config());
        config
    }
}

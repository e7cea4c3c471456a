//! TLS for the listener (`tls = { cert = "...", key = "..." }`): the certificate chain and key
//! loaded from PEM files, served through a resolver whose certificate can be replaced while the
//! server runs (the reloader calls [`TlsCerts::reload`] when either file changes), so a renewed
//! certificate takes effect for new connections without dropping open ones. A file that does not
//! load keeps the previous certificate in service. ALPN offers `http/1.1` (the upgrade request).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The listener's certificate and the acceptor that serves it.
pub struct TlsCerts {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts").field("cert", &self.cert_file).field("key", &self.key_file).finish()
    }
}

/// The certificate in service, swapped on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl TlsCerts {
    /// Loads the chain and key, failing with the file and the reason.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let current = Arc::new(Current(RwLock::new(load_pair(cert_file, key_file)?)));
        // ring, not aws-lc-rs: it builds with nothing but a C compiler (aws-lc wants CMake, which
        // a fresh machine lacks). It has no post-quantum key exchange, hence the deprecation.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The files to watch.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert_file, &self.key_file]
    }

    /// Loads the files again; on success new connections get the new certificate. On failure the
    /// previous one stays in service and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pair = load_pair(&self.cert_file, &self.key_file)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = pair;
        Ok(())
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("tls.cert {}: {}", cert_file.display(), pem_error(e)))?;
    if chain.is_empty() {
        anyhow::bail!("tls.cert {}: no CERTIFICATE block in the file", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("tls.key {}: {}", key_file.display(), pem_error(e)))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("tls.key {}: unsupported private key: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "tls.key {} does not belong to the certificate in {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Arc::new(pair))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM block of the expected kind in the file".into(),
        other => format!("not a valid PEM file ({other:?})"),
    }
}

//! TLS for sluice's gRPC endpoints (rustls through tonic): PEM files for
//! the coordinator's identity, the CA that signs worker certificates
//! (mutual TLS), and what clients trust.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{Error, Result};

/// Pick rustls' crypto provider for the process (ring). Several providers
/// are compiled in through dependencies, so rustls cannot guess; call once
/// at start-up, before any TLS is used.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Certificate files; every field is a PEM file path.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: Option<PathBuf>,
    /// This side's private key.
    pub key: Option<PathBuf>,
    /// Server: the CA client certificates must chain to. Client: the CA the
    /// server's certificate must chain to.
    pub ca: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::InvalidInput(format!("{what} {}: {e}", path.display())))
}

impl TlsFiles {
    fn identity(&self) -> Result<Option<Identity>> {
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Ok(Some(Identity::from_pem(read(c, "certificate")?, read(k, "private key")?))),
            (None, None) => Ok(None),
            _ => Err(Error::InvalidInput("a TLS certificate and its key go together".into())),
        }
    }

    /// The server side, if a certificate is configured. With a CA, client
    /// certificates are verified when presented (the worker protocol then
    /// requires one; users of the job API may come with a token instead).
    pub fn server(&self) -> Result<Option<ServerTlsConfig>> {
        let Some(identity) = self.identity()? else {
            if self.ca.is_some() {
                return Err(Error::InvalidInput("a client CA needs the server's own certificate and key".into()));
            }
            return Ok(None);
        };
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca, "client CA")?)).client_auth_optional(true);
        }
        Ok(Some(cfg))
    }

    /// The client side for `https://` addresses.
    pub fn client(&self, address: &str) -> Result<Option<ClientTlsConfig>> {
        if !address.starts_with("https://") {
            return Ok(None);
        }
        let ca = self.ca.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!("{address} uses TLS: give the CA that signed its certificate (--tls-ca)"))
        })?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
        if let Some(identity) = self.identity()? {
            cfg = cfg.identity(identity);
        }
        Ok(Some(cfg))
    }

    /// An endpoint for `address`, with TLS when it is `https://`.
    pub fn endpoint(&self, address: &str) -> Result<tonic::transport::Endpoint> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| Error::InvalidInput(format!("address {address}: {e}")))?;
        if let Some(tls) = self.client(address)? {
            endpoint = endpoint.tls_config(tls).map_err(|e| Error::InvalidInput(format!("TLS for {address}: {e}")))?;
        }
        Ok(endpoint)
    }
}

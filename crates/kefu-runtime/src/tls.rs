//! TLS for kefu's gRPC: the gateway serves TLS to its clients when it has a
//! certificate, and the internal services can require mutual TLS, so that only kefu
//! services (holding a certificate signed by the cluster's CA) may call them. Plaintext
//! stays the default, for `kefu up` on 127.0.0.1. Certificates are PEM files, e.g.
//! mounted from a cert-manager Secret.
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// This service's certificate chain (PEM): the server serves TLS with it, and calls
    /// to other kefu services present it as the client certificate.
    #[arg(long, env = "KEFU_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of KEFU_TLS_CERT (PEM).
    #[arg(long, env = "KEFU_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: callers must present a certificate signed by this CA (PEM); others are
    /// refused during the handshake.
    #[arg(long, env = "KEFU_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// The CA (PEM) that signs the certificates of the kefu services this one calls; with
    /// it, calls use TLS (peer URLs are https://).
    #[arg(long, env = "KEFU_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| anyhow::anyhow!("reading the {what} {}: {error}", path.display()))
}

impl TlsArgs {
    fn identity(&self) -> anyhow::Result<Option<Identity>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(
                read(cert, "certificate (KEFU_TLS_CERT)")?,
                read(key, "private key (KEFU_TLS_KEY)")?,
            ))),
            (None, None) => Ok(None),
            _ => anyhow::bail!("KEFU_TLS_CERT and KEFU_TLS_KEY go together: set both or neither"),
        }
    }

    /// How the server listens: TLS with this service's certificate, and requiring client
    /// certificates when a client CA is named; None for plaintext.
    pub fn server(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let Some(identity) = self.identity()? else {
            anyhow::ensure!(
                self.tls_client_ca.is_none(),
                "KEFU_TLS_CLIENT_CA needs the server's own certificate (KEFU_TLS_CERT, KEFU_TLS_KEY)"
            );
            return Ok(None);
        };
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(
                ca,
                "client CA (KEFU_TLS_CLIENT_CA)",
            )?));
        }
        Ok(Some(config))
    }

    /// How calls to other kefu services are made: TLS verified against the CA, with
    /// this service's certificate as client identity; None for plaintext.
    pub fn client(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca, "CA (KEFU_TLS_CA)")?));
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(Some(config))
    }
}

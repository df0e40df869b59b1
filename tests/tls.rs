//! TLS as an operator sets it up: the gateway serves TLS that grpcurl verifies against
//! the CA (`-cacert`), and an internal service in mutual-TLS mode refuses any caller
//! without a client certificate signed by the cluster's CA.
mod common;

use std::path::Path;
use std::process::Command;

use common::{on_repository, Instance, Service, Stack, StackBuilder};
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::{CreateTicketRequest, Priority};
use kefu_runtime::{ClientArgs, TlsArgs};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA and two certificates it signs, written as PEM files into `dir`: "server" (for
/// localhost and 127.0.0.1) and "client" (another kefu service).
fn issue(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["server", "client"] {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `service` alone, serving TLS with the "server" certificate of newly issued ones (in
/// the directory returned); with `mutual`, only to callers with a client certificate of
/// their CA. Its peers are unreachable.
async fn serve_tls(service: Service, mutual: bool) -> (tempfile::TempDir, Stack) {
    let certs = tempfile::tempdir().unwrap();
    issue(certs.path());
    let path = |file: &str| certs.path().join(file).display().to_string();
    let mut instance = Instance::new(service.name(), service)
        .env("KEFU_TLS_CERT", path("server.pem"))
        .env("KEFU_TLS_KEY", path("server.key"));
    if mutual {
        instance = instance.env("KEFU_TLS_CLIENT_CA", path("ca.pem"));
    }
    let stack = common::start(
        on_repository(StackBuilder::instances([instance]))
            .env("KEFU_CALL_TIMEOUT_MS", "1000")
            .serving(&[]),
    )
    .await;
    (certs, stack)
}

fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is on PATH (`make tools` installs it into .venv/bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn grpcurl_verifies_the_gateways_certificate() {
    let (certs, stack) = serve_tls(Service::Gateway, false).await;
    let address = stack.address("gateway").to_string();
    let ca = certs.path().join("ca.pem");
    let (ok, listed) = grpcurl(&[
        "-connect-timeout",
        "3",
        "-cacert",
        ca.to_str().unwrap(),
        "-servername",
        "localhost",
        &address,
        "list",
    ]);
    assert!(ok, "{listed}");
    assert!(listed.contains("kefu.v1.ConversationService"), "{listed}");
    let (ok, plain) = grpcurl(&["-connect-timeout", "3", "-plaintext", &address, "list"]);
    assert!(!ok, "plaintext must not be answered: {plain}");
    let (ok, unverified) = grpcurl(&["-connect-timeout", "3", &address, "list"]);
    assert!(
        !ok,
        "a certificate from an unknown CA must not be trusted: {unverified}"
    );
}

#[tokio::test]
async fn an_internal_service_in_mutual_tls_refuses_callers_without_a_client_certificate() {
    let (certs, stack) = serve_tls(Service::Ticket, true).await;
    let port = stack.address("ticket").port();
    let ca = Certificate::from_pem(std::fs::read(certs.path().join("ca.pem")).unwrap());
    let call = |tls: ClientTlsConfig| async move {
        let channel = Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await?;
        TicketServiceClient::new(channel)
            .create_ticket(CreateTicketRequest {
                tenant_id: "demo".into(),
                customer_id: "mtls-1".into(),
                subject: "over mutual TLS".into(),
                priority: Priority::Low as i32,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|status| -> Box<dyn std::error::Error> { status.into() })?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let anonymous = call(ClientTlsConfig::new().ca_certificate(ca.clone())).await;
    assert!(
        anonymous.is_err(),
        "a caller without a client certificate got through"
    );
    let identity = Identity::from_pem(
        std::fs::read(certs.path().join("client.pem")).unwrap(),
        std::fs::read(certs.path().join("client.key")).unwrap(),
    );
    call(ClientTlsConfig::new().ca_certificate(ca).identity(identity))
        .await
        .expect("a kefu service with its certificate is served");
    // The same through the runtime's own client settings, as services call each other.
    let tls = TlsArgs {
        tls_cert: Some(certs.path().join("client.pem")),
        tls_key: Some(certs.path().join("client.key")),
        tls_client_ca: None,
        tls_ca: Some(certs.path().join("ca.pem")),
    };
    let connect = kefu_runtime::Connector::new(
        "kefu-test",
        &ClientArgs {
            call_timeout_ms: 2000,
            ..Default::default()
        },
        &tls,
    )
    .unwrap();
    assert!(
        connect
            .raw_channel(&format!("http://localhost:{port}"))
            .is_err(),
        "plaintext URLs are refused under TLS"
    );
    let mut client = TicketServiceClient::new(
        connect
            .channel("kefu-ticket", &format!("https://localhost:{port}"))
            .unwrap(),
    );
    client
        .create_ticket(CreateTicketRequest {
            tenant_id: "demo".into(),
            customer_id: "mtls-2".into(),
            subject: "through the connector".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

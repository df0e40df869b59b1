//! Starting a kefu gRPC server: the service's routes plus health, reflection (v1 and
//! v1alpha), the telemetry layer, deadlines, concurrency limits and graceful shutdown.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tower::Service;

use crate::config::{ServerArgs, ServiceSpec};
use crate::health::{self, Probe};
use crate::layers::ServerTelemetryLayer;
use crate::shutdown::Shutdown;

/// Served by every server besides its own services.
const ALWAYS_SERVED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection over kefu's contracts that lists only what a server serves: its own
/// services, health and reflection (the other contracts' types are still described).
fn reflection(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kefu_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    services
        .iter()
        .copied()
        .chain(ALWAYS_SERVED)
        .fold(builder, |builder, name| builder.with_service_name(name))
}

pub struct Server {
    spec: ServiceSpec,
    args: ServerArgs,
    routes: RoutesBuilder,
    grpc_services: Vec<&'static str>,
    probes: Vec<Arc<dyn Probe>>,
    /// Browsers may call (gRPC-Web over HTTP/1.1) from the origins this allows.
    browser_access: Option<tower_http::cors::CorsLayer>,
    /// Calls in flight above which new ones are refused at once.
    shed_above: Option<usize>,
}

/// A started server: where it listens, and its task.
pub struct RunningServer {
    pub spec: ServiceSpec,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Waits until the server has drained after shutdown.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

impl Server {
    pub fn new(spec: ServiceSpec, args: ServerArgs) -> Self {
        Self {
            spec,
            args,
            routes: RoutesBuilder::default(),
            grpc_services: Vec::new(),
            probes: Vec::new(),
            browser_access: None,
            shed_above: None,
        }
    }

    /// Refuses calls with RESOURCE_EXHAUSTED (and a `retry-after-ms`) while `limit`
    /// calls are in flight: load is shed at the edge instead of queueing into timeouts.
    pub fn shed_above(mut self, limit: usize) -> Self {
        self.shed_above = Some(limit);
        self
    }

    /// Lets browsers call: HTTP/1.1 is accepted (for gRPC-Web) and cross-origin calls
    /// pass `cors`. Services that browsers use must be wrapped in tonic-web.
    pub fn browser_access(mut self, cors: tower_http::cors::CorsLayer) -> Self {
        self.browser_access = Some(cors);
        self
    }

    /// Adds a generated tonic service; its name is reported by the health service too.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc_services.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Adds a dependency: the server is NOT_SERVING while the probe fails.
    pub fn probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probes.push(probe);
        self
    }

    /// Binds the ports and serves until `shutdown`, then drains in-flight requests.
    pub async fn start(self, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
        let service_label = self.spec.full_name();
        let grpc_addr = self.args.grpc_addr(self.spec);
        let listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .map_err(|error| {
                anyhow::anyhow!("cannot bind the gRPC port {grpc_addr} of {service_label}: {error}")
            })?;
        let bound = listener.local_addr()?;
        let metrics_addr = crate::metrics::serve(
            self.args.metrics_addr(self.spec),
            service_label.clone(),
            shutdown.clone(),
        )
        .await?;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Not serving until the first probe round has passed.
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        for name in &self.grpc_services {
            reporter
                .set_service_status(*name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        // Alive from the first moment the port answers, whatever the dependencies say.
        reporter
            .set_service_status(
                health::LIVENESS_SERVICE,
                tonic_health::ServingStatus::Serving,
            )
            .await;
        tokio::spawn(health::watch(
            reporter,
            service_label.clone(),
            self.grpc_services.clone(),
            self.probes,
            shutdown.clone(),
        ));

        let reflection_v1 = reflection(&self.grpc_services).build_v1()?;
        let reflection_v1alpha = reflection(&self.grpc_services).build_v1alpha()?;
        let mut routes = self.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let routes = routes.routes().prepare();

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.args.tls.server()? {
            builder = builder
                .tls_config(tls)
                .map_err(|error| anyhow::anyhow!("TLS settings of {service_label}: {error}"))?;
            tracing::info!(service = %service_label, mutual = self.args.tls.tls_client_ca.is_some(), "serving TLS");
        }
        let server = builder
            .accept_http1(self.browser_access.is_some())
            .concurrency_limit_per_connection(self.args.max_concurrency)
            .layer(tower::util::option_layer(self.browser_access))
            .layer(ServerTelemetryLayer::new(
                &service_label,
                self.args.request_timeout(),
            ))
            .layer(tower::util::option_layer(
                self.shed_above.map(crate::resilience::ShedLayer::new),
            ));
        // Without TCP_NODELAY small unary responses wait for delayed ACKs (~40 ms a call).
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tracing::info!(service = %service_label, grpc = %bound, metrics = %metrics_addr, "listening");
        let drain = shutdown.clone();
        let task = tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(routes, incoming, async move {
                    drain.wait().await;
                    // Let the health watcher announce NOT_SERVING before the listener closes.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                })
                .await
                .map_err(|error| anyhow::anyhow!("{service_label} gRPC server failed: {error}"))?;
            tracing::info!(service = %service_label, "stopped");
            Ok(())
        });
        Ok(RunningServer {
            spec: self.spec,
            grpc_addr: bound,
            metrics_addr,
            task,
        })
    }
}

/// Binds `addr` and serves the HTTP `app` in the background until `shutdown`; returns
/// the bound address. `port` names the port in errors ("metrics", "web").
pub async fn serve_http(
    port: &str,
    addr: SocketAddr,
    app: axum::Router,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| anyhow::anyhow!("cannot bind the {port} port {addr}: {error}"))?;
    let bound = listener.local_addr()?;
    let port = port.to_owned();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the {port} server failed");
        }
    });
    Ok(bound)
}

//! The one place where kefu servers and clients are built. A service hands over its
//! tonic routes and its readiness probes; everything else (health, reflection, tracing,
//! metrics, deadlines, concurrency limits, graceful shutdown) is done here the same way
//! for all six services.

pub mod client;
pub mod config;
pub mod health;
mod layers;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use client::{channel, with_retry, GrpcChannel};
pub use config::{ClientArgs, ServerArgs, ServiceSpec};
pub use health::{Probe, ReadyFlag};
pub use server::{RunningServer, Server};
pub use shutdown::Shutdown;

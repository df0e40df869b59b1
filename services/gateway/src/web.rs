//! kefu in the browser: the customer chat widget and the agent console, bundled from
//! `web/` at build time (`make web`) and embedded in the binary, served on their own
//! port; and the rule for which web origins may call the gateway over gRPC-Web.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use kefu_runtime::Shutdown;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::WebArgs;
use kefu_runtime::LiveTenants;

#[derive(rust_embed::Embed)]
#[folder = "../../web/dist/"]
#[allow_missing = true]
struct Pages;

/// Headers a gRPC-Web client sends and must be able to read back.
const REQUEST_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-api-key",
    "x-kefu-customer-hash",
    "traceparent",
];
const RESPONSE_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-trace-id",
];

/// The origins of the gateway's own pages, which may always call it: the web port on
/// 127.0.0.1, localhost and the address the gateway binds to (unless it binds every
/// interface), and with a public gateway URL, the pages on that host (behind the same
/// proxy as the gateway, or on the web port).
fn own_origins(args: &WebArgs, bind_host: IpAddr) -> Vec<String> {
    let port = args.web_port;
    if port == 0 {
        return Vec::new();
    }
    let mut origins: Vec<String> = Vec::new();
    let mut allow = |origin: String| {
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    };
    allow(format!("http://127.0.0.1:{port}"));
    allow(format!("http://localhost:{port}"));
    match bind_host {
        host if host.is_unspecified() => {}
        IpAddr::V4(host) => allow(format!("http://{host}:{port}")),
        IpAddr::V6(host) => allow(format!("http://[{host}]:{port}")),
    }
    let public = args.public_gateway_url.trim().parse::<http::Uri>().ok();
    if let Some((scheme, authority)) = public
        .as_ref()
        .and_then(|url| Some((url.scheme_str()?, url.authority()?)))
    {
        let host = authority.host().to_ascii_lowercase();
        // A browser leaves the scheme's default port out of an origin.
        let default_port = if scheme == "https" { 443 } else { 80 };
        allow(match authority.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        });
        allow(format!("http://{host}:{port}"));
    }
    origins
}

/// Cross-origin gRPC-Web calls from the gateway's own pages, the configured origins and
/// any tenant's own.
pub fn cors(args: &WebArgs, bind_host: IpAddr, tenants: Arc<LiveTenants>) -> CorsLayer {
    let allowed: Vec<String> = own_origins(args, bind_host)
        .into_iter()
        .chain(args.web_origins.iter().map(|o| o.trim().to_owned()))
        .collect();
    tracing::info!(origins = ?allowed, "web origins allowed besides the tenants' own");
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            let Ok(origin) = origin.to_str() else {
                return false;
            };
            allowed.iter().any(|allowed| allowed == origin)
                || tenants
                    .current()
                    .iter()
                    .any(|tenant| tenant.web_origins.iter().any(|allowed| allowed == origin))
        }))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(REQUEST_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(RESPONSE_HEADERS.map(http::HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Response {
    match Pages::get(path) {
        Some(file) => (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response(),
        None if Pages::iter().next().is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the web pages were not built into this binary: run `make web`, then build again\n",
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

const INDEX: &str = "<!doctype html><meta charset=utf-8><title>kefu</title>\
<h1>kefu</h1><ul><li><a href=\"/chat?tenant=demo\">Customer chat</a></li>\
<li><a href=\"/console\">Agent console</a></li></ul>";

/// Serves the pages until shutdown; returns the bound address.
pub async fn serve(
    bind: SocketAddr,
    args: &WebArgs,
    grpc_port: u16,
    gateway_tls: bool,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    let public_url = args.public_gateway_url.trim().to_owned();
    let config = move |headers: HeaderMap| async move {
        let gateway_url = if public_url.is_empty() {
            // The page's own host name, the gateway's port: right for `kefu up` and
            // for any single-host install; a proxy in front sets the URL explicitly.
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => host,
            };
            let scheme = if gateway_tls { "https" } else { "http" };
            format!("{scheme}://{name}:{grpc_port}")
        } else {
            public_url
        };
        (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::Json(serde_json::json!({ "gatewayUrl": gateway_url })),
        )
    };
    let app = axum::Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/chat", get(|| async { asset("chat.html") }))
        .route("/console", get(|| async { asset("console.html") }))
        .route("/config.json", get(config))
        .route(
            "/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        );
    let bound = kefu_runtime::serve_http("web", bind, app, shutdown).await?;
    tracing::info!(web = %bound, "serving the chat and console pages");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(public_gateway_url: &str) -> WebArgs {
        WebArgs {
            web_port: 8080,
            public_gateway_url: public_gateway_url.to_owned(),
            web_origins: Vec::new(),
        }
    }

    #[test]
    fn the_gateways_own_pages_are_allowed_without_configuration() {
        let loopback = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            own_origins(&args(""), loopback),
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        // A pod binds every interface and is reached through a port-forward or the
        // ingress at the public URL; a host's own address is an origin of its own.
        assert_eq!(
            own_origins(&args("https://Kefu.example.com"), IpAddr::from([0; 4])),
            [
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "https://kefu.example.com",
                "http://kefu.example.com:8080"
            ]
        );
        assert!(own_origins(
            &args("https://kefu.example.com:443"),
            IpAddr::from([10, 0, 0, 7])
        )
        .iter()
        .any(|o| o == "https://kefu.example.com"));
        assert!(own_origins(&args(""), IpAddr::from([10, 0, 0, 7]))
            .iter()
            .any(|o| o == "http://10.0.0.7:8080"));
        let off = WebArgs {
            web_port: 0,
            ..args("")
        };
        assert!(own_origins(&off, loopback).is_empty());
    }
}

//! Who may call each public RPC: one table, enforced by one layer in front of the
//! gateway's services, before any handler runs. The layer reads the tenant (and, for a
//! customer's own calls, the customer) from the request message, authenticates the
//! caller for the RPC's access level (`auth`), spends the tenant's rate limit and hands
//! the handler the [`Principal`] in the request's extensions. A method missing from the
//! table is refused: a new RPC stays closed until someone decides who may call it.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, Full, Limited};
use kefu_proto::v1::*;
use kefu_runtime::{Principal, Role};
use kefu_storage::{Rate, RateLimiter};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};

use crate::auth::{authenticate, Access, Credentials};
use crate::validate::bounded_id;
use crate::SERVICE;
use kefu_runtime::LiveTenants;

const CUSTOMER_HASH_HEADER: &str = "x-kefu-customer-hash";
/// The largest request message the services decode (tonic's default); no more is read.
const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// A gRPC frame's header: compression flag and message length.
const FRAME_HEADER_BYTES: usize = 5;

/// What the access check reads of a request: the tenant it acts on and, for a
/// customer's own calls, the customer it acts for.
pub trait Addressed: prost::Message + Default {
    fn tenant_id(&self) -> Result<&str, Status>;
    fn customer_id(&self) -> &str {
        ""
    }
}

macro_rules! addressed {
    ($($request:ident $(acting for $customer:ident)?),* $(,)?) => {$(
        impl Addressed for $request {
            fn tenant_id(&self) -> Result<&str, Status> {
                Ok(&self.tenant_id)
            }
            $(fn customer_id(&self) -> &str {
                &self.$customer
            })?
        }
    )*};
}

addressed!(
    SendMessageRequest acting for customer_id,
    GetSessionRequest acting for customer_id,
    StreamEventsRequest acting for customer_id,
    RateConversationRequest acting for customer_id,
    CreateTicketRequest,
    GetTicketRequest,
    ListTicketsRequest,
    NextInQueueRequest,
    TransitionTicketRequest,
    GetCustomerRequest,
    ReplyToCustomerRequest,
    GetConversationRequest,
    RaisePriorityRequest,
    IngestDocumentsRequest,
    DeleteDocumentRequest,
    ReindexRequest,
    ReloadTenantRequest,
    ListDeadLettersRequest,
    RetryDeadLetterRequest,
    GetSupportReportRequest,
    ListKnowledgeGapsRequest,
    ListDeliveriesRequest,
);

impl Addressed for UpsertCustomerRequest {
    fn tenant_id(&self) -> Result<&str, Status> {
        self.customer
            .as_ref()
            .map(|customer| customer.tenant_id.as_str())
            .ok_or_else(|| Status::invalid_argument("customer is required"))
    }
}

/// The tenant and customer a request names.
struct Subject {
    tenant_id: String,
    customer_id: String,
}

fn subject<R: Addressed>(message: &[u8]) -> Result<Subject, Status> {
    // prost names the message and field that do not decode.
    let request = R::decode(message).map_err(|error| {
        Status::invalid_argument(format!("failed to decode Protobuf message: {error}"))
    })?;
    Ok(Subject {
        tenant_id: request.tenant_id()?.to_owned(),
        customer_id: request.customer_id().to_owned(),
    })
}

/// One public RPC: its full gRPC path, who may call it, and how to read its request.
pub struct Rule {
    pub path: &'static str,
    pub access: Access,
    subject: fn(&[u8]) -> Result<Subject, Status>,
}

macro_rules! rules {
    ($($path:literal ($request:ident) => $access:ident,)*) => {
        /// Who may call what; README.md, "Who may do what", says the same in words.
        pub static RULES: &[Rule] = &[$(Rule {
            path: $path,
            access: Access::$access,
            subject: subject::<$request>,
        },)*];

        /// Each rule's path and request message, to be checked against the contracts.
        #[cfg(test)]
        const REQUESTS: &[(&str, &str)] = &[$(($path, stringify!($request)),)*];
    };
}

rules! {
    "/kefu.v1.ConversationService/SendMessage" (SendMessageRequest) => Customer,
    "/kefu.v1.ConversationService/GetSession" (GetSessionRequest) => CustomerOrStaff,
    "/kefu.v1.ConversationService/StreamEvents" (StreamEventsRequest) => Customer,
    "/kefu.v1.ConversationService/RateConversation" (RateConversationRequest) => Customer,
    "/kefu.v1.TicketService/CreateTicket" (CreateTicketRequest) => Staff,
    "/kefu.v1.TicketService/GetTicket" (GetTicketRequest) => Staff,
    "/kefu.v1.TicketService/ListTickets" (ListTicketsRequest) => Staff,
    "/kefu.v1.TicketService/NextInQueue" (NextInQueueRequest) => Staff,
    "/kefu.v1.TicketService/TransitionTicket" (TransitionTicketRequest) => Staff,
    "/kefu.v1.TicketService/GetCustomer" (GetCustomerRequest) => Staff,
    "/kefu.v1.TicketService/ReplyToCustomer" (ReplyToCustomerRequest) => Staff,
    "/kefu.v1.TicketService/GetConversation" (GetConversationRequest) => Staff,
    "/kefu.v1.TicketService/RaisePriority" (RaisePriorityRequest) => Staff,
    "/kefu.v1.TicketService/UpsertCustomer" (UpsertCustomerRequest) => Admin,
    "/kefu.v1.AdminService/IngestDocuments" (IngestDocumentsRequest) => Admin,
    "/kefu.v1.AdminService/DeleteDocument" (DeleteDocumentRequest) => Admin,
    "/kefu.v1.AdminService/Reindex" (ReindexRequest) => Admin,
    "/kefu.v1.AdminService/ReloadTenant" (ReloadTenantRequest) => Admin,
    "/kefu.v1.AdminService/ListDeadLetters" (ListDeadLettersRequest) => Admin,
    "/kefu.v1.AdminService/RetryDeadLetter" (RetryDeadLetterRequest) => Admin,
    "/kefu.v1.ReportsService/GetSupportReport" (GetSupportReportRequest) => Staff,
    "/kefu.v1.ReportsService/ListKnowledgeGaps" (ListKnowledgeGapsRequest) => Staff,
    "/kefu.v1.ChannelService/ListDeliveries" (ListDeliveriesRequest) => Staff,
}

fn rule(path: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.path == path)
}

/// The caller the access layer admitted, and the request's message. A request that did
/// not pass the layer has no principal and goes no further.
pub fn admitted<T>(request: tonic::Request<T>) -> Result<(Principal, T), Status> {
    let (_, mut extensions, message) = request.into_parts();
    let principal = extensions
        .remove::<Principal>()
        .ok_or_else(|| Status::internal("the call was not admitted by the access layer"))?;
    Ok((principal, message))
}

/// Decides every call: the tenants' keys and rate limits.
struct Gate {
    tenants: Arc<LiveTenants>,
    limiter: RateLimiter,
}

/// Puts the access check in front of a service.
#[derive(Clone)]
pub struct AccessLayer(Arc<Gate>);

impl AccessLayer {
    pub fn new(tenants: Arc<LiveTenants>, limiter: RateLimiter) -> Self {
        Self(Arc::new(Gate { tenants, limiter }))
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// A service whose calls pass the access check first.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The instance that was made ready serves this call; a fresh clone waits.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let gate = self.gate.clone();
        Box::pin(async move {
            match gate.admit(request).await {
                Ok(request) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

impl Gate {
    /// The request with its caller's principal, or the status that refuses it.
    async fn admit(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let path = request.uri().path();
        let Some(rule) = rule(path) else {
            metrics::counter!("kefu_auth_failures_total", "service" => SERVICE, "reason" => "no_rule").increment(1);
            tracing::error!(rpc = path, "no access rule for this method; refused");
            return Err(Status::permission_denied(
                "this method is not open to callers",
            ));
        };
        let (mut parts, body) = request.into_parts();
        let (body, message) = read_request(&parts.headers, body).await?;
        let subject = (rule.subject)(&body[message])?;
        let principal = self.authorize(&parts, rule, &subject).await?;
        parts.extensions.insert(principal);
        Ok(http::Request::from_parts(parts, Body::new(Full::new(body))))
    }

    /// Authenticates the caller for the rule's access, then spends the tenant's rate
    /// limit. Refusals are counted and logged with the peer, never the key.
    async fn authorize(
        &self,
        request: &http::request::Parts,
        rule: &Rule,
        subject: &Subject,
    ) -> Result<Principal, Status> {
        let Subject {
            tenant_id,
            customer_id,
        } = subject;
        bounded_id(tenant_id, "tenant_id", true)?;
        bounded_id(customer_id, "customer_id", false)?;
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
        let credentials = Credentials {
            key: api_key(&request.headers),
            customer_hash: header(CUSTOMER_HASH_HEADER),
        };
        let tenants = self.tenants.current();
        let secret = |variable: &str| std::env::var(variable).ok();
        let principal =
            authenticate(&tenants, tenant_id, credentials, rule.access, customer_id, secret)
                .map_err(|refusal| {
                    metrics::counter!("kefu_auth_failures_total", "service" => SERVICE, "reason" => refusal.reason()).increment(1);
                    tracing::warn!(
                        peer = ?peer(&request.extensions),
                        rpc = rule.path,
                        reason = refusal.reason(),
                        "authentication failed"
                    );
                    Status::from(refusal)
                })?;
        if principal.role == Role::Customer && customer_id.trim().is_empty() {
            return Err(Status::invalid_argument("customer_id is required"));
        }
        // Counted once the caller is known, so nobody spends another tenant's budget.
        if let Some(limit) = tenants.get(tenant_id).and_then(|t| t.rate_limit) {
            let rate = Rate {
                per_second: limit.requests_per_second,
                burst: limit.burst,
            };
            if let Err(wait) = self.limiter.admit(tenant_id, rate).await {
                return Err(over_rate_limit(tenant_id, wait));
            }
        }
        Ok(principal)
    }
}

fn over_rate_limit(tenant_id: &str, wait: std::time::Duration) -> Status {
    metrics::counter!("kefu_requests_shed_total", "service" => SERVICE, "reason" => "rate_limit")
        .increment(1);
    let mut status = Status::resource_exhausted(format!(
        "tenant {tenant_id:?} is over its rate limit; retry after {} ms",
        wait.as_millis()
    ));
    if let Ok(value) = wait.as_millis().max(1).to_string().parse() {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    status
}

/// The key from `x-api-key` or `authorization: Bearer <key>`.
fn api_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// Reads a unary request's body and finds its message, refusing what the services
/// would refuse with the status they give: the gateway's servers accept no compressed
/// requests and decode messages of up to 4 MiB. Returns the body, to be passed on as it
/// came, and where its first message lies; what follows it is the services' to judge.
async fn read_request(
    headers: &http::HeaderMap,
    body: Body,
) -> Result<(Bytes, Range<usize>), Status> {
    if let Some(encoding) = headers.get("grpc-encoding").filter(|e| *e != "identity") {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        ));
        status
            .metadata_mut()
            .insert("grpc-accept-encoding", "identity".parse().expect("ASCII"));
        return Err(status);
    }
    let body = Limited::new(body, FRAME_HEADER_BYTES + MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(
            |error| match error.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => Status::out_of_range("the request is larger than 4 MiB"),
                Err(error) => {
                    Status::invalid_argument(format!("the request could not be read: {error}"))
                }
            },
        )?
        .to_bytes();
    let Some(header) = body.get(..FRAME_HEADER_BYTES) else {
        return Err(Status::invalid_argument(if body.is_empty() {
            "Missing request message."
        } else {
            "Unexpected EOF decoding stream."
        }));
    };
    if header[0] != 0 {
        return Err(Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ));
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    let message = FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length;
    if body.len() < message.end {
        return Err(Status::invalid_argument("Unexpected EOF decoding stream."));
    }
    Ok((body, message))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kefu_proto::v1::admin_service_server::AdminServiceServer;
    use kefu_proto::v1::channel_service_server::ChannelServiceServer;
    use kefu_proto::v1::conversation_service_server::ConversationServiceServer;
    use kefu_proto::v1::reports_service_server::ReportsServiceServer;
    use kefu_proto::v1::ticket_service_server::TicketServiceServer;
    use prost::Message as _;

    use super::*;
    use crate::service::GatewayHandle;

    /// The gateway's public services, by the names their generated servers answer to.
    const SERVED: [&str; 5] = [
        <ConversationServiceServer<GatewayHandle> as NamedService>::NAME,
        <TicketServiceServer<GatewayHandle> as NamedService>::NAME,
        <AdminServiceServer<GatewayHandle> as NamedService>::NAME,
        <ReportsServiceServer<GatewayHandle> as NamedService>::NAME,
        <ChannelServiceServer<GatewayHandle> as NamedService>::NAME,
    ];

    /// Every method of the served services, from the contracts' descriptors: path to
    /// request message name.
    fn served_methods() -> BTreeMap<String, String> {
        let files = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = BTreeMap::new();
        for file in &files.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                if !SERVED.contains(&name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    let request = method.input_type().rsplit('.').next().unwrap();
                    methods.insert(format!("/{name}/{}", method.name()), request.to_owned());
                }
            }
        }
        methods
    }

    #[test]
    fn every_served_method_has_exactly_one_rule_for_its_request() {
        let served = served_methods();
        let missing: Vec<&String> = served.keys().filter(|p| rule(p).is_none()).collect();
        assert!(
            missing.is_empty(),
            "no access rule for {missing:?}: add them to RULES"
        );
        let ruled: BTreeMap<String, String> = REQUESTS
            .iter()
            .map(|(path, request)| (path.to_string(), request.to_string()))
            .collect();
        assert_eq!(ruled.len(), RULES.len(), "a path has two rules");
        assert_eq!(
            ruled, served,
            "rules (left) against the served methods (right)"
        );
    }

    #[tokio::test]
    async fn a_method_without_a_rule_is_refused_before_anything_else() {
        let tenants = LiveTenants::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants"),
        )
        .unwrap();
        let layer = AccessLayer::new(tenants, RateLimiter::new(None, SERVICE));
        let request = http::Request::post("/kefu.v1.TicketService/DeleteEverything")
            .body(Body::default())
            .unwrap();
        let status = layer.0.admit(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    #[test]
    fn reads_api_keys_from_either_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(api_key(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(api_key(&headers), Some("abc"));
        headers.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(api_key(&headers), Some("xyz"));
    }
}

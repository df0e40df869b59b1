//! Random and malformed requests through the gateway to every public RPC, as a broken or
//! hostile client sends them: ids and texts beyond their bounds, empty and blank strings,
//! control characters and odd Unicode, unknown enum values, out-of-range numbers, unknown
//! and repeated fields, deeply nested unknown messages, junk credentials; then bodies
//! that are no valid message at all. Every request must get a status that names what
//! was wrong (never INTERNAL, UNKNOWN, UNIMPLEMENTED or DATA_LOSS), nothing may panic and
//! every service must stay SERVING; a panic in any of the stack's threads shows in its
//! stderr. Runs are seeded: `KEFU_MALFORMED_SEED=<n>` repeats one.
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use kefu_proto::v1::*;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng, SeedableRng};
use tonic::codegen::{http, Bytes};
use tonic::transport::Channel;
use tonic::Code;
use tower::ServiceExt as _;

/// Requests in flight at once.
const CONCURRENCY: usize = 32;
/// Well-formed messages with malformed content.
const MESSAGES: usize = 10_000;
/// Bodies that do not decode, or frames that break the gRPC framing.
const BODIES: usize = 2_000;

/// What a service may answer to a request it cannot serve.
const EXPECTED: [Code; 9] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::AlreadyExists,
    Code::ResourceExhausted,
    Code::OutOfRange,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    SendMessage,
    GetSession,
    StreamEvents,
    RateConversation,
    CreateTicket,
    GetTicket,
    ListTickets,
    NextInQueue,
    TransitionTicket,
    GetCustomer,
    UpsertCustomer,
    ReplyToCustomer,
    GetConversation,
    RaisePriority,
    IngestDocuments,
    DeleteDocument,
    Reindex,
    ReloadTenant,
    GetSupportReport,
    ListKnowledgeGaps,
}

/// Every public RPC with how often it is called: the ones that rebuild an index or
/// retrain the router when they get through are called less, to keep the run short.
const RPCS: [(Rpc, u32); 20] = [
    (Rpc::SendMessage, 8),
    (Rpc::GetSession, 6),
    (Rpc::StreamEvents, 6),
    (Rpc::RateConversation, 6),
    (Rpc::CreateTicket, 6),
    (Rpc::GetTicket, 6),
    (Rpc::ListTickets, 6),
    (Rpc::NextInQueue, 6),
    (Rpc::TransitionTicket, 6),
    (Rpc::GetCustomer, 6),
    (Rpc::UpsertCustomer, 6),
    (Rpc::ReplyToCustomer, 6),
    (Rpc::GetConversation, 6),
    (Rpc::RaisePriority, 6),
    (Rpc::IngestDocuments, 3),
    (Rpc::DeleteDocument, 4),
    (Rpc::Reindex, 1),
    (Rpc::ReloadTenant, 1),
    (Rpc::GetSupportReport, 4),
    (Rpc::ListKnowledgeGaps, 4),
];

/// The least a caller needs, as in the README's table.
#[derive(Clone, Copy, PartialEq)]
enum Caller {
    Customer,
    Staff,
    Admin,
}

impl Rpc {
    fn service(self) -> &'static str {
        match self {
            Rpc::SendMessage | Rpc::GetSession | Rpc::StreamEvents | Rpc::RateConversation => {
                "ConversationService"
            }
            Rpc::IngestDocuments | Rpc::DeleteDocument | Rpc::Reindex | Rpc::ReloadTenant => {
                "AdminService"
            }
            Rpc::GetSupportReport | Rpc::ListKnowledgeGaps => "ReportsService",
            _ => "TicketService",
        }
    }

    fn path(self) -> String {
        format!("/kefu.v1.{}/{self:?}", self.service())
    }

    fn caller(self) -> Caller {
        match self {
            Rpc::SendMessage | Rpc::GetSession | Rpc::StreamEvents | Rpc::RateConversation => {
                Caller::Customer
            }
            Rpc::UpsertCustomer => Caller::Admin,
            _ if self.service() == "AdminService" => Caller::Admin,
            _ => Caller::Staff,
        }
    }
}

/// Values the stack knows, so that requests also get past the lookups.
struct Known {
    /// (customer, session) pairs of the demo tenant.
    sessions: Vec<(String, String)>,
    tickets: Vec<String>,
    documents: Vec<String>,
}

async fn known() -> Known {
    let mut sessions = Vec::new();
    let mut tickets = Vec::new();
    for (customer, text) in [
        ("fz-1", "How much is the Pro plan?"),
        ("fz-2", "I want to speak to a human"),
        ("fz-3", "你们的服务太差了，我要投诉"),
    ] {
        let reply = common::send(common::message(customer, text))
            .await
            .expect("a valid message is answered");
        sessions.push((customer.to_owned(), reply.session_id));
        if !reply.ticket_id.is_empty() {
            tickets.push(reply.ticket_id);
        }
    }
    assert!(
        !tickets.is_empty(),
        "no hand-off to fuzz the ticket RPCs with"
    );
    let mut documents: Vec<String> =
        std::fs::read_dir(common::repo_root().join("tenants/demo/docs"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                path.file_stem().unwrap().to_string_lossy().into_owned()
            })
            .collect();
    documents.sort();
    documents.truncate(3);
    documents.extend(["fz-doc-1".into(), "fz-doc-2".into()]);
    Known {
        sessions,
        tickets,
        documents,
    }
}

/// Strings that have broken parsers, queries and terminals elsewhere.
const ODD: &[&str] = &[
    "' OR '1'='1",
    "'; DROP TABLE tickets; --",
    "../../etc/passwd",
    "%00%ff",
    "%s%n%x",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "<script>alert(1)</script>",
    "\\",
    "\u{202e}gnp.exe",
    "\u{feff}\u{200b}\u{200d}",
    "👩‍👩‍👧‍👦🏳️‍🌈",
    "e\u{301}\u{301}\u{301}\u{301}\u{301}",
    "\u{fffd}\u{ffff}\u{10ffff}",
    "ＤＥＭＯ",
    "NaN",
    "-0",
    "null",
];

const MESSAGE_TEXTS: &[&str] = &[
    "How much is the Pro plan?",
    "I want to speak to a human",
    "My order has not arrived",
    "你们的服务太差了，我要投诉",
    "我的账号登录不了",
    "refund",
];

/// A protobuf field key.
fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | u64::from(wire_type), out);
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn length_delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A gRPC message frame: compression flag, the length it declares, the message.
fn frame(flag: u8, declared: usize, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(declared as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// One request: what is wrong with it (for the report), its metadata and its body.
struct Case {
    rpc: Rpc,
    what: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// A status the gRPC specification itself prescribes for this case, with the rule.
    prescribed: Option<(Code, &'static str)>,
    /// Enum fields holding no defined value: the request must not succeed.
    undefined: Vec<&'static str>,
}

struct Gen<'a> {
    rng: StdRng,
    known: &'a Known,
    rpcs: Vec<Rpc>,
    /// Enum fields of the message being made that hold no defined value.
    undefined: Vec<&'static str>,
}

impl<'a> Gen<'a> {
    fn new(seed: u64, known: &'a Known) -> Self {
        let rpcs = RPCS
            .iter()
            .flat_map(|&(rpc, weight)| std::iter::repeat_n(rpc, weight as usize))
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            known,
            rpcs,
            undefined: Vec::new(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn one<T: Clone>(&mut self, values: &[T]) -> T {
        values.choose(&mut self.rng).expect("a value").clone()
    }

    /// A string field: often one of `known`, else empty, blank, beyond the bounds of
    /// ids (128 characters) and texts (4096 bytes), control characters, odd Unicode.
    fn string(&mut self, known: &[&str]) -> String {
        let r = &mut self.rng;
        match r.random_range(0..20) {
            0..=7 if !known.is_empty() => known[r.random_range(0..known.len())].to_owned(),
            0 | 8 => String::new(),
            1 | 9 => " \t \u{3000}".into(),
            2 | 10 => "x".repeat(r.random_range(129..=300)),
            3 | 11 => "长".repeat(r.random_range(1..=2000)),
            4 | 12 => (0..r.random_range(1..40))
                .map(|_| char::from(r.random_range(0u8..0x20)))
                .collect(),
            5 | 13 => (0..r.random_range(1..60))
                .map(|_| {
                    if r.random_bool(0.5) {
                        r.random::<char>()
                    } else {
                        char::from_u32(r.random_range(0..0x3000)).unwrap_or('?')
                    }
                })
                .collect(),
            6 | 14 => ODD[r.random_range(0..ODD.len())].to_owned(),
            15 => "a".repeat(*[4095, 4096, 4097, 65_536].choose(r).unwrap()),
            16 if r.random_bool(0.1) => "y".repeat(1_000_000),
            16 => {
                let base = known.first().copied().unwrap_or("demo");
                match r.random_range(0..4) {
                    0 => base.to_uppercase(),
                    1 => format!(" {base} "),
                    2 => format!("{base}\u{0}"),
                    _ => format!("{base}{}", "/..".repeat(50)),
                }
            }
            _ => format!("fz-{}", r.random_range(0..1000)),
        }
    }

    fn tenant(&mut self) -> String {
        if self.chance(0.8) {
            "demo".into()
        } else {
            self.string(&["demo", "acme", "Demo"])
        }
    }

    /// A customer and a session: mostly a known pair, or mixed up, or anything.
    fn session(&mut self) -> (String, String) {
        let known = self.known;
        let (customer, session) = self.one(&known.sessions);
        match self.rng.random_range(0..6) {
            0..=2 => (customer, session),
            3 => (self.string(&["fz-1", "fz-2"]), session),
            4 => (customer, self.string(&[])),
            _ => (self.string(&["fz-9"]), self.string(&[])),
        }
    }

    fn ticket(&mut self) -> String {
        let known: Vec<&str> = self.known.tickets.iter().map(String::as_str).collect();
        self.string(&known)
    }

    fn document(&mut self) -> String {
        let known: Vec<&str> = self.known.documents.iter().map(String::as_str).collect();
        self.string(&known)
    }

    fn text(&mut self) -> String {
        let valid = self.one(MESSAGE_TEXTS);
        self.string(&[valid])
    }

    /// An enum field: unspecified, a defined value, or none of them (noted in
    /// `undefined`, as such a request must not be accepted).
    /// A value of the enum `E`: mostly defined (per the contracts), sometimes not.
    fn enumeration<E: TryFrom<i32>>(&mut self, field: &'static str) -> i32 {
        let last = last_defined::<E>();
        let value = match self.rng.random_range(0..10) {
            0 => 0,
            1..=5 => self.rng.random_range(1..=last),
            6 => 99,
            7 => 42,
            8 => -3,
            _ => self.one(&[i32::MIN, i32::MAX, last + 1]),
        };
        if !(0..=last).contains(&value) {
            self.undefined.push(field);
        }
        value
    }

    /// A moment: mostly the last weeks, else the epoch, before it, or beyond any calendar.
    fn timestamp(&mut self) -> prost_types::Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        prost_types::Timestamp {
            seconds: match self.rng.random_range(0..4) {
                0 => self.one(&[0, -1, i64::MIN, i64::MAX, now + 400 * 86_400]),
                _ => now - self.rng.random_range(0..40 * 86_400),
            },
            nanos: self.one(&[0, 500_000_000, 999_999_999, -1, i32::MAX]),
        }
    }

    fn number(&mut self) -> i32 {
        match self.rng.random_range(0..3) {
            0 => self.rng.random_range(1..=5),
            1 => self.one(&[-3, -1, 0, 6, 100, 1_000_000]),
            _ => self.one(&[i32::MIN, i32::MAX]),
        }
    }

    fn message(&mut self, rpc: Rpc) -> Vec<u8> {
        let tenant_id = self.tenant();
        let (customer_id, session_id) = self.session();
        match rpc {
            Rpc::SendMessage => SendMessageRequest {
                tenant_id,
                customer_id,
                session_id,
                channel: self.enumeration::<kefu_proto::v1::Channel>("channel"),
                text: self.text(),
                message_id: self.string(&[]),
            }
            .encode_to_vec(),
            Rpc::GetSession => GetSessionRequest {
                tenant_id,
                session_id,
                customer_id,
            }
            .encode_to_vec(),
            Rpc::StreamEvents => StreamEventsRequest {
                tenant_id,
                customer_id,
                session_id,
                after_event_id: self.one(&[0, 1, -1, 1_000_000, i64::MIN, i64::MAX]),
            }
            .encode_to_vec(),
            Rpc::RateConversation => RateConversationRequest {
                tenant_id,
                customer_id,
                ticket_id: self.ticket(),
                score: self.number(),
                comment: self.string(&["thanks"]),
            }
            .encode_to_vec(),
            Rpc::CreateTicket => CreateTicketRequest {
                tenant_id,
                customer_id,
                session_id,
                subject: self.string(&["refund"]),
                description: self.text(),
                priority: self.enumeration::<kefu_proto::v1::Priority>("priority"),
                intent: self.string(&["billing"]),
                channel: self.enumeration::<kefu_proto::v1::Channel>("channel"),
                escalation_reason: self.string(&[]),
                idempotency_key: self.string(&[]),
                actor: self.string(&["someone-else"]),
            }
            .encode_to_vec(),
            Rpc::GetTicket => GetTicketRequest {
                tenant_id,
                ticket_id: self.ticket(),
            }
            .encode_to_vec(),
            Rpc::ListTickets => ListTicketsRequest {
                tenant_id,
                customer_id,
                status: self.enumeration::<kefu_proto::v1::TicketStatus>("status"),
                page_size: self.number(),
            }
            .encode_to_vec(),
            Rpc::NextInQueue => NextInQueueRequest {
                tenant_id,
                assignee: self.string(&["demo-agent", "someone-else"]),
                take: self.chance(0.5),
            }
            .encode_to_vec(),
            Rpc::TransitionTicket => TransitionTicketRequest {
                tenant_id,
                ticket_id: self.ticket(),
                to_status: self.enumeration::<kefu_proto::v1::TicketStatus>("to_status"),
                actor: self.string(&["someone-else"]),
                comment: self.string(&[]),
            }
            .encode_to_vec(),
            Rpc::GetCustomer => GetCustomerRequest {
                tenant_id,
                customer_id,
            }
            .encode_to_vec(),
            Rpc::UpsertCustomer => UpsertCustomerRequest {
                customer: self.chance(0.9).then(|| Customer {
                    tenant_id,
                    customer_id,
                    display_name: self.string(&["Ada"]),
                    vip_tier: self.enumeration::<kefu_proto::v1::VipTier>("vip_tier"),
                }),
            }
            .encode_to_vec(),
            Rpc::ReplyToCustomer => ReplyToCustomerRequest {
                tenant_id,
                ticket_id: self.ticket(),
                text: self.text(),
                request_id: self.string(&[]),
            }
            .encode_to_vec(),
            Rpc::GetConversation => GetConversationRequest {
                tenant_id,
                ticket_id: self.ticket(),
            }
            .encode_to_vec(),
            Rpc::RaisePriority => RaisePriorityRequest {
                tenant_id,
                ticket_id: self.ticket(),
                priority: self.enumeration::<kefu_proto::v1::Priority>("priority"),
                reason: self.string(&[]),
            }
            .encode_to_vec(),
            Rpc::IngestDocuments => {
                let count = self.one(&[0, 1, 1, 1, 2, 3, 200]);
                IngestDocumentsRequest {
                    tenant_id,
                    documents: (0..count)
                        .map(|_| Document {
                            document_id: self.document(),
                            title: self.string(&["Fuzzing"]),
                            text: match self.rng.random_range(0..8) {
                                0 => "z ".repeat((1 << 19) + 1),
                                1..=3 => self.string(&[]),
                                _ => "# Returns\n\nReturn within **30 days**.".into(),
                            },
                        })
                        .collect(),
                }
                .encode_to_vec()
            }
            Rpc::DeleteDocument => DeleteDocumentRequest {
                tenant_id,
                document_id: self.document(),
            }
            .encode_to_vec(),
            Rpc::Reindex => ReindexRequest { tenant_id }.encode_to_vec(),
            Rpc::ReloadTenant => ReloadTenantRequest { tenant_id }.encode_to_vec(),
            Rpc::GetSupportReport => GetSupportReportRequest {
                tenant_id,
                from: self.chance(0.9).then(|| self.timestamp()),
                to: self.chance(0.9).then(|| self.timestamp()),
                channel: self.enumeration::<kefu_proto::v1::Channel>("channel"),
                language: self.enumeration::<kefu_proto::v1::Language>("language"),
            }
            .encode_to_vec(),
            Rpc::ListKnowledgeGaps => ListKnowledgeGapsRequest {
                tenant_id,
                language: self.enumeration::<kefu_proto::v1::Language>("language"),
                include_covered: self.chance(0.5),
                limit: self.number(),
            }
            .encode_to_vec(),
        }
    }

    /// Credentials: mostly the right ones for the RPC, else none, junk, the wrong role.
    fn headers(&mut self, rpc: Rpc) -> (Vec<(&'static str, Vec<u8>)>, &'static str) {
        let right = match rpc.caller() {
            Caller::Customer => None,
            Caller::Staff => Some(self.one(&[common::DEMO_AGENT_KEY, common::DEMO_ADMIN_KEY])),
            Caller::Admin => Some(common::DEMO_ADMIN_KEY),
        };
        let bearer = |key: &str| ("authorization", format!("Bearer {key}").into_bytes());
        match self.rng.random_range(0..12) {
            0..=6 => (right.map(bearer).into_iter().collect(), ""),
            7 => {
                let key = self.one(&[
                    common::DEMO_AGENT_KEY,
                    common::DEMO_ADMIN_KEY,
                    " demo-admin-key ",
                    "nope",
                ]);
                (vec![("x-api-key", key.into())], "x-api-key")
            }
            8 => {
                let value = self.one(&[
                    "Basic ZGVtbzpkZW1v",
                    "Bearer",
                    "Bearer ",
                    "bearer demo-admin-key",
                    "Bearer   demo-agent-key  ",
                    "demo-admin-key",
                ]);
                (vec![("authorization", value.into())], "odd authorization")
            }
            9 => (
                vec![("authorization", self.header_junk(b"Bearer "))],
                "junk key",
            ),
            10 => {
                let wrong = match rpc.caller() {
                    Caller::Customer | Caller::Admin => Some(common::DEMO_AGENT_KEY),
                    Caller::Staff => None,
                };
                (wrong.map(bearer).into_iter().collect(), "wrong role")
            }
            _ => {
                let mut headers: Vec<_> = right.map(bearer).into_iter().collect();
                headers.push(("x-kefu-customer-hash", self.header_junk(b"")));
                (headers, "junk customer hash")
            }
        }
    }

    /// A valid header value (visible ASCII, spaces, bytes above 0x7f) of up to 4000 bytes.
    fn header_junk(&mut self, prefix: &[u8]) -> Vec<u8> {
        let mut value = prefix.to_vec();
        let len = self.rng.random_range(0..4000);
        value.extend((0..len).map(|_| match self.rng.random_range(0u8..=0xff) {
            b @ (0x20..=0x7e | 0x80..) => b,
            _ => b' ',
        }));
        value
    }

    fn rpc(&mut self) -> Rpc {
        self.rpcs[self.rng.random_range(0..self.rpcs.len())]
    }

    /// A well-formed message with malformed content, sometimes with unknown fields,
    /// fields repeated, unknown fields nested deeply, or beyond 4 MiB altogether.
    fn malformed_message(&mut self) -> Case {
        let rpc = self.rpc();
        self.undefined.clear();
        let mut message = self.message(rpc);
        let mut undefined = std::mem::take(&mut self.undefined);
        let (headers, credentials) = self.headers(rpc);
        let mutation = match self.rng.random_range(0..100) {
            0..=9 => {
                for _ in 0..self.rng.random_range(1..20) {
                    let field = self.rng.random_range(100..(1 << 29));
                    match self.rng.random_range(0..4) {
                        0 => {
                            key(field, 0, &mut message);
                            varint(self.rng.random(), &mut message);
                        }
                        1 => {
                            key(field, 1, &mut message);
                            message.extend(self.rng.random::<u64>().to_le_bytes());
                        }
                        2 => {
                            key(field, 5, &mut message);
                            message.extend(self.rng.random::<u32>().to_le_bytes());
                        }
                        _ => {
                            let bytes: Vec<u8> = (0..self.rng.random_range(0..300))
                                .map(|_| self.rng.random())
                                .collect();
                            length_delimited(field, &bytes, &mut message);
                        }
                    }
                }
                "unknown fields"
            }
            10..=14 => {
                let mut nested = Vec::new();
                for _ in 0..self.rng.random_range(1..2000) {
                    let mut outer = Vec::new();
                    length_delimited(1000, &nested, &mut outer);
                    nested = outer;
                }
                message.extend(nested);
                "deeply nested unknown message"
            }
            15..=19 => {
                message.extend(self.message(rpc));
                // Which enum value wins is up to the merge: no verdict on them.
                undefined.clear();
                "fields repeated"
            }
            20 if self.chance(0.2) => {
                length_delimited(1000, &vec![b'x'; 4 << 20], &mut message);
                "beyond 4 MiB"
            }
            _ => "",
        };
        let what = [credentials, mutation]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        Case {
            rpc,
            what,
            headers,
            body: frame(0, message.len(), &message),
            prescribed: None,
            undefined,
        }
    }

    /// A body that is not a valid message (bad wire format, invalid UTF-8, recursion
    /// beyond the decoder's limit), or a frame that breaks the gRPC framing.
    fn undecodable(&mut self) -> Case {
        let rpc = self.rpc();
        let valid = self.message(rpc);
        let (headers, _) = self.headers(rpc);
        let case = |what: &str, body: Vec<u8>| Case {
            rpc,
            what: what.to_owned(),
            headers: headers.clone(),
            body,
            prescribed: None,
            undefined: Vec::new(),
        };
        let mut message = Vec::new();
        let whole = |message: &[u8]| frame(0, message.len(), message);
        match self.rng.random_range(0..13) {
            0 => {
                message = (0..self.rng.random_range(1..300))
                    .map(|_| self.rng.random())
                    .collect();
                case("random bytes", whole(&message))
            }
            1 => {
                length_delimited(1, &[b'd', 0xff, 0xfe, b'o'], &mut message);
                case("invalid UTF-8 in a string field", whole(&message))
            }
            2 => {
                key(1, 0, &mut message);
                varint(7, &mut message);
                case("wrong wire type for a string field", whole(&message))
            }
            3 => {
                key(1, 2, &mut message);
                varint(1 << 20, &mut message);
                message.extend(b"demo");
                case("field length beyond the message", whole(&message))
            }
            4 => {
                message.extend([0xff; 11]);
                case("overlong varint", whole(&message))
            }
            5 => {
                let depth = self.rng.random_range(101..5000);
                for _ in 0..depth {
                    key(1000, 3, &mut message);
                }
                for _ in 0..depth {
                    key(1000, 4, &mut message);
                }
                case("groups nested beyond the decoder's limit", whole(&message))
            }
            6 => {
                let cut = self.rng.random_range(0..valid.len().max(1));
                case("message cut short", whole(&valid[..cut.min(valid.len())]))
            }
            7 => case("no message at all", Vec::new()),
            8 => {
                let mut body = whole(&valid);
                body.truncate(self.rng.random_range(1..body.len()));
                case("frame cut short", body)
            }
            9 => {
                let mut body = whole(&valid);
                body.extend(whole(&valid));
                case("two messages to a unary call", body)
            }
            10 => case(
                "frame larger than 4 MiB declared",
                frame(0, 5 << 20, &valid),
            ),
            11 => {
                let mut c = case(
                    "compressed flag without grpc-encoding",
                    frame(1, valid.len(), &valid),
                );
                c.prescribed = Some((
                    Code::Internal,
                    "gRPC compression spec: such a message MUST fail with INTERNAL",
                ));
                c
            }
            _ => {
                let encoding = self.one(&["br", "snappy", "x-junk"]);
                let mut c = case(
                    "grpc-encoding the server does not support",
                    frame(1, valid.len(), &valid),
                );
                c.headers.push(("grpc-encoding", encoding.into()));
                c.prescribed = Some((
                    Code::Unimplemented,
                    "gRPC status codes: an unsupported compression is UNIMPLEMENTED",
                ));
                c
            }
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Status(Code, String),
    /// The connection or stream failed without a gRPC status.
    Transport(String),
    /// A response other than HTTP 200.
    Http(u16),
    Timeout,
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Status(code, _) => format!("{code:?}"),
            Outcome::Transport(_) => "transport error".into(),
            Outcome::Http(status) => format!("HTTP {status}"),
            Outcome::Timeout => "timeout".into(),
        }
    }
}

/// Sends one case as a raw gRPC call and reads its status; an open event stream counts
/// as OK once its first event or a short wait has passed.
async fn call(channel: Channel, case: &Case) -> Outcome {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(case.rpc.path())
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in &case.headers {
        request = request.header(
            *name,
            http::HeaderValue::from_bytes(value).expect("a valid header value"),
        );
    }
    let request = request
        .body(tonic::body::Body::new(Full::new(Bytes::from(
            case.body.clone(),
        ))))
        .expect("a request");
    let response =
        match tokio::time::timeout(Duration::from_secs(60), channel.oneshot(request)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(error)) => return Outcome::Transport(format!("{error:?}")),
            Ok(Ok(response)) => response,
        };
    if response.status() != http::StatusCode::OK {
        return Outcome::Http(response.status().as_u16());
    }
    let status = |headers: &http::HeaderMap| {
        let code = headers
            .get("grpc-status")?
            .to_str()
            .ok()?
            .parse::<i32>()
            .ok()?;
        let message = headers
            .get("grpc-message")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .unwrap_or_default();
        Some(Outcome::Status(Code::from_i32(code), message))
    };
    if let Some(outcome) = status(response.headers()) {
        return outcome;
    }
    let mut body = response.into_body();
    let wait = if case.rpc == Rpc::StreamEvents {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(60)
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if case.rpc == Rpc::StreamEvents => {
                return Outcome::Status(Code::Ok, String::new())
            }
            Err(_) => return Outcome::Timeout,
            Ok(None) => return Outcome::Transport("the response ended without a status".into()),
            Ok(Some(Err(error))) => return Outcome::Transport(format!("{error:?}")),
            Ok(Some(Ok(frame))) => {
                if let Some(outcome) = frame.trailers_ref().and_then(status) {
                    return outcome;
                }
                if case.rpc == Rpc::StreamEvents {
                    return Outcome::Status(Code::Ok, String::new());
                }
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("KEFU_MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Sends `count` cases made by `make`, at most CONCURRENCY at a time, and checks every
/// status, that the demo tenant still works, that nothing panicked and that every
/// service is still SERVING. Unexpected outcomes are grouped by `group` of the case.
async fn run(name: &str, count: usize, make: fn(&mut Gen) -> Case, group: fn(&Case) -> String) {
    let seed = seed();
    println!("{name}: seed {seed} (KEFU_MALFORMED_SEED={seed} repeats this run)");
    let channel = common::channel(&common::stack().gateway()).await;
    let known = known().await;
    let mut generator = Gen::new(seed, &known);
    let started = Instant::now();
    let results: Vec<(Case, Outcome, Duration)> =
        futures::stream::iter((0..count).map(|_| make(&mut generator)))
            .map(|case| {
                let channel = channel.clone();
                async move {
                    let sent = Instant::now();
                    let outcome = call(channel, &case).await;
                    (
                        Case {
                            body: case.body[..case.body.len().min(64)].to_vec(),
                            ..case
                        },
                        outcome,
                        sent.elapsed(),
                    )
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let elapsed = started.elapsed();

    let mut histogram: BTreeMap<Rpc, BTreeMap<String, usize>> = BTreeMap::new();
    let mut slowest: BTreeMap<Rpc, Duration> = BTreeMap::new();
    let mut unexpected: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    for (case, outcome, took) in &results {
        *histogram
            .entry(case.rpc)
            .or_default()
            .entry(outcome.label())
            .or_default() += 1;
        let slowest = slowest.entry(case.rpc).or_default();
        *slowest = (*slowest).max(*took);
        let verdict = match outcome {
            Outcome::Status(Code::Ok, _) if !case.undefined.is_empty() => {
                Some(format!("OK with undefined {}", case.undefined.join(", ")))
            }
            Outcome::Status(code, _)
                if EXPECTED.contains(code) || case.prescribed.is_some_and(|(p, _)| p == *code) =>
            {
                None
            }
            _ => Some(outcome.label()),
        };
        if let Some(verdict) = verdict {
            let entry = unexpected
                .entry((verdict, group(case)))
                .or_insert_with(|| (0, describe(case, outcome)));
            entry.0 += 1;
        }
    }
    let mut report = format!(
        "{name}: {} requests in {:.1} s, seed {seed}\n",
        results.len(),
        elapsed.as_secs_f64()
    );
    for (rpc, codes) in &histogram {
        let codes: Vec<String> = codes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let _ = writeln!(
            report,
            "  {:<17} {} (slowest {} ms)",
            format!("{rpc:?}"),
            codes.join(", "),
            slowest[rpc].as_millis()
        );
    }
    println!("{report}");

    let mut failures = String::new();
    for ((verdict, group), (n, example)) in &unexpected {
        let _ = writeln!(failures, "- {verdict}: {group} ({n}x); e.g. {example}");
    }
    for broken in still_works(&known).await {
        let _ = writeln!(
            failures,
            "- {}s after the requests: {broken}",
            RECOVERY.as_secs()
        );
    }
    for (service, status) in serving_services().await {
        if status != Some(common::ServingStatus::Serving) {
            let _ = writeln!(failures, "- {service}'s health is {status:?}, not SERVING");
        }
    }
    for panic in common::stack().panics() {
        let _ = writeln!(failures, "- a panic:\n{panic}");
    }
    assert!(
        failures.is_empty(),
        "{report}unexpected outcomes (seed {seed}):\n{failures}"
    );
}

/// What the report needs to repeat a case by hand.
fn describe(case: &Case, outcome: &Outcome) -> String {
    let headers: Vec<String> = case
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value);
            format!("{name}: {:?}", value.chars().take(40).collect::<String>())
        })
        .collect();
    let detail = match outcome {
        Outcome::Status(_, message) | Outcome::Transport(message) => {
            message.chars().take(160).collect::<String>()
        }
        _ => String::new(),
    };
    let prescribed = case
        .prescribed
        .map(|(_, rule)| format!(" ({rule})"))
        .unwrap_or_default();
    format!(
        "{} with [{}], body starting {:02x?}: {detail:?}{prescribed}",
        case.rpc.path(),
        headers.join(", "),
        &case.body[..case.body.len().min(24)]
    )
}

/// How long the stack may take to serve its customers and agents again once the
/// requests stop (work still running for callers that gave up included).
const RECOVERY: Duration = Duration::from_secs(60);

/// What the demo tenant's customers and agents do every day, tried until it all works
/// or RECOVERY has passed: the failures of the last try, each as a line.
async fn still_works(known: &Known) -> Vec<String> {
    let started = Instant::now();
    loop {
        let broken = everyday_calls(known).await;
        if broken.is_empty() {
            println!(
                "the demo tenant works {:.1} s after the last request",
                started.elapsed().as_secs_f64()
            );
        }
        if broken.is_empty() || started.elapsed() > RECOVERY {
            return broken;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn brief(status: &tonic::Status) -> String {
    format!("{:?} {:?}", status.code(), status.message())
}

async fn everyday_calls(known: &Known) -> Vec<String> {
    let mut broken = Vec::new();
    let mut tickets = common::tickets().await;
    let listed = tickets
        .list_tickets(ListTicketsRequest {
            tenant_id: "demo".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    let queue = tickets
        .next_in_queue(NextInQueueRequest {
            tenant_id: "demo".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    for (rpc, result) in [("ListTickets", listed), ("NextInQueue", queue)] {
        if let Err(status) = result {
            broken.push(format!(
                "{rpc} of the demo tenant fails: {}",
                brief(&status)
            ));
        }
    }
    let mut conversations = common::conversations().await;
    for (customer_id, session_id) in &known.sessions {
        let session = conversations
            .get_session(GetSessionRequest {
                tenant_id: "demo".into(),
                session_id: session_id.clone(),
                customer_id: customer_id.clone(),
            })
            .await;
        if let Err(status) = session {
            broken.push(format!(
                "GetSession of {customer_id} fails: {}",
                brief(&status)
            ));
        }
    }
    let message = common::message("fz-after", "How much is the Pro plan?");
    if let Err(status) = common::send(message).await {
        broken.push(format!(
            "a new customer's message fails: {}",
            brief(&status)
        ));
    }
    broken
}

/// The health of each of the six services (None: it does not answer).
async fn serving_services() -> Vec<(&'static str, Option<common::ServingStatus>)> {
    let mut statuses = Vec::new();
    for service in common::Service::ALL.map(common::Service::name) {
        let url = common::stack().url(service);
        let mut status = None;
        // A server whose probes just ran late gets a few seconds to say SERVING again.
        for _ in 0..20 {
            status = tokio::time::timeout(Duration::from_secs(2), common::health_status(&url))
                .await
                .ok()
                .flatten();
            if status.is_none() || status == Some(common::ServingStatus::Serving) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        statuses.push((service, status));
    }
    statuses
}

#[tokio::test]
async fn random_and_malformed_requests_get_expected_codes() {
    // What is wrong with a message shows per RPC.
    run(
        "malformed messages",
        MESSAGES,
        |g| g.malformed_message(),
        |case| format!("{:?}", case.rpc),
    )
    .await;
}

#[tokio::test]
async fn undecodable_bodies_get_expected_codes() {
    // A body is decoded before any RPC's own code runs: what matters is how it is broken.
    run(
        "undecodable bodies",
        BODIES,
        |g| g.undecodable(),
        |case| case.what.clone(),
    )
    .await;
}

/// The largest value the contracts define for the enum `E` (its values are consecutive).
fn last_defined<E: TryFrom<i32>>() -> i32 {
    (1..)
        .take_while(|value| E::try_from(*value).is_ok())
        .last()
        .unwrap_or(0)
}

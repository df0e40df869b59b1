//! Who may do what, through the gateway: every public RPC called as every kind of
//! caller, against the role matrix of the specification (not against the gateway's own
//! table), plus customer verification, key reload without restart and the audit actor.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use kefu_proto::v1::admin_service_client::AdminServiceClient;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;

const SECRET_ENV: &str = "KEFU_TEST_SHOP_CUSTOMER_SECRET";
const SECRET: &str = "shop-secret";
const APP_KEY: &str = "shop-widget-key";
const AGENT_KEY: &str = "shop-agent-key";
const ADMIN_KEY: &str = "shop-admin-key";

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `shop`: a closed tenant (customer-app key, verified customer ids, its own agent and
/// admin); `demo`: the bundled open tenant.
fn shop_keys(extra: &str) -> String {
    format!(
        "customer_hmac_secret_env = \"{SECRET_ENV}\"\n\n\
         [[api_keys]]\nid = \"widget\"\nrole = \"customer_app\"\nsha256 = \"{}\"\n\n\
         [[api_keys]]\nid = \"desk-1\"\nrole = \"agent\"\nsha256 = \"{}\"\nagent = \"lin\"\n\n\
         [[api_keys]]\nid = \"owner\"\nrole = \"admin\"\nsha256 = \"{}\"\n{extra}\n",
        digest(APP_KEY),
        digest(AGENT_KEY),
        digest(ADMIN_KEY)
    )
}

fn write_shop(tenants: &Path, extra: &str) {
    let demo =
        std::fs::read_to_string(common::repo_root().join("tenants/demo/tenant.toml")).unwrap();
    // The demo's intents under another id, without the demo's own keys.
    let intents = &demo[demo.find("[[intents]]").unwrap()..];
    let shop = format!(
        "id = \"shop\"\nname = \"Shop\"\n{}{intents}",
        shop_keys(extra)
    );
    let file = tenants.join("shop/tenant.toml");
    // Written aside and renamed, as a ConfigMap update is: readers never see half a file.
    std::fs::write(file.with_extension("tmp"), shop).unwrap();
    std::fs::rename(file.with_extension("tmp"), file).unwrap();
}

struct Shop {
    stack: common::Stack,
    tenants: PathBuf,
    _dir: tempfile::TempDir,
}

fn shop() -> &'static Shop {
    static SHOP: OnceLock<Shop> = OnceLock::new();
    SHOP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tenants = dir.path().join("tenants");
        std::fs::create_dir_all(tenants.join("shop/docs")).unwrap();
        std::os::unix::fs::symlink(
            common::repo_root().join("tenants/demo"),
            tenants.join("demo"),
        )
        .unwrap();
        for doc in std::fs::read_dir(common::repo_root().join("tenants/demo/docs")).unwrap() {
            let doc = doc.unwrap().path();
            std::fs::copy(
                &doc,
                tenants.join("shop/docs").join(doc.file_name().unwrap()),
            )
            .unwrap();
        }
        write_shop(&tenants, "");
        Shop {
            stack: common::start_blocking(
                common::on_repository(common::StackBuilder::all_in_one())
                    .tenants_dir(&tenants)
                    .env(SECRET_ENV, SECRET),
            ),
            tenants,
            _dir: dir,
        }
    })
}

async fn shop_channel() -> Channel {
    common::channel(&shop().stack.gateway()).await
}

fn customer_hash(customer: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(customer.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A kind of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    NoKey,
    BadKey,
    /// The customer app's key with the customer's verified hash.
    Customer,
    Agent,
    Admin,
    /// The demo tenant's agent key, used on the shop tenant.
    OtherTenantsAgent,
}

impl Caller {
    const ALL: [Caller; 6] = [
        Caller::NoKey,
        Caller::BadKey,
        Caller::Customer,
        Caller::Agent,
        Caller::Admin,
        Caller::OtherTenantsAgent,
    ];

    fn key(self) -> Option<&'static str> {
        match self {
            Caller::NoKey => None,
            Caller::BadKey => Some("not-a-key"),
            Caller::Customer => Some(APP_KEY),
            Caller::Agent => Some(AGENT_KEY),
            Caller::Admin => Some(ADMIN_KEY),
            Caller::OtherTenantsAgent => Some(common::DEMO_AGENT_KEY),
        }
    }
}

fn request<T>(caller: Caller, customer: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = caller.key() {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    if caller == Caller::Customer {
        request.metadata_mut().insert(
            "x-kefu-customer-hash",
            customer_hash(customer).parse().unwrap(),
        );
    }
    request
}

/// What the specification says each role may call: (rpc, customer, agent, admin).
/// Anyone without a valid key gets UNAUTHENTICATED; a key of another tenant, or of a
/// role not listed here, gets PERMISSION_DENIED.
const MATRIX: &[(&str, bool, bool, bool)] = &[
    ("SendMessage", true, false, false),
    ("GetSession", true, true, true),
    ("StreamEvents", true, false, false),
    ("RateConversation", true, false, false),
    ("CreateTicket", false, true, true),
    ("GetTicket", false, true, true),
    ("ListTickets", false, true, true),
    ("NextInQueue", false, true, true),
    ("TransitionTicket", false, true, true),
    ("GetCustomer", false, true, true),
    ("ReplyToCustomer", false, true, true),
    ("GetConversation", false, true, true),
    ("RaisePriority", false, true, true),
    ("UpsertCustomer", false, false, true),
    ("IngestDocuments", false, false, true),
    ("DeleteDocument", false, false, true),
    ("Reindex", false, false, true),
    ("ReloadTenant", false, false, true),
    ("ListDeadLetters", false, false, true),
    ("RetryDeadLetter", false, false, true),
];

fn expected(rpc: &str, caller: Caller) -> &'static str {
    let (_, customer, agent, admin) = *MATRIX.iter().find(|row| row.0 == rpc).unwrap();
    let allowed = match caller {
        Caller::NoKey | Caller::BadKey => return "Unauthenticated",
        Caller::OtherTenantsAgent => return "PermissionDenied",
        Caller::Customer => customer,
        Caller::Agent => agent,
        Caller::Admin => admin,
    };
    if allowed {
        "allowed"
    } else {
        "PermissionDenied"
    }
}

/// Calls `rpc` as `caller` and names the outcome: "allowed" when the call passed the
/// gateway's checks (whatever the service then answered), else the refusal's code.
async fn outcome(rpc: &str, caller: Caller, fixture: &Fixture) -> String {
    let channel = shop_channel().await;
    let mut conversations = ConversationServiceClient::new(channel.clone());
    let mut tickets = TicketServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel);
    let (tenant, customer) = ("shop".to_owned(), fixture.customer.clone());
    let ticket_id = fixture.ticket_id.clone();
    // A macro, not a closure: each RPC has its own message type.
    macro_rules! call {
        ($client:ident . $rpc:ident, $message:expr) => {
            $client
                .$rpc(request(caller, &customer, $message))
                .await
                .map(drop)
        };
    }
    let result: Result<(), tonic::Status> = match rpc {
        "SendMessage" => call!(
            conversations.send_message,
            SendMessageRequest {
                tenant_id: tenant,
                customer_id: customer.clone(),
                text: "hello".into(),
                ..Default::default()
            }
        ),
        "GetSession" => call!(
            conversations.get_session,
            GetSessionRequest {
                tenant_id: tenant,
                session_id: fixture.session_id.clone(),
                customer_id: if caller == Caller::Customer {
                    customer.clone()
                } else {
                    String::new()
                },
            }
        ),
        "StreamEvents" => call!(
            conversations.stream_events,
            StreamEventsRequest {
                tenant_id: tenant,
                customer_id: customer.clone(),
                session_id: fixture.session_id.clone(),
                after_event_id: 0,
            }
        ),
        "RateConversation" => call!(
            conversations.rate_conversation,
            RateConversationRequest {
                tenant_id: tenant,
                customer_id: customer.clone(),
                ticket_id,
                score: 4,
                comment: String::new(),
            }
        ),
        "CreateTicket" => call!(
            tickets.create_ticket,
            CreateTicketRequest {
                tenant_id: tenant,
                customer_id: customer.clone(),
                subject: "matrix".into(),
                ..Default::default()
            }
        ),
        "GetTicket" => call!(
            tickets.get_ticket,
            GetTicketRequest {
                tenant_id: tenant,
                ticket_id
            }
        ),
        "ListTickets" => call!(
            tickets.list_tickets,
            ListTicketsRequest {
                tenant_id: tenant,
                ..Default::default()
            }
        ),
        "NextInQueue" => call!(
            tickets.next_in_queue,
            NextInQueueRequest {
                tenant_id: tenant,
                ..Default::default()
            }
        ),
        "TransitionTicket" => call!(
            tickets.transition_ticket,
            TransitionTicketRequest {
                tenant_id: tenant,
                ticket_id,
                to_status: TicketStatus::Pending as i32,
                ..Default::default()
            }
        ),
        "GetCustomer" => call!(
            tickets.get_customer,
            GetCustomerRequest {
                tenant_id: tenant,
                customer_id: customer.clone()
            }
        ),
        "ReplyToCustomer" => call!(
            tickets.reply_to_customer,
            ReplyToCustomerRequest {
                tenant_id: tenant,
                ticket_id,
                text: "hello from the desk".into(),
                request_id: String::new(),
            }
        ),
        "GetConversation" => call!(
            tickets.get_conversation,
            GetConversationRequest {
                tenant_id: tenant,
                ticket_id
            }
        ),
        "RaisePriority" => call!(
            tickets.raise_priority,
            RaisePriorityRequest {
                tenant_id: tenant,
                ticket_id,
                priority: Priority::High as i32,
                reason: "matrix".into(),
            }
        ),
        "UpsertCustomer" => call!(
            tickets.upsert_customer,
            UpsertCustomerRequest {
                customer: Some(Customer {
                    tenant_id: tenant,
                    customer_id: customer.clone(),
                    display_name: String::new(),
                    vip_tier: VipTier::Silver as i32,
                }),
            }
        ),
        "IngestDocuments" => call!(
            admin.ingest_documents,
            IngestDocumentsRequest {
                tenant_id: tenant,
                documents: vec![Document {
                    document_id: "matrix.en".into(),
                    title: "Matrix".into(),
                    text: "# Matrix\n\nA document an admin added.".into(),
                }],
            }
        ),
        "DeleteDocument" => call!(
            admin.delete_document,
            DeleteDocumentRequest {
                tenant_id: tenant,
                document_id: "matrix.en".into()
            }
        ),
        "Reindex" => call!(admin.reindex, ReindexRequest { tenant_id: tenant }),
        "ReloadTenant" => call!(
            admin.reload_tenant,
            ReloadTenantRequest { tenant_id: tenant }
        ),
        "ListDeadLetters" => call!(
            admin.list_dead_letters,
            ListDeadLettersRequest {
                tenant_id: tenant,
                limit: 10
            }
        ),
        "RetryDeadLetter" => call!(
            admin.retry_dead_letter,
            RetryDeadLetterRequest {
                tenant_id: tenant,
                outbox_id: "matrix".into()
            }
        ),
        other => panic!("no call for {other}"),
    };
    match result {
        Ok(()) => "allowed".into(),
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            format!("{:?}", status.code())
        }
        // Past the gateway: the service's own answer (e.g. a precondition) still means allowed.
        Err(_) => "allowed".into(),
    }
}

struct Fixture {
    customer: String,
    session_id: String,
    ticket_id: String,
}

/// A shop customer handed off to the queue: a session and a ticket to call RPCs on.
async fn fixture() -> Fixture {
    let customer = "shop-customer-1".to_owned();
    let channel = shop_channel().await;
    let first = ConversationServiceClient::new(channel)
        .send_message(request(
            Caller::Customer,
            &customer,
            SendMessageRequest {
                tenant_id: "shop".into(),
                customer_id: customer.clone(),
                text: "I want to speak to a human".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("the shop's customer app may send")
        .into_inner();
    assert!(!first.ticket_id.is_empty());
    Fixture {
        customer,
        session_id: first.session_id,
        ticket_id: first.ticket_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_caller_as_the_role_matrix_says() {
    let fixture = fixture().await;
    let mut table = BTreeMap::new();
    let mut wrong = Vec::new();
    for (rpc, ..) in MATRIX {
        for caller in Caller::ALL {
            let got = outcome(rpc, caller, &fixture).await;
            let want = expected(rpc, caller);
            if got != want {
                wrong.push(format!("{rpc} as {caller:?}: got {got}, expected {want}"));
            }
            table.insert((rpc.to_string(), caller), got);
        }
    }
    // The matrix as tested, for the record.
    println!(
        "{:<18} {}",
        "rpc",
        Caller::ALL.map(|c| format!("{c:?}")).join(" | ")
    );
    for (rpc, ..) in MATRIX {
        let row: Vec<String> = Caller::ALL
            .iter()
            .map(|c| table[&(rpc.to_string(), *c)].clone())
            .collect();
        println!("{rpc:<18} {}", row.join(" | "));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_customer_cannot_act_as_another_even_with_the_apps_key() {
    let channel = shop_channel().await;
    let mut client = ConversationServiceClient::new(channel);
    let message = |customer: &str| SendMessageRequest {
        tenant_id: "shop".into(),
        customer_id: customer.into(),
        text: "How much does the Pro plan cost?".into(),
        ..Default::default()
    };
    // The hash of one customer does not open another's account.
    let mut forged = request(Caller::Customer, "alice", message("bob"));
    forged.metadata_mut().insert(
        "x-kefu-customer-hash",
        customer_hash("alice").parse().unwrap(),
    );
    assert_eq!(
        client.send_message(forged).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut missing = request(Caller::Customer, "bob", message("bob"));
    missing.metadata_mut().remove("x-kefu-customer-hash");
    assert_eq!(
        client.send_message(missing).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(client
        .send_message(request(Caller::Customer, "bob", message("bob")))
        .await
        .is_ok());
    // An unknown tenant answers exactly as a bad key does.
    let unknown = client
        .send_message(request(
            Caller::NoKey,
            "bob",
            SendMessageRequest {
                tenant_id: "no-such-shop".into(),
                ..message("bob")
            },
        ))
        .await
        .unwrap_err();
    let bad_key = client
        .send_message(request(Caller::BadKey, "bob", message("bob")))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (bad_key.code(), bad_key.message())
    );
}

#[tokio::test]
async fn the_audit_trail_names_the_keys_agent_and_new_keys_work_without_a_restart() {
    let fixture = fixture().await;
    let channel = shop_channel().await;
    let mut tickets = TicketServiceClient::new(channel);
    let moved = tickets
        .transition_ticket(request(
            Caller::Agent,
            "",
            TransitionTicketRequest {
                tenant_id: "shop".into(),
                ticket_id: fixture.ticket_id.clone(),
                to_status: TicketStatus::InProgress as i32,
                actor: "someone-else".into(),
                comment: "taking it".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
    let last = moved.audit.last().unwrap();
    assert_eq!(
        last.actor, "lin",
        "the key's agent, never the request's actor"
    );
    assert_eq!(moved.assignee, "lin");

    // A key added to the tenant file works within seconds, without a restart.
    let new_key = "shop-night-shift-key";
    write_shop(
        &shop().tenants,
        &format!(
            "\n[[api_keys]]\nid = \"night\"\nrole = \"agent\"\nsha256 = \"{}\"\n",
            digest(new_key)
        ),
    );
    let started = Instant::now();
    loop {
        let mut call = tonic::Request::new(ListTicketsRequest {
            tenant_id: "shop".into(),
            ..Default::default()
        });
        call.metadata_mut()
            .insert("x-api-key", new_key.parse().unwrap());
        match tickets.list_tickets(call).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated);
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the new key never worked"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

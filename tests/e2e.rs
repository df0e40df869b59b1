//! End-to-end: the scenarios of the specification and the edge cases, driven through
//! the gateway of a running stack exactly as a client would.
mod common;

use common::{message, send, tickets};
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use tonic::Code;

fn assert_negative(response: &SendMessageResponse) {
    let label = response.sentiment.as_ref().expect("sentiment").label;
    assert!(
        label == SentimentLabel::Negative as i32 || label == SentimentLabel::VeryNegative as i32,
        "expected a negative sentiment, got {label}"
    );
}

fn has_price(reply: &str) -> bool {
    (reply.contains('$') || reply.contains('¥') || reply.contains('元'))
        && reply.chars().any(|c| c.is_ascii_digit())
}

/// A price question, answered with a price and no hand-off.
async fn price_answer(customer: &str, text: &str) -> SendMessageResponse {
    let response = send(message(customer, text)).await.unwrap();
    assert_eq!(response.intent, "product_inquiry");
    assert!(!response.escalated, "reply: {}", response.reply);
    assert!(
        has_price(&response.reply),
        "no price in the reply: {}",
        response.reply
    );
    response
}

#[tokio::test]
async fn chinese_price_question_is_answered_from_knowledge() {
    let response = price_answer("zh-price", "我想了解你们的产品价格").await;
    assert!(!response.sources.is_empty());
    assert!(response.ticket_id.is_empty());
}

#[tokio::test]
async fn english_price_question_is_answered_from_knowledge() {
    price_answer("en-price", "I'd like to know the prices of your products").await;
}

#[tokio::test]
async fn login_trouble_is_technical_support_and_answered() {
    for (customer, text) in [
        ("zh-login", "我的账号登录不了"),
        ("en-login", "I can't log into my account"),
    ] {
        let response = send(message(customer, text)).await.unwrap();
        assert_eq!(response.intent, "technical_support", "for {text:?}");
        assert!(!response.escalated, "for {text:?}: {}", response.reply);
        assert!(!response.reply.is_empty());
    }
}

#[tokio::test]
async fn complaints_are_escalated_with_a_high_priority_ticket() {
    for (customer, text) in [
        ("zh-complaint", "你们的服务太差了，我要投诉"),
        (
            "en-complaint",
            "Your service is awful, I want to file a complaint",
        ),
    ] {
        let response = send(message(customer, text)).await.unwrap();
        assert_negative(&response);
        assert!(response.escalated, "for {text:?}");
        assert!(!response.ticket_id.is_empty());
        assert!(
            response.priority == Priority::High as i32
                || response.priority == Priority::Urgent as i32
        );
        let ticket = common::ticket(&mut tickets().await, &response.ticket_id).await;
        assert_eq!(ticket.customer_id, customer);
        assert_eq!(ticket.status, TicketStatus::Open as i32);
        assert!(
            ticket.priority == Priority::High as i32 || ticket.priority == Priority::Urgent as i32
        );
        assert_eq!(ticket.audit.len(), 1, "the creation is audited");
        assert!(ticket.sla_due_at.unwrap().seconds > ticket.created_at.unwrap().seconds);
    }
}

/// The demo's complaint intent goes to a person only when the message reads negative or
/// needing one (`route = "human_if_negative"`): praise sent through it is answered.
#[tokio::test]
async fn praise_sent_through_the_complaints_channel_is_answered_by_the_bot() {
    let text = "I want to use your complaints channel to praise the agent who helped me \
                yesterday, she was wonderful";
    let response = send(message("praise", text)).await.unwrap();
    assert_eq!(response.intent, "complaint", "the route under test");
    assert!(!response.escalated, "{}", response.reply);
    assert!(response.ticket_id.is_empty());
    assert_eq!(response.handler, Handler::Bot as i32);
    assert!(!response.reply.is_empty());
}

#[tokio::test]
async fn a_session_keeps_its_turns_across_messages() {
    let first = send(message("session-1", "How much does the Pro plan cost?"))
        .await
        .unwrap();
    assert!(!first.session_id.is_empty());
    let mut follow_up = message("session-1", "and the Business plan?");
    follow_up.session_id = first.session_id.clone();
    let second = send(follow_up).await.unwrap();
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(
        second.intent, "product_inquiry",
        "a short follow-up continues the topic"
    );
    let mut third = message("session-1", "thanks, bye");
    third.session_id = first.session_id.clone();
    send(third).await.unwrap();

    let mut conversations = common::conversations().await;
    let session = common::session(&mut conversations, "session-1", &first.session_id)
        .await
        .unwrap();
    let texts: Vec<_> = session.turns.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "How much does the Pro plan cost?",
            "and the Business plan?",
            "thanks, bye"
        ]
    );

    // Another customer cannot continue (or read into) this session.
    let mut intruder = message("someone-else", "hello");
    intruder.session_id = first.session_id;
    assert_eq!(
        send(intruder).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

/// An answer that did not help is not given again: the next best passage or the offer
/// of a person, and when that does not help either, a person.
#[tokio::test]
async fn an_answer_that_did_not_help_is_not_repeated() {
    let customer = "not-helped-1";
    let first = send(message(
        customer,
        "My camera keeps going offline, how do I fix it?",
    ))
    .await
    .unwrap();
    assert!(
        !first.escalated && !first.sources.is_empty(),
        "reply: {}",
        first.reply
    );
    let next = |text: &str| {
        let mut m = message(customer, text);
        m.session_id = first.session_id.clone();
        send(m)
    };
    let second = next("I already restarted the router, it didn't help")
        .await
        .unwrap();
    assert!(
        !second.escalated,
        "escalated ({}): {}",
        second.escalation_reason, second.reply
    );
    assert_ne!(second.reply, first.reply, "the same answer twice");
    assert!(
        second.reply.contains("colleague"),
        "a person is offered: {}",
        second.reply
    );
    let third = next("still not working").await.unwrap();
    assert!(third.escalated, "reply: {}", third.reply);
    assert_eq!(third.escalation_reason, "no_answer");
    assert!(!third.ticket_id.is_empty());
}

/// A short follow-up the router reads as another intent is the new topic, not the old one.
#[tokio::test]
async fn a_short_follow_up_on_another_topic_is_the_new_topic() {
    let first = send(message("topic-1", "How much does the Pro plan cost?"))
        .await
        .unwrap();
    let mut follow_up = message("topic-1", "where is my order?");
    follow_up.session_id = first.session_id.clone();
    let second = send(follow_up).await.unwrap();
    assert_eq!(second.intent, "order_status", "reply: {}", second.reply);
    assert!(
        !has_price(&second.reply),
        "answered the old topic: {}",
        second.reply
    );
}

#[tokio::test]
async fn a_retried_message_is_answered_once_and_opens_one_ticket() {
    let mut request = message("retry-1", "I want to speak to a human agent right now");
    request.message_id = "retry-1-msg-1".into();
    let first = send(request.clone()).await.unwrap();
    let second = send(request).await.unwrap();
    assert!(first.escalated);
    assert_eq!(first.ticket_id, second.ticket_id);
    assert_eq!(first.reply, second.reply);
    let listed = common::tickets_of(&mut tickets().await, "retry-1").await;
    assert_eq!(listed.len(), 1);
}

/// The ticket after an allowed transition.
async fn moved(
    client: &mut TicketServiceClient<common::KeyedChannel>,
    transition: TransitionTicketRequest,
) -> Ticket {
    client
        .transition_ticket(transition)
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap()
}

#[tokio::test]
async fn a_ticket_lives_through_the_gateway() {
    let mut client = tickets().await;
    common::admin_tickets()
        .await
        .upsert_customer(UpsertCustomerRequest {
            customer: Some(Customer {
                tenant_id: "demo".into(),
                customer_id: "vip-1".into(),
                display_name: String::new(),
                vip_tier: VipTier::Platinum as i32,
            }),
        })
        .await
        .unwrap();
    let response = send(message(
        "vip-1",
        "This is unacceptable, I want to complain about your support",
    ))
    .await
    .unwrap();
    assert!(response.escalated);
    assert_eq!(
        response.priority,
        Priority::Urgent as i32,
        "a platinum customer's complaint is urgent"
    );

    // The platinum customer's ticket is first in the queue; taking it assigns it to the
    // agent whose key took it, whatever name the request gives.
    let taken = client
        .next_in_queue(NextInQueueRequest {
            tenant_id: "demo".into(),
            assignee: "agent-7".into(),
            take: true,
        })
        .await
        .unwrap()
        .into_inner();
    let ticket = taken.ticket.unwrap();
    assert_eq!(ticket.ticket_id, response.ticket_id);
    assert_eq!(ticket.status, TicketStatus::InProgress as i32);
    assert_eq!(ticket.assignee, "demo-agent");

    let transition = |to: TicketStatus| TransitionTicketRequest {
        tenant_id: "demo".into(),
        ticket_id: response.ticket_id.clone(),
        to_status: to as i32,
        actor: "agent-7".into(),
        comment: "checked".into(),
    };
    client
        .transition_ticket(transition(TicketStatus::Pending))
        .await
        .unwrap();
    let resolved = moved(&mut client, transition(TicketStatus::Resolved)).await;
    assert!(resolved.resolved_at.is_some());
    let invalid = client
        .transition_ticket(transition(TicketStatus::Pending))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::FailedPrecondition);
    client
        .transition_ticket(transition(TicketStatus::Closed))
        .await
        .unwrap();
    let reopened = moved(&mut client, transition(TicketStatus::Open)).await;
    assert_eq!(reopened.status, TicketStatus::Open as i32);
    let moves: Vec<(i32, i32)> = reopened
        .audit
        .iter()
        .map(|a| (a.from_status, a.to_status))
        .collect();
    assert_eq!(
        moves,
        [
            (0, TicketStatus::Open as i32),
            (TicketStatus::Open as i32, TicketStatus::InProgress as i32),
            (
                TicketStatus::InProgress as i32,
                TicketStatus::Pending as i32
            ),
            (TicketStatus::Pending as i32, TicketStatus::Resolved as i32),
            (TicketStatus::Resolved as i32, TicketStatus::Closed as i32),
            (TicketStatus::Closed as i32, TicketStatus::Open as i32),
        ]
    );
    assert!(
        reopened
            .audit
            .iter()
            .skip(1)
            .all(|a| a.actor == "demo-agent"),
        "the audit trail names the authenticated agent, not the request's actor field"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_status() {
    let cases = [
        (message("bad", ""), Code::InvalidArgument),
        (message("bad", "   \n\t "), Code::InvalidArgument),
        (message("bad", &"a".repeat(4097)), Code::InvalidArgument),
        (message("", "hello"), Code::InvalidArgument),
        (
            SendMessageRequest {
                tenant_id: "no-such-tenant".into(),
                ..message("bad", "hello")
            },
            // The same answer as a bad key: callers cannot probe which tenants exist.
            Code::Unauthenticated,
        ),
        (
            SendMessageRequest {
                tenant_id: String::new(),
                ..message("bad", "hello")
            },
            Code::InvalidArgument,
        ),
        (
            SendMessageRequest {
                channel: 99,
                ..message("bad", "hello")
            },
            Code::InvalidArgument,
        ),
    ];
    for (request, code) in cases {
        let status = send(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            code,
            "for {:?}: {}",
            &request.text.chars().take(20).collect::<String>(),
            status.message()
        );
        assert!(!status.message().is_empty());
    }
    // Exactly at the limit is fine (multi-byte characters count in bytes).
    assert!(send(message("bad", &"好".repeat(1365))).await.is_ok());

    let mut client = tickets().await;
    let unknown = client
        .get_ticket(GetTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: "does-not-exist".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let no_target = client
        .transition_ticket(TransitionTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: "x".into(),
            to_status: 0,
            actor: "a".into(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_target.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_hundred_concurrent_customers_all_get_answers() {
    common::stack();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(
                async move { send(message(&format!("crowd-{i}"), "Hello, I need help")).await },
            )
        })
        .collect();
    for task in tasks {
        let response = task.await.unwrap().expect("every customer gets a reply");
        assert!(!response.reply.is_empty());
        assert_eq!(response.intent, "greeting");
    }
}

#[tokio::test]
async fn bench_customers_go_on_in_their_sessions() {
    let stack = common::stack();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("sessions.json");
    kefu::bench::run(kefu::bench::BenchArgs {
        gateway: stack.gateway(),
        tenant: "demo".into(),
        customers: 3,
        think_ms: 0,
        turns_per_session: 3,
        rate: None,
        rate_from: None,
        rate_factor: 1.0,
        wait_ready: 10,
        duration: 2,
        warmup: 0,
        messages: None,
        json: Some(json.clone()),
        deadline_ms: 10_000,
        webhook: None,
        webhook_secret_env: None,
        webhook_receive: "127.0.0.1:0".parse().unwrap(),
    })
    .await
    .expect("the bench runs");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let answered = report["answered"].as_u64().unwrap();
    let sessions = report["sessions"].as_u64().unwrap();
    assert!(answered >= 9, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    // Three turns to a session (those cut off by the end of the run a little fewer): the
    // gateway kept the follow-ups in the sessions their first messages opened.
    assert!(
        sessions * 3 >= answered && sessions * 2 <= answered,
        "{sessions} sessions for {answered} turns"
    );
}

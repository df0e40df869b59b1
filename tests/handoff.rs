//! The human side of a conversation, through the gateway as a customer's app and an
//! agent's tool use it: hand-off to the queue with one ticket, the bot silent while a
//! human handles the session, agent replies streamed to the customer live and replayed
//! after a reconnect, resolution back to the bot, and a rating.
mod common;

use std::time::{Duration, Instant};

use common::{message, send, tickets};
use kefu_proto::v1::conversation_event::Kind;
use kefu_proto::v1::*;
use tonic::Code;

/// The delivery bound of the specification.
const LIVE: Duration = Duration::from_secs(1);

type Events = tonic::Streaming<ConversationEvent>;

async fn open_stream(customer: &str, session: &str, after: i64) -> Result<Events, tonic::Status> {
    common::events_at(&common::stack().gateway(), customer, session, after).await
}

/// The next event, which must arrive within `within`.
async fn next_event(events: &mut Events, within: Duration) -> ConversationEvent {
    tokio::time::timeout(within, events.message())
        .await
        .unwrap_or_else(|_| panic!("no event within {within:?}"))
        .expect("the stream stays healthy")
        .expect("the stream stays open")
}

/// Nothing more arrives for a while.
async fn quiet(events: &mut Events) {
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(700), events.message()).await {
        panic!("unexpected event: {extra:?}");
    }
}

fn handler_of(event: &ConversationEvent) -> Option<i32> {
    match &event.kind {
        Some(Kind::HandlerChange(change)) => Some(change.handler),
        _ => None,
    }
}

fn reply_of(event: &ConversationEvent) -> Option<&AgentReply> {
    match &event.kind {
        Some(Kind::AgentReply(reply)) => Some(reply),
        _ => None,
    }
}

async fn reply(ticket_id: &str, text: &str) -> ReplyToCustomerResponse {
    tickets()
        .await
        .reply_to_customer(ReplyToCustomerRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.into(),
            text: text.into(),
            request_id: String::new(),
        })
        .await
        .expect("the agent's reply is accepted")
        .into_inner()
}

async fn ticket(ticket_id: &str) -> Ticket {
    common::ticket(&mut tickets().await, ticket_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_handed_to_an_agent_who_answers_live_and_hands_back_to_the_bot() {
    let customer = "handoff-1";
    let first = send(message(customer, "I want to speak to a human"))
        .await
        .unwrap();
    assert!(first.escalated, "reply: {}", first.reply);
    assert_eq!(first.handler, Handler::Queued as i32);
    assert!(!first.ticket_id.is_empty());
    assert!(!first.reply.is_empty(), "the hand-off is acknowledged");
    let (session, ticket_id) = (first.session_id.clone(), first.ticket_id.clone());

    // The customer follows the session; the hand-off itself is the first event.
    let mut events = open_stream(customer, &session, 0).await.unwrap();
    let queued = next_event(&mut events, LIVE).await;
    assert_eq!(
        (queued.event_id, handler_of(&queued)),
        (1, Some(Handler::Queued as i32))
    );

    // While queued: no bot reply, no second ticket; a customer growing angrier moves up.
    let before = ticket(&ticket_id).await.priority;
    for text in [
        "This is ridiculous, nobody answers, your service is terrible!",
        "hello? anyone there?",
    ] {
        let mut next = message(customer, text);
        next.session_id = session.clone();
        let response = send(next).await.unwrap();
        assert_eq!(response.handler, Handler::Queued as i32, "for {text:?}");
        assert!(response.escalated);
        assert_eq!(response.ticket_id, ticket_id);
        assert!(
            response.reply.is_empty(),
            "the bot stays silent: {:?}",
            response.reply
        );
        assert!(response.intent.is_empty());
    }
    let listed = common::tickets_of(&mut tickets().await, customer).await;
    assert_eq!(listed.len(), 1, "one hand-off, one ticket");
    let raised = ticket(&ticket_id).await;
    assert!(
        raised.priority > before,
        "priority {} -> {}",
        before,
        raised.priority
    );
    assert!(raised.audit.iter().any(|a| a.action == "priority_raised"));

    // An agent takes the queue: the session goes to them.
    let taken = common::take_next(&mut tickets().await).await;
    assert_eq!(taken.ticket_id, ticket_id);
    assert_eq!(
        taken.assignee, "demo-agent",
        "the key's agent, not a request field"
    );
    let agent = next_event(&mut events, LIVE).await;
    assert_eq!(
        (agent.event_id, handler_of(&agent)),
        (2, Some(Handler::Agent as i32))
    );

    // Two replies reach the customer live, in order.
    for (i, text) in [
        "Hi, I'm here to help.",
        "Could you tell me your order number?",
    ]
    .into_iter()
    .enumerate()
    {
        let sent = reply(&ticket_id, text).await;
        let started = Instant::now();
        let event = next_event(&mut events, LIVE).await;
        assert!(started.elapsed() < LIVE);
        assert_eq!(event.event_id, sent.event_id);
        assert_eq!(event.event_id, 3 + i as i64);
        let delivered = reply_of(&event).expect("an agent reply");
        assert_eq!(
            (delivered.text.as_str(), delivered.agent_id.as_str()),
            (text, "demo-agent")
        );
        assert_eq!(delivered.ticket_id, ticket_id);
    }
    quiet(&mut events).await;

    // The stream drops; a reply written meanwhile is replayed once on reconnect.
    drop(events);
    let missed = reply(&ticket_id, "Are you still there?").await;
    let mut events = open_stream(customer, &session, 4).await.unwrap();
    let replayed = next_event(&mut events, LIVE).await;
    assert_eq!(replayed.event_id, missed.event_id);
    assert_eq!(reply_of(&replayed).unwrap().text, "Are you still there?");
    quiet(&mut events).await;

    // Not rated before it is resolved, and never by someone else.
    let rate = |customer: &str, score: i32| RateConversationRequest {
        tenant_id: "demo".into(),
        customer_id: customer.into(),
        ticket_id: ticket_id.clone(),
        score,
        comment: String::new(),
    };
    let mut client = common::conversations().await;
    let early = client
        .rate_conversation(rate(customer, 5))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    // Resolving hands the session back to the bot, which answers with sources again.
    tickets()
        .await
        .transition_ticket(TransitionTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.clone(),
            to_status: TicketStatus::Resolved as i32,
            comment: "answered".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let back = next_event(&mut events, LIVE).await;
    assert_eq!(handler_of(&back), Some(Handler::Bot as i32));
    let mut question = message(customer, "How much does the Pro plan cost?");
    question.session_id = session.clone();
    let answered = send(question).await.unwrap();
    assert_eq!(answered.handler, Handler::Bot as i32);
    assert!(!answered.escalated, "reply: {}", answered.reply);
    assert!(!answered.sources.is_empty());
    assert!(answered.ticket_id.is_empty());

    // The conversation reads as it happened, with who said what.
    let conversation = tickets()
        .await
        .get_conversation(GetConversationRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let roles: Vec<i32> = conversation.entries.iter().map(|e| e.role).collect();
    use Role::*;
    assert_eq!(
        roles,
        [Customer, Bot, Customer, Customer, Agent, Agent, Agent, Customer, Bot].map(|r| r as i32)
    );
    assert!(conversation
        .entries
        .iter()
        .filter(|e| e.role == Agent as i32)
        .all(|e| e.author == "demo-agent"));
    assert!(!conversation.entries.last().unwrap().sources.is_empty());
    // The agent reads the acknowledgement the customer got, naming the ticket.
    assert_eq!(conversation.entries[1].text, first.reply);
    assert!(first.reply.contains(&ticket_id), "{}", first.reply);
    let session_view = common::session(&mut common::conversations().await, customer, &session)
        .await
        .unwrap();
    assert_eq!(
        session_view
            .turns
            .iter()
            .filter(|t| t.role == Agent as i32)
            .count(),
        3
    );
    assert_eq!(session_view.handler, Handler::Bot as i32);

    // Satisfaction, once, within 1..5, by the ticket's own customer.
    let codes = [
        client
            .rate_conversation(rate(customer, 6))
            .await
            .map(|_| ()),
        client
            .rate_conversation(rate("someone-else", 5))
            .await
            .map(|_| ()),
        client
            .rate_conversation(rate(customer, 5))
            .await
            .map(|_| ()),
        client
            .rate_conversation(rate(customer, 4))
            .await
            .map(|_| ()),
    ]
    .map(|result| result.err().map(|status| status.code()));
    assert_eq!(
        codes,
        [
            Some(Code::InvalidArgument),
            Some(Code::PermissionDenied),
            None,
            Some(Code::FailedPrecondition)
        ]
    );
}

#[tokio::test]
async fn a_customer_cannot_follow_or_read_another_customers_session() {
    let first = send(message("owner-1", "How much does the Pro plan cost?"))
        .await
        .unwrap();
    let stolen = open_stream("thief-1", &first.session_id, 0)
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Code::PermissionDenied);
    let read = common::session(
        &mut common::conversations().await,
        "thief-1",
        &first.session_id,
    )
    .await
    .unwrap_err();
    assert_eq!(read.code(), Code::PermissionDenied);
    assert!(open_stream("owner-1", &first.session_id, 0).await.is_ok());
    let unknown = open_stream("owner-1", "no-such-session", 0)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

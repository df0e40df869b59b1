//! What a team lead sees, end to end on `kefu up` as `make run` starts it: questions the
//! bot cannot answer become a knowledge gap, an article ingested through AdminService
//! answers the same kind of question and covers the gap; the support report counts what
//! customers and an agent did; bad periods and callers are refused.
mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{message, send, stack, take_next, tickets, ApiKey, DEMO_ADMIN_KEY, DEMO_AGENT_KEY};
use kefu_proto::v1::admin_service_client::AdminServiceClient;
use kefu_proto::v1::reports_service_client::ReportsServiceClient;
use kefu_proto::v1::*;
use prost_types::Timestamp;
use tonic::Code;

/// Three ways to ask about something the demo knowledge base does not cover, in English
/// and in Chinese.
const GIFT_CARD_QUESTIONS: [&str; 3] = [
    "Do you sell gift cards?",
    "Can I buy a gift card for my friend?",
    "Where can I purchase a gift card?",
];
const GIFT_CARD_QUESTIONS_ZH: [&str; 3] = [
    "你们卖礼品卡吗？",
    "我想买一张礼品卡送给朋友",
    "在哪里可以买到礼品卡？",
];

async fn reports(key: &'static str) -> ReportsServiceClient<common::KeyedChannel> {
    ReportsServiceClient::with_interceptor(common::channel(&stack().gateway()).await, ApiKey(key))
}

fn timestamp(at: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(at))
}

fn gaps_request(include_covered: bool) -> ListKnowledgeGapsRequest {
    ListKnowledgeGapsRequest {
        tenant_id: "demo".into(),
        include_covered,
        ..Default::default()
    }
}

/// The group holding every one of `questions`, if there is one.
fn gap_of<'a>(gaps: &'a [KnowledgeGap], questions: &[&str]) -> Option<&'a KnowledgeGap> {
    gaps.iter().find(|gap| {
        questions
            .iter()
            .all(|q| gap.examples.iter().any(|e| e == q))
    })
}

#[tokio::test]
async fn unanswered_questions_form_a_gap_that_a_new_article_covers() {
    let questions = GIFT_CARD_QUESTIONS.iter().chain(&GIFT_CARD_QUESTIONS_ZH);
    for (n, question) in questions.enumerate() {
        let response = send(message(&format!("gift-{n}"), question)).await.unwrap();
        assert!(
            response.sources.is_empty() && !response.escalated,
            "the bot was expected to miss {question:?}: {response:?}"
        );
    }
    let mut staff = reports(DEMO_AGENT_KEY).await;
    let listed = staff
        .list_knowledge_gaps(gaps_request(false))
        .await
        .unwrap()
        .into_inner();
    let gap = gap_of(&listed.gaps, &GIFT_CARD_QUESTIONS)
        .unwrap_or_else(|| panic!("no group of the gift card questions in {listed:#?}"))
        .clone();
    let zh = gap_of(&listed.gaps, &GIFT_CARD_QUESTIONS_ZH)
        .unwrap_or_else(|| panic!("no group of the Chinese gift card questions in {listed:#?}"));
    println!("in Chinese: {zh:#?}");
    assert_eq!((zh.questions, zh.language), (3, Language::Zh as i32));
    println!("before the article: {gap:#?}");
    assert_eq!(gap.questions, 3);
    assert_eq!(gap.last_7_days, 3);
    assert_eq!(gap.language, Language::En as i32);
    assert!(GIFT_CARD_QUESTIONS.contains(&gap.suggested_title.as_str()));
    assert!(gap.covered_at.is_none());
    assert!(
        gap.closeness < 0.6,
        "nothing answers it yet: {}",
        gap.closeness
    );

    // An admin writes the missing article.
    AdminServiceClient::with_interceptor(
        common::channel(&stack().gateway()).await,
        ApiKey(DEMO_ADMIN_KEY),
    )
    .ingest_documents(IngestDocumentsRequest {
        tenant_id: "demo".into(),
        documents: vec![Document {
            document_id: "gift-cards".into(),
            title: "Gift cards".into(),
            text: "# Gift cards\n\nYes, we sell gift cards. You can buy a digital gift card for a friend from $10 to $200 under Account > Gift cards; it arrives by email and never expires.".into(),
        }],
    })
    .await
    .unwrap();
    let answered = send(message("gift-after", "Do you sell gift cards?"))
        .await
        .unwrap();
    assert!(!answered.escalated, "{answered:?}");
    assert!(
        answered
            .sources
            .iter()
            .any(|s| s.document_id == "gift-cards"),
        "answered from the new article: {answered:?}"
    );

    let open = staff
        .list_knowledge_gaps(gaps_request(false))
        .await
        .unwrap()
        .into_inner();
    assert!(
        open.gaps.iter().all(|g| g.gap_id != gap.gap_id),
        "a covered gap is not listed as open"
    );
    let all = staff
        .list_knowledge_gaps(gaps_request(true))
        .await
        .unwrap()
        .into_inner();
    let covered = all
        .gaps
        .iter()
        .find(|g| g.gap_id == gap.gap_id)
        .expect("the gap, covered");
    println!("after the article: {covered:#?}");
    assert_eq!(covered.covered_by_document_id, "gift-cards");
    assert!(covered.covered_at.is_some());
    assert_eq!(covered.closest_document_id, "gift-cards");
    assert!(covered.closeness >= 0.6);
}

#[tokio::test]
async fn the_report_counts_conversations_handoffs_times_and_ratings() {
    let started = SystemTime::now();
    // SMS is this test's own channel: what it counts is what the test did.
    let on_sms = |customer: &str, text: &str| SendMessageRequest {
        channel: Channel::Sms as i32,
        ..message(customer, text)
    };
    for customer in ["sms-1", "sms-2"] {
        let answered = send(on_sms(customer, "How much does the Pro plan cost?"))
            .await
            .unwrap();
        assert!(
            !answered.escalated && !answered.sources.is_empty(),
            "{answered:?}"
        );
    }
    let handed = send(on_sms("sms-3", "I want to talk to a real person"))
        .await
        .unwrap();
    assert!(handed.escalated, "{handed:?}");
    let mut agent = tickets().await;
    let ticket = take_next(&mut agent).await;
    assert_eq!(ticket.ticket_id, handed.ticket_id);
    agent
        .reply_to_customer(ReplyToCustomerRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket.ticket_id.clone(),
            text: "Hello, how can I help?".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
        .transition_ticket(TransitionTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket.ticket_id.clone(),
            to_status: TicketStatus::Resolved as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    common::conversations()
        .await
        .rate_conversation(RateConversationRequest {
            tenant_id: "demo".into(),
            customer_id: "sms-3".into(),
            ticket_id: ticket.ticket_id.clone(),
            score: 4,
            comment: String::new(),
        })
        .await
        .unwrap();

    let now = SystemTime::now();
    let period = |from: SystemTime, to: SystemTime| GetSupportReportRequest {
        tenant_id: "demo".into(),
        from: timestamp(from),
        to: timestamp(to),
        channel: Channel::Sms as i32,
        ..Default::default()
    };
    let mut staff = reports(DEMO_AGENT_KEY).await;
    let asked = Instant::now();
    let report = staff
        .get_support_report(period(
            started - Duration::from_secs(60),
            now + Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_inner();
    println!("report in {:?}: {report:#?}", asked.elapsed());
    // The two answered conversations ended seconds ago: whether their customers come
    // back within 24 hours is not known yet.
    assert_eq!(
        (
            report.conversations,
            report.resolved_by_bot,
            report.handed_off,
            report.awaiting_return_window
        ),
        (3, 0, 1, 2)
    );
    assert_eq!(report.resolved_by_bot_share, 0.0);
    assert_eq!(
        (report.resolved_by_bot_target, report.satisfaction_target),
        (0.8, 4.5)
    );
    let reasons: Vec<(&str, i64)> = report
        .handoffs_by_reason
        .iter()
        .map(|r| (r.reason.as_str(), r.tickets))
        .collect();
    assert_eq!(reasons, [("human_request", 1)]);
    let first_response = report.first_response.unwrap();
    assert_eq!(first_response.count, 1);
    assert!(first_response.p50_seconds >= 0.0 && first_response.p50_seconds < 60.0);
    assert_eq!(report.resolution.unwrap().count, 1);
    let vip = report.first_response_vip.unwrap();
    assert_eq!((vip.count, vip.target_seconds), (0, 30.0));
    assert_eq!(report.satisfaction_counts, [0, 0, 0, 1, 0]);
    assert_eq!((report.ratings, report.satisfaction_average), (1, 4.0));
    let today: i64 = report.daily.iter().map(|d| d.conversations).sum();
    assert_eq!(today, 3);
    assert_eq!(report.breakdown.len(), 1);
    assert_eq!(report.breakdown[0].channel, Channel::Sms as i32);

    // Refused: a reversed or overlong period, a customer, another tenant's staff.
    let reversed = staff
        .get_support_report(period(now, started))
        .await
        .unwrap_err();
    assert_eq!(reversed.code(), Code::InvalidArgument);
    println!("reversed: {}", reversed.message());
    let year = Duration::from_secs(400 * 86_400);
    let overlong = staff
        .get_support_report(period(now - year, now))
        .await
        .unwrap_err();
    assert_eq!(overlong.code(), Code::InvalidArgument);
    println!("overlong: {}", overlong.message());
    let mut anonymous = ReportsServiceClient::new(common::channel(&stack().gateway()).await);
    let customer = anonymous
        .get_support_report(period(started, now))
        .await
        .unwrap_err();
    assert!(
        matches!(
            customer.code(),
            Code::Unauthenticated | Code::PermissionDenied
        ),
        "{customer:?}"
    );
    let mut unknown = period(started, now);
    unknown.tenant_id = "no-such-tenant".into();
    let unknown = staff.get_support_report(unknown).await.unwrap_err();
    // a valid key, of another tenant
    assert_eq!(unknown.code(), Code::PermissionDenied, "{unknown:?}");
}

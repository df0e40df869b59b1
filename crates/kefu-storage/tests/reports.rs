//! The report queries and the knowledge-gap store on both backends (SQLite, and the
//! real PostgreSQL at 127.0.0.1:5432), over conversations built turn by turn as the
//! orchestrator stores them.
use kefu_storage::gaps::{GapQuestion, GapRecord};
use kefu_storage::reports::{ConversationCell, HandoffTimes, ReportScope, DAY_MS};
use kefu_storage::*;
use kefu_test_db::TestDb;

const WEB: i32 = 1;
const WECHAT: i32 = 2;
const EN: i32 = 1;
const ZH: i32 = 2;
/// 2025-12-01T00:00Z.
const DAY0: i64 = 1_764_547_200_000;
const HOUR: i64 = 3_600_000;

async fn backends() -> Vec<(TestDb, Database)> {
    let mut backends = Vec::new();
    for (guard, url) in [TestDb::sqlite(), TestDb::postgres().await] {
        backends.push((guard, Database::connect(&url).await.unwrap()));
    }
    backends
}

struct Turn {
    session: &'static str,
    customer: &'static str,
    at: i64,
    channel: i32,
    language: i32,
    escalated: bool,
    unanswered: Unanswered,
}

fn turn(session: &'static str, customer: &'static str, at: i64) -> Turn {
    Turn {
        session,
        customer,
        at,
        channel: WEB,
        language: EN,
        escalated: false,
        unanswered: Unanswered::None,
    }
}

async fn store(sessions: &SqlSessionStore, turns: Vec<Turn>) {
    for (n, t) in turns.into_iter().enumerate() {
        sessions
            .append(TurnRecord {
                tenant_id: "t1".into(),
                session_id: t.session.into(),
                seq: 0,
                message_id: format!("m{n}"),
                customer_id: t.customer.into(),
                text: format!("question {n}"),
                reply: String::new(),
                intent: String::new(),
                sentiment: 3,
                escalated: t.escalated,
                ticket_id: String::new(),
                response: vec![],
                created_at: t.at,
                channel: t.channel,
                language: t.language,
                unanswered: t.unanswered,
            })
            .await
            .unwrap();
    }
}

fn handoff(session: &str, reason: &str, vip_tier: i32, at: i64) -> NewTicket {
    TicketRecord {
        tenant_id: "t1".into(),
        ticket_id: format!("ticket-{session}"),
        customer_id: "c".into(),
        session_id: session.into(),
        subject: String::new(),
        description: String::new(),
        status: 1,
        priority: 2,
        intent: String::new(),
        channel: WEB,
        assignee: String::new(),
        vip_tier,
        escalation_reason: reason.into(),
        idempotency_key: Some(session.into()),
        created_at: at,
        updated_at: at,
        sla_due_at: at + HOUR,
        resolved_at: Some(at + HOUR),
        version: 0,
        first_response_at: Some(at + 20_000),
        sla_raised: false,
    }
}

#[tokio::test]
async fn conversations_resolutions_handoffs_and_ratings_are_counted_as_defined() {
    for (_guard, db) in backends().await {
        let sessions = SqlSessionStore::new(db.clone());
        let answered = |session, customer, at| turn(session, customer, at);
        store(
            &sessions,
            vec![
                // resolved: two answered turns
                answered("s1", "alice", DAY0 + HOUR),
                answered("s1", "alice", DAY0 + 2 * HOUR),
                // not resolved: the customer came back within 24 hours
                answered("s2", "bob", DAY0 + HOUR),
                answered("s3", "bob", DAY0 + 20 * HOUR),
                // not resolved: a question left unanswered
                Turn {
                    unanswered: Unanswered::Miss,
                    ..answered("s4", "carol", DAY0 + 3 * HOUR)
                },
                // handed off, in Chinese on WeChat, the next day
                Turn {
                    channel: WECHAT,
                    language: ZH,
                    ..answered("s5", "dan", DAY0 + DAY_MS + HOUR)
                },
                Turn {
                    channel: WECHAT,
                    language: ZH,
                    escalated: true,
                    ..answered("s5", "dan", DAY0 + DAY_MS + 2 * HOUR)
                },
                // started before the period: not a conversation of it
                answered("s0", "erin", DAY0 - HOUR),
                answered("s0", "erin", DAY0 + HOUR),
            ],
        )
        .await;
        let tickets = SqlTicketStore::new(db.clone());
        let audit = AuditRecord {
            actor: "orchestrator".into(),
            action: "create".into(),
            from_status: 0,
            to_status: 1,
            comment: String::new(),
            at: DAY0,
        };
        for ticket in [
            handoff("s5", "negative_sentiment", 1, DAY0 + DAY_MS + 2 * HOUR),
            handoff("s6", "no_answer", 4, DAY0 + 5 * HOUR),
            handoff("s7", "no_answer", 1, DAY0 + 6 * HOUR),
        ] {
            tickets.create(ticket, audit.clone()).await.unwrap();
        }
        let conversations = SqlConversationStore::new(db.clone());
        for (ticket, score) in [("ticket-s5", 2), ("ticket-s6", 5)] {
            conversations
                .rate(RatingRecord {
                    tenant_id: "t1".into(),
                    ticket_id: ticket.into(),
                    customer_id: "c".into(),
                    score,
                    comment: String::new(),
                    at: DAY0 + 7 * HOUR,
                })
                .await
                .unwrap();
        }
        let reports = SqlReports::new(db.clone());
        let scope = ReportScope {
            tenant_id: "t1".into(),
            from_ms: DAY0,
            to_ms: DAY0 + 2 * DAY_MS,
            channel: None,
            language: None,
            as_of_ms: now_millis(),
        };
        let rows = reports.rows(&scope).await.unwrap();
        let day = DAY0 / DAY_MS;
        let cell =
            |day, channel, language, conversations, resolved_by_bot, handed_off| ConversationCell {
                day,
                channel,
                language,
                conversations,
                resolved_by_bot,
                handed_off,
                awaiting: 0,
            };
        assert_eq!(
            rows.conversations,
            [
                cell(day, WEB, EN, 4, 2, 0),
                cell(day + 1, WECHAT, ZH, 1, 0, 1)
            ],
            "s1 and s3 resolved; s2 (bob came back), s4 (a miss) and s5 (handed off) not"
        );
        assert_eq!(
            rows.handoff_reasons,
            [
                ("no_answer".to_owned(), 2),
                ("negative_sentiment".to_owned(), 1)
            ]
        );
        let mut times = rows.handoffs.clone();
        times.sort_by_key(|h| h.vip);
        assert_eq!(
            times[2],
            HandoffTimes {
                vip: true,
                first_response_ms: Some(20_000),
                resolution_ms: Some(HOUR)
            }
        );
        assert_eq!(rows.ratings, [(2, 1), (5, 1)]);
        // Three hours into the first day, s1 and s3 might still see their customers back.
        let early = reports
            .rows(&ReportScope {
                as_of_ms: DAY0 + 3 * HOUR,
                ..scope.clone()
            })
            .await
            .unwrap();
        assert_eq!(
            early.conversations[0],
            ConversationCell {
                awaiting: 2,
                ..cell(day, WEB, EN, 4, 0, 0)
            }
        );

        // Filters: the Chinese conversations, their ticket and its rating only.
        let zh = reports
            .rows(&ReportScope {
                language: Some(ZH),
                ..scope.clone()
            })
            .await
            .unwrap();
        assert_eq!(zh.conversations, [cell(day + 1, WECHAT, ZH, 1, 0, 1)]);
        assert_eq!(zh.handoff_reasons, [("negative_sentiment".to_owned(), 1)]);
        assert_eq!(zh.ratings, [(2, 1)]);
        let wechat = reports
            .rows(&ReportScope {
                channel: Some(WECHAT),
                ..scope.clone()
            })
            .await
            .unwrap();
        assert_eq!(wechat.conversations.len(), 1);
        // Another tenant sees none of it.
        let other = reports
            .rows(&ReportScope {
                tenant_id: "t2".into(),
                ..scope
            })
            .await
            .unwrap();
        assert_eq!(other, ReportRows::default());
    }
}

#[tokio::test]
async fn unanswered_questions_wait_once_and_groups_keep_their_members() {
    for (_guard, db) in backends().await {
        let sessions = SqlSessionStore::new(db.clone());
        let now = now_millis();
        store(
            &sessions,
            vec![
                Turn {
                    unanswered: Unanswered::Miss,
                    ..turn("s1", "alice", now - 2 * HOUR)
                },
                turn("s2", "bob", now - HOUR),
                // "that did not help": the question is the turn before
                Turn {
                    unanswered: Unanswered::NotHelped,
                    ..turn("s2", "bob", now - HOUR + 1000)
                },
                Turn {
                    unanswered: Unanswered::NoAnswer,
                    ..turn("s3", "carol", now - 8 * DAY_MS)
                },
            ],
        )
        .await;
        let gaps = SqlGaps::new(db.clone());
        assert!(gaps.claim("t1", 60_000).await.unwrap());
        assert!(
            !gaps.claim("t1", 60_000).await.unwrap(),
            "the lease is held"
        );
        let (pending, total) = gaps.pending("t1", 10).await.unwrap();
        assert_eq!(total, 3);
        let texts: Vec<&str> = pending.iter().map(|q| q.text.as_str()).collect();
        assert_eq!(texts, ["question 3", "question 0", "question 1"]);
        let group = GapRecord {
            gap_id: "g1".into(),
            language: EN,
            centroid: vec![0.6, 0.8],
            vector_model: "m".into(),
            questions: 3,
            suggested_title: "Question 0".into(),
            closeness: 0.25,
            first_asked: now - 8 * DAY_MS,
            last_asked: now - HOUR,
            ..Default::default()
        };
        let joined: Vec<GapQuestion> = pending
            .iter()
            .zip([0.7, 0.9, 0.8])
            .map(|(q, similarity)| GapQuestion {
                customer_id: q.customer_id.clone(),
                message_id: q.message_id.clone(),
                gap_id: "g1".into(),
                text: q.text.clone(),
                vector: vec![0.6, 0.8],
                similarity,
                asked_at: q.asked_at,
            })
            .collect();
        gaps.save("t1", std::slice::from_ref(&group), &joined)
            .await
            .unwrap();
        // Saved twice (a replica whose lease ran out): each question once.
        gaps.save("t1", std::slice::from_ref(&group), &joined)
            .await
            .unwrap();
        gaps.release("t1").await.unwrap();
        assert!(gaps.claim("t1", 60_000).await.unwrap());
        assert_eq!(gaps.pending("t1", 10).await.unwrap().1, 0);
        assert_eq!(gaps.groups("t1").await.unwrap(), [group]);
        assert_eq!(
            gaps.examples("t1", "g1", 2).await.unwrap(),
            ["question 0", "question 1"]
        );
        let trends = gaps.trends("t1", now, 7 * DAY_MS).await.unwrap();
        assert_eq!(trends.len(), 1);
        assert_eq!((trends[0].1.recent, trends[0].1.before), (2, 1));
        assert!(gaps.groups("t2").await.unwrap().is_empty());
    }
}

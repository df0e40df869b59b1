//! The stores against both backends: SQLite (a temporary file) and the real PostgreSQL
//! at 127.0.0.1:5432 (KEFU_TEST_POSTGRES_URL overrides), each test in its own database.
use std::sync::Arc;

use kefu_storage::*;
use kefu_test_db::TestDb;

const OPEN: i32 = 1;
const IN_PROGRESS: i32 = 2;
const PENDING: i32 = 3;

async fn backends() -> Vec<(TestDb, Database)> {
    let mut backends = Vec::new();
    for (guard, url) in [TestDb::sqlite(), TestDb::postgres().await] {
        backends.push((guard, Database::connect(&url).await.unwrap()));
    }
    backends
}

fn ticket(tenant: &str, customer: &str, key: Option<&str>) -> NewTicket {
    let now = now_millis();
    TicketRecord {
        tenant_id: tenant.into(),
        ticket_id: uuid::Uuid::now_v7().to_string(),
        customer_id: customer.into(),
        session_id: String::new(),
        subject: "complaint (web)".into(),
        description: "it broke".into(),
        status: OPEN,
        priority: 3,
        intent: "complaint".into(),
        channel: 1,
        assignee: String::new(),
        vip_tier: 1,
        escalation_reason: "complaint".into(),
        idempotency_key: key.map(str::to_owned),
        created_at: now,
        updated_at: now,
        sla_due_at: now + 3_600_000,
        resolved_at: None,
        version: 0,
        first_response_at: None,
        sla_raised: false,
    }
}

fn audit(from: i32, to: i32) -> AuditRecord {
    AuditRecord {
        actor: "tester".into(),
        action: "transition".into(),
        from_status: from,
        to_status: to,
        comment: String::new(),
        at: now_millis(),
    }
}

#[tokio::test]
async fn ticket_creation_is_idempotent_even_under_concurrency() {
    for (_guard, db) in backends().await {
        let store = Arc::new(SqlTicketStore::new(db));
        let (first, created) = store
            .create(ticket("t1", "c1", Some("msg-1")), audit(0, OPEN))
            .await
            .unwrap();
        assert!(created);
        let (again, created) = store
            .create(ticket("t1", "c1", Some("msg-1")), audit(0, OPEN))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.ticket_id, first.ticket_id);

        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create(ticket("t1", "c2", Some("msg-2")), audit(0, OPEN))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for racer in racers {
            ids.push(racer.await.unwrap().0.ticket_id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one ticket for one idempotency key");
        assert_eq!(
            store.list("t1", Some("c2"), None, 50).await.unwrap().len(),
            1
        );
        // The same key in another tenant is another ticket.
        let (other, created) = store
            .create(ticket("t2", "c2", Some("msg-2")), audit(0, OPEN))
            .await
            .unwrap();
        assert!(created);
        assert_ne!(other.ticket_id, ids[0]);
        // So is the same key of another customer: keys are the customer's message ids.
        let (theirs, created) = store
            .create(ticket("t1", "c3", Some("msg-2")), audit(0, OPEN))
            .await
            .unwrap();
        assert!(created, "another customer's message with the same id");
        assert_eq!(theirs.customer_id, "c3");
        assert_ne!(theirs.ticket_id, ids[0]);
    }
}

#[tokio::test]
async fn parallel_transitions_are_serialized_without_lost_updates() {
    for (_guard, db) in backends().await {
        let store = Arc::new(SqlTicketStore::new(db));
        let (created, _) = store
            .create(ticket("t1", "c1", None), audit(0, OPEN))
            .await
            .unwrap();
        let id = created.ticket_id.clone();
        let writers: Vec<_> = (0..12)
            .map(|_| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    // Read-modify-write until this writer's move lands, as the service does.
                    loop {
                        let current = store.get("t1", &id).await.unwrap().unwrap();
                        let to = if current.status == IN_PROGRESS {
                            PENDING
                        } else {
                            IN_PROGRESS
                        };
                        let mut change = TicketChange::from_current(&current, now_millis());
                        change.status = to;
                        change.resolved_at = None;
                        match store
                            .update(
                                "t1",
                                &id,
                                current.version,
                                change,
                                audit(current.status, to),
                            )
                            .await
                            .unwrap()
                        {
                            UpdateOutcome::Updated(_) => return,
                            UpdateOutcome::Conflict => continue,
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let final_state = store.get("t1", &id).await.unwrap().unwrap();
        assert_eq!(
            final_state.version, 12,
            "every writer's update counted once"
        );
        let trail = store.audit_trail("t1", &id).await.unwrap();
        assert_eq!(trail.len(), 13, "creation plus one audit row per update");
        // Each move starts where the previous one ended: no update was based on stale state.
        for pair in trail.windows(2) {
            assert_eq!(pair[1].from_status, pair[0].to_status);
        }
    }
}

#[tokio::test]
async fn the_queue_orders_by_vip_then_priority_then_age() {
    for (_guard, db) in backends().await {
        let store = SqlTicketStore::new(db);
        let mut old_low = ticket("t1", "a", None);
        old_low.priority = 1;
        old_low.created_at -= 10_000;
        let urgent = TicketRecord {
            priority: 4,
            ..ticket("t1", "b", None)
        };
        let vip_medium = TicketRecord {
            priority: 2,
            vip_tier: 4,
            ..ticket("t1", "c", None)
        };
        for t in [old_low.clone(), urgent.clone(), vip_medium.clone()] {
            store.create(t, audit(0, OPEN)).await.unwrap();
        }
        assert_eq!(
            store
                .next_in_queue("t1", OPEN)
                .await
                .unwrap()
                .unwrap()
                .ticket_id,
            vip_medium.ticket_id
        );
        assert!(
            store.next_in_queue("t2", OPEN).await.unwrap().is_none(),
            "queues are per tenant"
        );
        let stats = store.queue_stats("t1", OPEN, now_millis()).await.unwrap();
        assert_eq!(stats.depth, 3);
        assert_eq!(stats.oldest_created_at, Some(old_low.created_at));
        assert_eq!(stats.overdue, 0);
    }
}

#[tokio::test]
async fn sessions_keep_order_replay_by_message_id_and_stay_in_their_tenant() {
    for (_guard, db) in backends().await {
        let store = SqlSessionStore::new(db);
        let turn = |tenant: &str, message: &str| TurnRecord {
            tenant_id: tenant.into(),
            session_id: "s1".into(),
            seq: 0,
            message_id: message.into(),
            customer_id: "c1".into(),
            text: format!("text of {message}"),
            reply: "reply".into(),
            intent: "greeting".into(),
            sentiment: 3,
            escalated: false,
            ticket_id: String::new(),
            response: vec![1, 2, 3],
            created_at: now_millis(),
            channel: 1,
            language: 1,
            unanswered: Unanswered::None,
        };
        for message in ["m1", "m2", "m3"] {
            store.append(turn("t1", message)).await.unwrap();
        }
        let replayed = store.append(turn("t1", "m2")).await.unwrap();
        assert_eq!(replayed.seq, 2, "a retried message keeps its place");
        let recent = store.recent_turns("t1", "s1", 2).await.unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|t| t.message_id.as_str())
                .collect::<Vec<_>>(),
            ["m2", "m3"]
        );
        assert!(store.recent_turns("t2", "s1", 10).await.unwrap().is_empty());
        assert!(store
            .find_by_message_id("t2", "c1", "m1")
            .await
            .unwrap()
            .is_none());
        // Message ids are the customer's own: another customer may use the same one.
        let other = TurnRecord {
            customer_id: "c2".into(),
            session_id: "s2".into(),
            response: vec![9],
            ..turn("t1", "m1")
        };
        assert_eq!(store.append(other).await.unwrap().response, vec![9]);
        assert_eq!(
            store
                .find_by_message_id("t1", "c2", "m1")
                .await
                .unwrap()
                .unwrap()
                .response,
            vec![9]
        );
        assert_eq!(
            store
                .find_by_message_id("t1", "c1", "m1")
                .await
                .unwrap()
                .unwrap()
                .response,
            vec![1, 2, 3]
        );
    }
}

#[tokio::test]
async fn documents_keep_their_chunks_and_vectors() {
    for (_guard, db) in backends().await {
        let store = SqlContentStore::new(db);
        let document = StoredDocument {
            document_id: "refunds.en".into(),
            title: "Refunds".into(),
            text: "# Refunds\n\n14 days.".into(),
        };
        let chunks = vec![StoredChunk {
            chunk_id: "refunds.en#0".into(),
            heading: String::new(),
            text: "14 days.".into(),
            vector: vec![0.5, -0.25],
            vector_model: "encoder-a".into(),
        }];
        let before = store.documents_generation("t1").await.unwrap();
        store.put_document("t1", &document, &chunks).await.unwrap();
        assert_ne!(store.documents_generation("t1").await.unwrap(), before);
        let stored = store.chunks("t1").await.unwrap();
        assert_eq!(stored, vec![(document.clone(), chunks)]);
        assert!(
            store.chunks("t2").await.unwrap().is_empty(),
            "documents are per tenant"
        );
        assert!(store.put_definition("t1", "id = 't1'").await.unwrap());
        assert!(
            !store.put_definition("t1", "id = 't1'").await.unwrap(),
            "unchanged definitions are not rewritten"
        );
        assert!(store.delete_document("t1", "refunds.en").await.unwrap());
        assert!(store.chunks("t1").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn replicas_writing_the_same_document_at_once_all_succeed() {
    for (_guard, db) in backends().await {
        let store = Arc::new(SqlContentStore::new(db));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let document = StoredDocument {
                        document_id: "shipping.en".into(),
                        title: "Shipping".into(),
                        text: "Ships in a day.".into(),
                    };
                    let chunks: Vec<StoredChunk> = (0..3)
                        .map(|n| StoredChunk {
                            chunk_id: format!("shipping.en#{n}"),
                            heading: String::new(),
                            text: format!("part {n}"),
                            vector: vec![n as f32],
                            vector_model: "encoder-a".into(),
                        })
                        .collect();
                    store.put_document("t1", &document, &chunks).await
                })
            })
            .collect();
        for writer in writers {
            writer
                .await
                .unwrap()
                .expect("concurrent seeding of one document succeeds");
        }
        let stored = store.chunks("t1").await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].1.len(), 3);
    }
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let (_guard, url) = TestDb::postgres().await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Database::connect(&url).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every replica starts");
    }
    let db = Database::connect(&url).await.unwrap();
    let applied: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM _sqlx_migrations")
            .fetch_one(db.pool())
            .await
            .unwrap(),
        "n",
    )
    .unwrap();
    let in_repository = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/postgres"
    ))
    .unwrap()
    .count() as i64;
    assert_eq!(applied, in_repository);
}

#[tokio::test]
async fn a_session_moves_between_handlers_with_one_ordered_event_each() {
    use kefu_storage::conversations::{HANDLER_AGENT, HANDLER_BOT, HANDLER_QUEUED};
    for (_guard, db) in backends().await {
        let store = Arc::new(SqlConversationStore::new(db));
        let hand_off = |ticket: &str| HandlerMove::HandOff {
            customer_id: "c1".into(),
            ticket_id: ticket.into(),
        };
        let moved = store
            .move_session("t1", "s1", hand_off("T1"))
            .await
            .unwrap();
        assert!(matches!(moved, HandlerOutcome::Moved(ref e) if e.event_id == 1));
        // A second hand-off of the same session opens nothing: it is already queued.
        match store
            .move_session("t1", "s1", hand_off("T2"))
            .await
            .unwrap()
        {
            HandlerOutcome::Unchanged(Some(current)) => {
                assert_eq!(
                    (current.handler, current.ticket_id.as_str()),
                    (HANDLER_QUEUED, "T1")
                )
            }
            other => panic!("expected no change, got {other:?}"),
        }
        let take = HandlerMove::Take {
            ticket_id: "T1".into(),
        };
        assert!(matches!(
            store.move_session("t1", "s1", take.clone()).await.unwrap(),
            HandlerOutcome::Moved(_)
        ));
        assert!(
            matches!(
                store.move_session("t1", "s1", take).await.unwrap(),
                HandlerOutcome::Unchanged(_)
            ),
            "taking twice is one change"
        );

        // Concurrent replies all land, numbered without gaps; a retried one is stored once.
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append_agent_reply(
                            "t1",
                            "s1",
                            "T1",
                            "anna",
                            &format!("reply {i}"),
                            Some(&format!("r{i}")),
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let again = store
            .append_agent_reply("t1", "s1", "T1", "anna", "reply 3", Some("r3"))
            .await
            .unwrap();
        let events = store.events_after("t1", "s1", 0, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(events.iter().any(|e| e.event_id == again.event_id));
        assert_eq!(
            store.events_after("t1", "s1", 8, 100).await.unwrap().len(),
            2,
            "resume after a cursor"
        );
        assert!(
            store
                .events_after("t2", "s1", 0, 100)
                .await
                .unwrap()
                .is_empty(),
            "tenants stay apart"
        );

        let release = HandlerMove::Release {
            ticket_id: "T1".into(),
        };
        assert!(matches!(
            store.move_session("t1", "s1", release).await.unwrap(),
            HandlerOutcome::Moved(_)
        ));
        let handler = store.handler("t1", "s1").await.unwrap().unwrap();
        assert_eq!(
            (handler.handler, handler.ticket_id.as_str()),
            (HANDLER_BOT, "")
        );
        assert_eq!(
            store.events_after("t1", "s1", 0, 100).await.unwrap().len(),
            11
        );
        assert_eq!(
            events[1].kind,
            EventKind::HandlerChange {
                handler: HANDLER_AGENT
            }
        );

        let rating = RatingRecord {
            tenant_id: "t1".into(),
            ticket_id: "T1".into(),
            customer_id: "c1".into(),
            score: 5,
            comment: String::new(),
            at: now_millis(),
        };
        assert!(store.rate(rating.clone()).await.unwrap());
        assert!(!store.rate(rating).await.unwrap(), "rated once");
    }
}

#[tokio::test]
async fn the_sla_policy_finds_tickets_past_80_percent_without_a_reply() {
    for (_guard, db) in backends().await {
        let store = SqlTicketStore::new(db);
        let now = now_millis();
        let mut due_soon = ticket("t1", "c1", None);
        due_soon.created_at = now - 90_000;
        due_soon.sla_due_at = now + 10_000;
        let mut fresh = ticket("t1", "c2", None);
        fresh.created_at = now;
        fresh.sla_due_at = now + 100_000;
        let mut answered = due_soon.clone();
        answered.ticket_id = uuid::Uuid::now_v7().to_string();
        for t in [&due_soon, &fresh, &answered] {
            store.create(t.clone(), audit(0, OPEN)).await.unwrap();
        }
        assert!(store
            .record_first_response("t1", &answered.ticket_id, now)
            .await
            .unwrap());
        assert!(
            !store
                .record_first_response("t1", &answered.ticket_id, now + 1)
                .await
                .unwrap(),
            "the first response is kept"
        );
        let at_risk = store.sla_at_risk(now, 10).await.unwrap();
        assert_eq!(
            at_risk
                .iter()
                .map(|t| t.ticket_id.as_str())
                .collect::<Vec<_>>(),
            [due_soon.ticket_id.as_str()]
        );
    }
}

fn ticket_turn(customer: &str, message: &str, hand_off: bool) -> TicketTurn {
    TicketTurn {
        turn: TurnRecord {
            tenant_id: "t1".into(),
            session_id: format!("session-of-{customer}"),
            seq: 0,
            message_id: message.into(),
            customer_id: customer.into(),
            text: "I want to speak to a human".into(),
            reply: "passed on".into(),
            intent: "human_agent".into(),
            sentiment: 3,
            escalated: hand_off,
            ticket_id: String::new(),
            response: vec![1],
            created_at: now_millis(),
            channel: 1,
            language: 1,
            unanswered: Unanswered::None,
        },
        hand_off,
        request: vec![7, 7, 7],
        lease_ms: 60_000,
    }
}

#[tokio::test]
async fn a_hand_off_commits_its_turn_queue_move_and_ticket_entry_together() {
    use kefu_storage::conversations::HANDLER_QUEUED;
    for (_guard, db) in backends().await {
        let store = SqlConversationStore::new(db.clone());
        let sessions = SqlSessionStore::new(db);
        let TicketTurnOutcome::Committed { turn, entry } = store
            .commit_ticket_turn(ticket_turn("c1", "m1", true))
            .await
            .unwrap()
        else {
            panic!("a new message commits");
        };
        let entry = entry.expect("a hand-off writes an outbox entry");
        assert_eq!((turn.seq, entry.attempts), (1, 1));
        let handler = store
            .handler("t1", &turn.session_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (handler.handler, handler.ticket_id.as_str()),
            (HANDLER_QUEUED, "")
        );
        // The committing worker holds its entry: the drainer does not take it meanwhile.
        assert!(store.claim_next(1000).await.unwrap().is_none());
        // A retry of the message is the turn stored first, with nothing written again.
        assert!(matches!(
            store.commit_ticket_turn(ticket_turn("c1", "m1", true)).await.unwrap(),
            TicketTurnOutcome::Replayed(ref replayed) if replayed.seq == 1
        ));
        // Another message of the queued session joins it: no second entry.
        let mut second = ticket_turn("c1", "m2", true);
        second.turn.session_id = turn.session_id.clone();
        assert!(matches!(
            store.commit_ticket_turn(second).await.unwrap(),
            TicketTurnOutcome::Committed { entry: None, .. }
        ));
        store
            .ticket_opened(
                &entry,
                "T-1",
                Some(OpenedReply {
                    reply: "Ticket T-1 is open.".into(),
                    response: vec![9],
                }),
            )
            .await
            .unwrap();
        let handler = store
            .handler("t1", &turn.session_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(handler.ticket_id, "T-1", "the session gets its ticket");
        let stored = sessions
            .find_by_message_id("t1", "c1", "m1")
            .await
            .unwrap()
            .unwrap();
        // The transcript shows what the customer was told, not the reply stored before.
        assert_eq!(
            (
                stored.ticket_id.as_str(),
                stored.reply.as_str(),
                stored.response.as_slice()
            ),
            ("T-1", "Ticket T-1 is open.", &[9u8][..])
        );
        let events = store
            .events_after("t1", &turn.session_id, 0, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "one event: the hand-off");
        assert_eq!(store.stats().await.unwrap(), OutboxStats::default());
    }
}

#[tokio::test]
async fn failing_entries_back_off_and_die_without_holding_up_the_others() {
    for (_guard, db) in backends().await {
        let store = SqlConversationStore::new(db);
        let mut entries = Vec::new();
        for i in 0..3 {
            let mut turn = ticket_turn(&format!("c{i}"), "m1", false);
            turn.lease_ms = 0; // as if the committing worker died at once
            match store.commit_ticket_turn(turn).await.unwrap() {
                TicketTurnOutcome::Committed {
                    entry: Some(entry), ..
                } => entries.push(entry),
                other => panic!("{other:?}"),
            }
        }
        let mut claimed = Vec::new();
        for _ in 0..2 {
            claimed.push(store.claim_next(60_000).await.unwrap().expect("due"));
        }
        assert!(claimed.iter().all(|entry| entry.attempts == 2));
        // A second drainer meanwhile gets only the entry nobody holds, and then nothing.
        let other = [store.claim_next(60_000).await.unwrap().expect("due")];
        assert!(!claimed.contains(&other[0]));
        assert!(store.claim_next(60_000).await.unwrap().is_none());
        // One is tried again later, one goes to the dead letter, one is opened.
        let far = now_millis() + 3_600_000;
        store
            .attempt_failed(&claimed[0], "Internal: refused", Some(far))
            .await
            .unwrap();
        store
            .attempt_failed(&claimed[1], "Internal: refused", None)
            .await
            .unwrap();
        store.ticket_opened(&other[0], "T-9", None).await.unwrap();
        assert!(
            store.claim_next(60_000).await.unwrap().is_none(),
            "nothing due"
        );
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.pending, stats.dead), (1, 1));
        let dead = store.dead_letters("t1", 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].outbox_id, claimed[1].outbox_id);
        assert_eq!(dead[0].last_error, "Internal: refused");
        assert!(
            store.dead_letters("t2", 10).await.unwrap().is_empty(),
            "per tenant"
        );
        assert!(!store
            .retry_dead_letter("t2", &dead[0].outbox_id)
            .await
            .unwrap());
        assert!(store
            .retry_dead_letter("t1", &dead[0].outbox_id)
            .await
            .unwrap());
        let again = store.claim_next(60_000).await.unwrap().expect("put back");
        assert_eq!(
            (again.outbox_id.as_str(), again.attempts),
            (dead[0].outbox_id.as_str(), 1)
        );
    }
}

#[tokio::test]
async fn concurrent_drainers_never_claim_the_same_entry() {
    for (_guard, db) in backends().await {
        let store = Arc::new(SqlConversationStore::new(db));
        for i in 0..40 {
            let mut turn = ticket_turn(&format!("c{i}"), "m1", false);
            turn.lease_ms = 0;
            store.commit_ticket_turn(turn).await.unwrap();
        }
        let drainers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut claimed = Vec::new();
                    while let Some(entry) = store.claim_next(60_000).await.unwrap() {
                        claimed.push(entry);
                    }
                    claimed
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for drainer in drainers {
            claimed.extend(drainer.await.unwrap().into_iter().map(|e| e.outbox_id));
        }
        let distinct: std::collections::HashSet<_> = claimed.iter().collect();
        assert_eq!(distinct.len(), claimed.len(), "an entry was claimed twice");
        assert_eq!(claimed.len(), 40, "every entry was claimed by someone");
    }
}

/// PostgreSQL ends its sessions with SQLSTATE 57P01 when it shuts down (and 57P03 while
/// it starts up): a failure the store reports UNAVAILABLE, to be waited out, not
/// INTERNAL, which an outbox would count against its row.
#[tokio::test]
async fn a_session_the_server_ends_is_unavailable() {
    use sqlx::Connection as _;
    let (_guard, url) = TestDb::postgres().await;
    let mut session = sqlx::PgConnection::connect(&url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut session)
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended);
    let error = sqlx::query("SELECT 1")
        .execute(&mut session)
        .await
        .unwrap_err();
    let said = match &error {
        sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
        _ => None,
    };
    assert_eq!(
        said.as_deref(),
        Some("57P01"),
        "the server said why: {error}"
    );
    let status = tonic::Status::from(StoreError::from(error));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A write that lost a race (a key taken meanwhile, a serialization failure or deadlock
/// on PostgreSQL, a busy database on SQLite) is a conflict, ABORTED: worth another
/// attempt. A write the database refuses for what it is (here a NOT NULL column left
/// empty) is INTERNAL, and would fail the same way however often it was tried.
#[tokio::test]
async fn a_lost_race_is_aborted_and_a_refused_write_internal() {
    use sqlx::{AnyConnection, Connection as _};
    sqlx::any::install_default_drivers();
    let status = |error: sqlx::Error| tonic::Status::from(StoreError::from(error)).code();
    async fn run(connection: &mut AnyConnection, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(connection).await.map(drop)
    }
    for (_guard, url) in [TestDb::sqlite(), TestDb::postgres().await] {
        let mut writer = AnyConnection::connect(&url).await.unwrap();
        for sql in [
            "CREATE TABLE races (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
            "INSERT INTO races VALUES (1, 1)",
        ] {
            run(&mut writer, sql).await.unwrap();
        }
        let taken = run(&mut writer, "INSERT INTO races VALUES (1, 2)").await;
        assert_eq!(
            status(taken.unwrap_err()),
            tonic::Code::Aborted,
            "{url}: a key taken meanwhile"
        );
        let empty = run(&mut writer, "INSERT INTO races VALUES (2, NULL)").await;
        assert_eq!(
            status(empty.unwrap_err()),
            tonic::Code::Internal,
            "{url}: NOT NULL left empty"
        );

        if url.starts_with("postgres") {
            for sqlstate in ["40001", "40P01"] {
                let sql = format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = '{sqlstate}'; END $$"
                );
                let lost = run(&mut writer, &sql).await;
                assert_eq!(
                    status(lost.unwrap_err()),
                    tonic::Code::Aborted,
                    "SQLSTATE {sqlstate}"
                );
            }
        } else {
            // another writer holds the write lock, and this one does not wait for it
            let mut waiting = AnyConnection::connect(&url).await.unwrap();
            run(&mut waiting, "PRAGMA busy_timeout = 0").await.unwrap();
            run(&mut writer, "BEGIN IMMEDIATE").await.unwrap();
            let busy = run(&mut waiting, "INSERT INTO races VALUES (3, 3)").await;
            assert_eq!(
                status(busy.unwrap_err()),
                tonic::Code::Aborted,
                "a busy database"
            );
        }
    }
}

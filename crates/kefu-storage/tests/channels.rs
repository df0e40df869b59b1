//! The channel service's tables on SQLite and on the real PostgreSQL: an inbound message
//! is taken once, its reply queued once and held by whoever queued it, a failure backs one
//! row off without holding up the others, a dead letter is listed as failed, and
//! following a conversation is claimed by one follower at a time and ends with the bot.
use kefu_storage::channels::{
    Direction, Handled, MessageStatus, NewChannelMessage, Received, SqlChannels,
};
use kefu_storage::{now_millis, Database};
use kefu_test_db::TestDb;

async fn backends() -> Vec<(TestDb, Database)> {
    let mut backends = Vec::new();
    for (guard, url) in [TestDb::sqlite(), TestDb::postgres().await] {
        backends.push((guard, Database::connect(&url).await.unwrap()));
    }
    backends
}

fn message(thread: &str, dedup_key: &str, role: &str) -> NewChannelMessage {
    NewChannelMessage {
        tenant_id: "demo".into(),
        channel: "webhook".into(),
        thread: thread.into(),
        dedup_key: dedup_key.into(),
        session_id: String::new(),
        role: role.into(),
        payload: "{}".into(),
    }
}

#[tokio::test]
async fn messages_are_taken_once_retried_alone_and_dead_lettered() {
    for (_guard, db) in backends().await {
        let store = SqlChannels::new(db);
        let Received::New(first) = store
            .receive(&message("c1", "m1", "customer"), "c1", 60_000)
            .await
            .unwrap()
        else {
            panic!("a new message is new");
        };
        assert!(matches!(
            store.receive(&message("c1", "m1", "customer"), "c1", 60_000).await.unwrap(),
            Received::Duplicate(stored) if stored.message_id == first.message_id
        ));
        // Held by its receiver: no drainer takes it during the lease.
        assert!(store
            .claim_next(Direction::In, 60_000)
            .await
            .unwrap()
            .is_none());

        let handled = Handled {
            session_id: "s1".into(),
            with_human: true,
            reply: Some(NewChannelMessage {
                session_id: "s1".into(),
                ..message("c1", "reply:m1", "bot")
            }),
            hold_ms: 60_000,
        };
        let reply = store
            .inbound_handled(&first, &handled)
            .await
            .unwrap()
            .expect("queued");
        assert_eq!(
            store.inbound_handled(&first, &handled).await.unwrap(),
            None,
            "queued twice"
        );
        assert!(
            store
                .claim_next(Direction::Out, 60_000)
                .await
                .unwrap()
                .is_none(),
            "held"
        );

        // A failed reply is tried again when due; another row is not held up by it.
        store
            .attempt_failed(&reply, "webhook answered 503", Some(now_millis() - 1))
            .await
            .unwrap();
        let Received::New(second) = store
            .receive(&message("c2", "m2", "customer"), "c2", 0)
            .await
            .unwrap()
        else {
            panic!("new");
        };
        let due_in = store.claim_next(Direction::In, 60_000).await.unwrap();
        assert_eq!(
            due_in.map(|m| m.message_id),
            Some(second.message_id.clone())
        );
        assert!(store
            .claim_next(Direction::In, 60_000)
            .await
            .unwrap()
            .is_none());
        let due_out = store
            .claim_next(Direction::Out, 60_000)
            .await
            .unwrap()
            .expect("the failed reply is due");
        assert_eq!(due_out.attempts, 2);
        store
            .attempt_failed(&due_out, "webhook answered 410", None)
            .await
            .unwrap();

        let listed = store.deliveries("demo", "s1", 10).await.unwrap();
        let statuses: Vec<(Direction, MessageStatus, &str)> = listed
            .iter()
            .map(|m| (m.direction, m.status, m.last_error.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                (Direction::In, MessageStatus::Done, ""),
                (Direction::Out, MessageStatus::Dead, "webhook answered 410"),
            ]
        );
        assert_eq!(
            store
                .session_channel("demo", "s1")
                .await
                .unwrap()
                .as_deref(),
            Some("webhook")
        );
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.pending_in, stats.pending_out, stats.dead), (1, 0, 1));

        // Following: one claimer at a time, and it ends when the session is the bot's.
        let claimed = store.claim_following(10, 60_000).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            (claimed[0].session_id.as_str(), claimed[0].last_event_id),
            ("s1", 0)
        );
        assert!(store.claim_following(10, 60_000).await.unwrap().is_empty());
        let agent = NewChannelMessage {
            session_id: "s1".into(),
            ..message("c1", "event:s1:1", "agent")
        };
        let queued = store
            .event_followed(&claimed[0], 1, Some(&agent), false, 60_000)
            .await
            .unwrap();
        assert!(queued.is_some());
        assert_eq!(
            store
                .event_followed(&claimed[0], 1, Some(&agent), false, 60_000)
                .await
                .unwrap(),
            None
        );
        assert!(store.renew_following(&claimed[0], 60_000).await.unwrap());
        store
            .event_followed(&claimed[0], 2, None, true, 60_000)
            .await
            .unwrap();
        assert!(!store.renew_following(&claimed[0], 60_000).await.unwrap());
        let conversation = store
            .conversation("demo", "webhook", "c1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (conversation.following, conversation.last_event_id),
            (false, 2)
        );
    }
}

#[tokio::test]
async fn a_mail_finds_the_thread_of_the_message_it_answers_with_its_customer() {
    for (_guard, db) in backends().await {
        let store = SqlChannels::new(db);
        let mail = |thread: &str, id: &str| NewChannelMessage {
            channel: "email".into(),
            ..message(thread, id, "customer")
        };
        let Received::New(first) = store
            .receive(
                &mail("root@c.example", "root@c.example"),
                "email:ana@c.example",
                0,
            )
            .await
            .unwrap()
        else {
            panic!("a new mail is new");
        };
        let handled = Handled {
            session_id: "s1".into(),
            with_human: false,
            reply: Some(NewChannelMessage {
                channel: "email".into(),
                session_id: "s1".into(),
                ..message("root@c.example", "reply:root@c.example", "bot")
            }),
            hold_ms: 0,
        };
        let reply = store
            .inbound_handled(&first, &handled)
            .await
            .unwrap()
            .unwrap();
        let found = |keys: &[&str], rows: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            let store = store.clone();
            async move {
                store
                    .thread_of("demo", "email", &keys, &rows)
                    .await
                    .unwrap()
            }
        };
        let ana = Some((
            "root@c.example".to_owned(),
            "email:ana@c.example".to_owned(),
        ));
        // By the customer's own Message-ID, or by the row id in our reply's.
        assert_eq!(found(&["unknown@x", "root@c.example"], &[]).await, ana);
        assert_eq!(
            found(&["unknown@x"], &[reply.message_id.as_str()]).await,
            ana
        );
        assert_eq!(found(&["unknown@x"], &["0000"]).await, None);
        assert_eq!(found(&[], &[]).await, None);
        // Another tenant or channel never matches.
        assert_eq!(
            store
                .thread_of("other", "email", &["root@c.example".into()], &[])
                .await
                .unwrap(),
            None
        );
        let latest = store
            .latest_inbound("demo", "email", "root@c.example")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(latest.message_id, first.message_id);
    }
}

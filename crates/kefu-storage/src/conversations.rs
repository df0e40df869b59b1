//! The human side of a conversation: who handles each session (the bot, the queue or an
//! agent, with the one open ticket), the events a customer is streamed (agents' replies
//! and handler changes, numbered from 1 within a session), and satisfaction ratings.
//!
//! Every change is written before anyone is told of it: an event is stored in the same
//! transaction as the change it reports, then announced on the [`EventBus`], and a
//! reader catches up from the table, so a lost announcement delays an event but never
//! loses it.
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::broadcast;

use crate::{Database, StoreError, StoreResult};

/// Handler numbers are the kefu.v1.Handler enum values.
pub const HANDLER_BOT: i32 = 1;
pub const HANDLER_QUEUED: i32 = 2;
pub const HANDLER_AGENT: i32 = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct HandlerRecord {
    pub tenant_id: String,
    pub session_id: String,
    pub customer_id: String,
    pub handler: i32,
    /// The open ticket while the session is not with the bot.
    pub ticket_id: String,
    pub updated_at: i64,
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    AgentReply { author: String, text: String },
    HandlerChange { handler: i32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub tenant_id: String,
    pub session_id: String,
    pub event_id: i64,
    pub ticket_id: String,
    pub kind: EventKind,
    pub at: i64,
}

/// A move of a session between handlers.
#[derive(Clone, Debug)]
pub enum HandlerMove {
    /// The bot hands the customer off: the session is queued with this ticket, unless
    /// it already waits for or is with a human.
    HandOff {
        customer_id: String,
        ticket_id: String,
    },
    /// An agent took the ticket: the session goes to the agent if this is its ticket.
    Take { ticket_id: String },
    /// The ticket was resolved or closed: the session returns to the bot if this was its ticket.
    Release { ticket_id: String },
}

/// What a [`HandlerMove`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum HandlerOutcome {
    Moved(EventRecord),
    /// Nothing to do: the session is already there (a retry), or not on this ticket.
    Unchanged(Option<HandlerRecord>),
}

/// The handler a move leads to from the current state, or None when it does not apply.
/// Pure: the rules of who handles a session, readable and tested alone.
pub fn next_handler(
    current: Option<&HandlerRecord>,
    change: &HandlerMove,
) -> Option<(i32, String)> {
    let current_handler = current.map(|c| c.handler).unwrap_or(HANDLER_BOT);
    let current_ticket = current.map(|c| c.ticket_id.as_str()).unwrap_or("");
    match change {
        HandlerMove::HandOff { ticket_id, .. } => {
            (current_handler == HANDLER_BOT).then(|| (HANDLER_QUEUED, ticket_id.clone()))
        }
        HandlerMove::Take { ticket_id } => (current_ticket == ticket_id
            && current_handler == HANDLER_QUEUED)
            .then(|| (HANDLER_AGENT, ticket_id.clone())),
        HandlerMove::Release { ticket_id } => (current_ticket == ticket_id
            && current_handler != HANDLER_BOT)
            .then(|| (HANDLER_BOT, String::new())),
    }
}

/// One entry of a session as people read it.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEntry {
    /// A customer's message, with the bot's reply (empty while a human handles it).
    Customer(crate::TurnRecord),
    /// An agent's reply.
    Agent {
        author: String,
        text: String,
        at: i64,
    },
}

/// The session in the order things happened: the customer's turns and the agents'
/// replies (handler changes are not part of what was said).
pub fn merge_session(turns: Vec<crate::TurnRecord>, events: Vec<EventRecord>) -> Vec<SessionEntry> {
    let mut entries: Vec<(i64, SessionEntry)> = turns
        .into_iter()
        .map(|turn| (turn.created_at, SessionEntry::Customer(turn)))
        .collect();
    entries.extend(events.into_iter().filter_map(|event| match event.kind {
        EventKind::AgentReply { author, text } => Some((
            event.at,
            SessionEntry::Agent {
                author,
                text,
                at: event.at,
            },
        )),
        EventKind::HandlerChange { .. } => None,
    }));
    // Stable: within one millisecond, turns stay before agent replies and in their order.
    entries.sort_by_key(|(at, _)| *at);
    entries.into_iter().map(|(_, entry)| entry).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct RatingRecord {
    pub tenant_id: String,
    pub ticket_id: String,
    pub customer_id: String,
    pub score: i32,
    pub comment: String,
    pub at: i64,
}

#[async_trait]
pub trait ConversationStore: Send + Sync {
    async fn handler(
        &self,
        tenant_id: &str,
        session_id: &str,
    ) -> StoreResult<Option<HandlerRecord>>;
    /// Applies a move and stores its handler_change event in one transaction.
    async fn move_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        change: HandlerMove,
    ) -> StoreResult<HandlerOutcome>;
    /// Stores an agent's reply as an event of the session; a retry with the same
    /// `request_id` returns the event stored the first time.
    async fn append_agent_reply(
        &self,
        tenant_id: &str,
        session_id: &str,
        ticket_id: &str,
        author: &str,
        text: &str,
        request_id: Option<&str>,
    ) -> StoreResult<EventRecord>;
    /// Events after `after_event_id`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        tenant_id: &str,
        session_id: &str,
        after_event_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>>;
    /// Stores a rating; false when the ticket was already rated.
    async fn rate(&self, rating: RatingRecord) -> StoreResult<bool>;
}

pub struct SqlConversationStore {
    db: Database,
    bus: EventBus,
}

impl SqlConversationStore {
    pub fn new(db: Database) -> Self {
        let bus = EventBus::for_database(&db);
        Self { db, bus }
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }
}

pub(crate) const HANDLER_COLUMNS: &str =
    "tenant_id, session_id, customer_id, handler, ticket_id, updated_at, version";
const EVENT_COLUMNS: &str =
    "tenant_id, session_id, event_id, kind, ticket_id, handler, author, text, at";
const KIND_AGENT_REPLY: &str = "agent_reply";
const KIND_HANDLER_CHANGE: &str = "handler_change";
/// Writers racing for a session's next event number (or its handler row) retry.
const WRITE_ATTEMPTS: usize = 8;

pub(crate) fn handler_from_row(row: &AnyRow) -> Result<HandlerRecord, sqlx::Error> {
    Ok(HandlerRecord {
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        customer_id: row.try_get("customer_id")?,
        handler: row.try_get::<i64, _>("handler")? as i32,
        ticket_id: row.try_get("ticket_id")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let kind = if kind == KIND_AGENT_REPLY {
        EventKind::AgentReply {
            author: row.try_get("author")?,
            text: row.try_get("text")?,
        }
    } else {
        EventKind::HandlerChange {
            handler: row.try_get::<i64, _>("handler")? as i32,
        }
    };
    Ok(EventRecord {
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        event_id: row.try_get("event_id")?,
        ticket_id: row.try_get("ticket_id")?,
        kind,
        at: row.try_get("at")?,
    })
}

pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

/// Inserts an event at the session's next number inside `tx`; a concurrent writer that
/// took the number first makes the insert fail, and the caller retries.
pub(crate) async fn insert_event(
    tx: &mut Tx<'_>,
    mut event: EventRecord,
    request_id: Option<&str>,
) -> StoreResult<EventRecord> {
    let next: i64 = sqlx::query("SELECT COALESCE(MAX(event_id), 0) + 1 AS next FROM session_events WHERE tenant_id = $1 AND session_id = $2")
        .bind(event.tenant_id.as_str())
        .bind(event.session_id.as_str())
        .fetch_one(&mut **tx)
        .await?
        .try_get("next")?;
    event.event_id = next;
    let (kind, handler, author, text) = match &event.kind {
        EventKind::AgentReply { author, text } => {
            (KIND_AGENT_REPLY, 0, author.as_str(), text.as_str())
        }
        EventKind::HandlerChange { handler } => (KIND_HANDLER_CHANGE, *handler, "", ""),
    };
    sqlx::query(&format!(
        "INSERT INTO session_events ({EVENT_COLUMNS}, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(event.tenant_id.as_str())
    .bind(event.session_id.as_str())
    .bind(event.event_id)
    .bind(kind)
    .bind(event.ticket_id.as_str())
    .bind(handler as i64)
    .bind(author)
    .bind(text)
    .bind(event.at)
    .bind(request_id.map(str::to_owned))
    .execute(&mut **tx)
    .await?;
    Ok(event)
}

/// Applies a move inside `tx` and stores its handler_change event there; the caller
/// commits. A lost race (the handler row changed meanwhile) is an error to retry.
pub(crate) async fn apply_move(
    tx: &mut Tx<'_>,
    tenant_id: &str,
    session_id: &str,
    change: &HandlerMove,
) -> StoreResult<HandlerOutcome> {
    let current = sqlx::query(&format!(
        "SELECT {HANDLER_COLUMNS} FROM session_handlers WHERE tenant_id = $1 AND session_id = $2"
    ))
    .bind(tenant_id)
    .bind(session_id)
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(handler_from_row)
    .transpose()?;
    let Some((handler, ticket_id)) = next_handler(current.as_ref(), change) else {
        return Ok(HandlerOutcome::Unchanged(current));
    };
    let now = crate::now_millis();
    let changed = match (&current, change) {
            (Some(current), _) => sqlx::query(
                "UPDATE session_handlers SET handler = $1, ticket_id = $2, updated_at = $3, version = version + 1 WHERE tenant_id = $4 AND session_id = $5 AND version = $6",
            )
            .bind(handler as i64)
            .bind(ticket_id.as_str())
            .bind(now)
            .bind(tenant_id)
            .bind(session_id)
            .bind(current.version)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            (None, HandlerMove::HandOff { customer_id, .. }) => sqlx::query(&format!(
                "INSERT INTO session_handlers ({HANDLER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, 0)"
            ))
            .bind(tenant_id)
            .bind(session_id)
            .bind(customer_id.as_str())
            .bind(handler as i64)
            .bind(ticket_id.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            // Only a hand-off starts a handler row; next_handler refuses the others.
            (None, _) => 0,
        };
    if changed == 0 {
        return Err(StoreError::Conflict(
            "the session's handler changed concurrently".into(),
        ));
    }
    let event_ticket = match change {
        HandlerMove::HandOff { ticket_id, .. }
        | HandlerMove::Take { ticket_id }
        | HandlerMove::Release { ticket_id } => ticket_id.clone(),
    };
    let event = insert_event(
        tx,
        EventRecord {
            tenant_id: tenant_id.to_owned(),
            session_id: session_id.to_owned(),
            event_id: 0,
            ticket_id: event_ticket,
            kind: EventKind::HandlerChange { handler },
            at: now,
        },
        None,
    )
    .await?;
    Ok(HandlerOutcome::Moved(event))
}

impl SqlConversationStore {
    /// Commits `tx` after asking PostgreSQL to announce the session (delivered on commit).
    pub(crate) async fn commit_and_announce(
        &self,
        mut tx: Tx<'_>,
        tenant_id: &str,
        session_id: &str,
    ) -> StoreResult<()> {
        let key = EventBus::key(tenant_id, session_id);
        if self.db.postgres_url().is_some() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(PG_CHANNEL)
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.bus.announce_local(key);
        Ok(())
    }

    async fn try_move(
        &self,
        tenant_id: &str,
        session_id: &str,
        change: &HandlerMove,
    ) -> StoreResult<HandlerOutcome> {
        let mut tx = self.db.begin_write().await?;
        let outcome = apply_move(&mut tx, tenant_id, session_id, change).await?;
        if matches!(outcome, HandlerOutcome::Moved(_)) {
            self.commit_and_announce(tx, tenant_id, session_id).await?;
        }
        Ok(outcome)
    }

    async fn find_reply(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        request_id: &str,
    ) -> StoreResult<Option<EventRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM session_events WHERE tenant_id = $1 AND ticket_id = $2 AND request_id = $3"
        ))
        .bind(tenant_id)
        .bind(ticket_id)
        .bind(request_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(event_from_row).transpose()?)
    }
}

/// Runs a write that may lose a race again, a bounded number of times.
pub(crate) async fn with_race_retries<T, F, Fut>(mut write: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(StoreError::Conflict(_)) if attempt < WRITE_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
            }
            result => return result,
        }
    }
}

#[async_trait]
impl ConversationStore for SqlConversationStore {
    async fn handler(
        &self,
        tenant_id: &str,
        session_id: &str,
    ) -> StoreResult<Option<HandlerRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {HANDLER_COLUMNS} FROM session_handlers WHERE tenant_id = $1 AND session_id = $2"
        ))
        .bind(tenant_id)
        .bind(session_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(handler_from_row).transpose()?)
    }

    async fn move_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        change: HandlerMove,
    ) -> StoreResult<HandlerOutcome> {
        with_race_retries(|| self.try_move(tenant_id, session_id, &change)).await
    }

    async fn append_agent_reply(
        &self,
        tenant_id: &str,
        session_id: &str,
        ticket_id: &str,
        author: &str,
        text: &str,
        request_id: Option<&str>,
    ) -> StoreResult<EventRecord> {
        with_race_retries(|| async {
            if let Some(request_id) = request_id {
                if let Some(event) = self.find_reply(tenant_id, ticket_id, request_id).await? {
                    return Ok(event);
                }
            }
            let mut tx = self.db.begin_write().await?;
            let event = insert_event(
                &mut tx,
                EventRecord {
                    tenant_id: tenant_id.to_owned(),
                    session_id: session_id.to_owned(),
                    event_id: 0,
                    ticket_id: ticket_id.to_owned(),
                    kind: EventKind::AgentReply {
                        author: author.to_owned(),
                        text: text.to_owned(),
                    },
                    at: crate::now_millis(),
                },
                request_id,
            )
            .await?;
            self.commit_and_announce(tx, tenant_id, session_id).await?;
            Ok(event)
        })
        .await
    }

    async fn events_after(
        &self,
        tenant_id: &str,
        session_id: &str,
        after_event_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM session_events WHERE tenant_id = $1 AND session_id = $2 AND event_id > $3 ORDER BY event_id LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(session_id)
        .bind(after_event_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(event_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    async fn rate(&self, rating: RatingRecord) -> StoreResult<bool> {
        let inserted = sqlx::query(
            "INSERT INTO conversation_ratings (tenant_id, ticket_id, customer_id, score, comment, at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(rating.tenant_id.as_str())
        .bind(rating.ticket_id.as_str())
        .bind(rating.customer_id.as_str())
        .bind(rating.score as i64)
        .bind(rating.comment.as_str())
        .bind(rating.at)
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

const PG_CHANNEL: &str = "kefu_session_events";
/// How many announcements a slow stream may fall behind before it re-reads the table.
const BUS_CAPACITY: usize = 4096;

/// Tells the streams of this process that a session has new events. Announcements are
/// wake-ups only (the key "tenant/session"): the table is the record. In one process
/// (the embedded default) they travel in memory; with PostgreSQL, every process also
/// listens for NOTIFY, so a reply written through one replica wakes a stream on another.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<String>,
}

/// One bus per process, shared by the services `kefu up` runs together.
static LOCAL_BUS: OnceLock<broadcast::Sender<String>> = OnceLock::new();
/// PostgreSQL databases this process already listens to.
static LISTENING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl EventBus {
    pub fn for_database(db: &Database) -> Self {
        let sender = LOCAL_BUS
            .get_or_init(|| broadcast::channel(BUS_CAPACITY).0)
            .clone();
        if let Some(url) = db.postgres_url() {
            let mut listening = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
            if !listening.iter().any(|u| u == url) {
                listening.push(url.to_owned());
                tokio::spawn(listen(url.to_owned(), sender.clone()));
            }
        }
        Self { sender }
    }

    pub fn key(tenant_id: &str, session_id: &str) -> String {
        format!("{tenant_id}/{session_id}")
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }

    fn announce_local(&self, key: String) {
        // No receiver is fine: nobody is streaming this session in this process.
        let _ = self.sender.send(key);
    }
}

/// Forwards PostgreSQL notifications into the process's bus, reconnecting after errors.
async fn listen(url: String, sender: broadcast::Sender<String>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen(PG_CHANNEL).await {
                Ok(()) => loop {
                    match listener.recv().await {
                        Ok(notification) => {
                            let _ = sender.send(notification.payload().to_owned());
                        }
                        Err(error) => {
                            tracing::warn!(%error, "event notifications interrupted; reconnecting");
                            break;
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot LISTEN for session events"),
            },
            Err(error) => tracing::warn!(%error, "cannot connect to listen for session events"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(handler: i32, ticket: &str) -> HandlerRecord {
        HandlerRecord {
            tenant_id: "t".into(),
            session_id: "s".into(),
            customer_id: "c".into(),
            handler,
            ticket_id: ticket.into(),
            updated_at: 0,
            version: 0,
        }
    }

    #[test]
    fn a_session_moves_bot_queue_agent_bot() {
        let hand_off = HandlerMove::HandOff {
            customer_id: "c".into(),
            ticket_id: "T1".into(),
        };
        assert_eq!(
            next_handler(None, &hand_off),
            Some((HANDLER_QUEUED, "T1".into()))
        );
        assert_eq!(
            next_handler(Some(&at(HANDLER_BOT, "")), &hand_off),
            Some((HANDLER_QUEUED, "T1".into()))
        );
        // One ticket per hand-off: a queued session is not handed off again.
        assert_eq!(
            next_handler(Some(&at(HANDLER_QUEUED, "T0")), &hand_off),
            None
        );
        let take = HandlerMove::Take {
            ticket_id: "T1".into(),
        };
        assert_eq!(
            next_handler(Some(&at(HANDLER_QUEUED, "T1")), &take),
            Some((HANDLER_AGENT, "T1".into()))
        );
        assert_eq!(
            next_handler(Some(&at(HANDLER_QUEUED, "T2")), &take),
            None,
            "another ticket"
        );
        assert_eq!(
            next_handler(Some(&at(HANDLER_AGENT, "T1")), &take),
            None,
            "already taken"
        );
        assert_eq!(next_handler(None, &take), None);
        let release = HandlerMove::Release {
            ticket_id: "T1".into(),
        };
        assert_eq!(
            next_handler(Some(&at(HANDLER_AGENT, "T1")), &release),
            Some((HANDLER_BOT, String::new()))
        );
        assert_eq!(
            next_handler(Some(&at(HANDLER_QUEUED, "T1")), &release),
            Some((HANDLER_BOT, String::new()))
        );
        assert_eq!(next_handler(Some(&at(HANDLER_BOT, "")), &release), None);
    }

    #[tokio::test]
    async fn only_a_conflict_is_tried_again() {
        let attempts = |error: fn() -> StoreError| async move {
            let tried = std::cell::Cell::new(0);
            let result: StoreResult<()> = with_race_retries(|| {
                tried.set(tried.get() + 1);
                std::future::ready(Err(error()))
            })
            .await;
            assert!(result.is_err());
            tried.get()
        };
        let conflict = || StoreError::Conflict("the row changed".into());
        let refused = || StoreError::Other(sqlx::Error::RowNotFound);
        assert_eq!(attempts(conflict).await, WRITE_ATTEMPTS);
        assert_eq!(attempts(refused).await, 1);
    }
}

//! Session history: every turn of a conversation, with the reply that was given, so a
//! follow-up sees the earlier turns and a retried message gets its first reply back.
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Database, StoreResult};

#[derive(Clone, Debug, PartialEq)]
pub struct TurnRecord {
    pub tenant_id: String,
    pub session_id: String,
    /// Position in the session, from 1; assigned by the store.
    pub seq: i64,
    pub message_id: String,
    pub customer_id: String,
    pub text: String,
    pub reply: String,
    pub intent: String,
    pub sentiment: i32,
    pub escalated: bool,
    pub ticket_id: String,
    /// The encoded response given for this turn, replayed on a retry.
    pub response: Vec<u8>,
    pub created_at: i64,
    /// The channel and language of the customer's message (`Channel`, `Language`).
    pub channel: i32,
    pub language: i32,
    /// Why the bot left a question unanswered; `Unanswered::None` when it did not.
    pub unanswered: Unanswered,
}

/// Why the bot left a customer's question unanswered, as reports and knowledge gaps
/// read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unanswered {
    /// Answered, or not the bot's to answer (a hand-off for a complaint, say).
    #[default]
    None,
    /// Nothing in the knowledge base answered it.
    Miss,
    /// Handed off because nothing answered it.
    NoAnswer,
    /// The customer said the previous answer did not help: the question is the
    /// previous turn's.
    NotHelped,
}

impl Unanswered {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Miss => "miss",
            Self::NoAnswer => "no_answer",
            Self::NotHelped => "not_helped",
        }
    }

    pub fn parse(stored: &str) -> Self {
        match stored {
            "miss" => Self::Miss,
            "no_answer" => Self::NoAnswer,
            "not_helped" => Self::NotHelped,
            _ => Self::None,
        }
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The last `limit` turns of a session, oldest first.
    async fn recent_turns(
        &self,
        tenant_id: &str,
        session_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<TurnRecord>>;
    /// The turn a customer's message id was stored under (ids are the customer's own).
    async fn find_by_message_id(
        &self,
        tenant_id: &str,
        customer_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<TurnRecord>>;
    /// Appends a turn at the end of its session; returns the stored turn, or the turn
    /// already stored under the same message id.
    async fn append(&self, turn: TurnRecord) -> StoreResult<TurnRecord>;
}

pub struct SqlSessionStore {
    db: Database,
}

impl SqlSessionStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

const TURN_COLUMNS: &str = "tenant_id, session_id, seq, message_id, customer_id, text, reply, intent, sentiment, escalated, ticket_id, response, created_at, channel, language, unanswered";

fn turn_from_row(row: &AnyRow) -> Result<TurnRecord, sqlx::Error> {
    Ok(TurnRecord {
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        seq: row.try_get("seq")?,
        message_id: row.try_get("message_id")?,
        customer_id: row.try_get("customer_id")?,
        text: row.try_get("text")?,
        reply: row.try_get("reply")?,
        intent: row.try_get("intent")?,
        sentiment: row.try_get::<i64, _>("sentiment")? as i32,
        escalated: row.try_get::<i64, _>("escalated")? != 0,
        ticket_id: row.try_get("ticket_id")?,
        response: row.try_get("response")?,
        created_at: row.try_get("created_at")?,
        channel: row.try_get::<i64, _>("channel")? as i32,
        language: row.try_get::<i64, _>("language")? as i32,
        unanswered: Unanswered::parse(row.try_get("unanswered")?),
    })
}

/// Inserts a turn at the end of its session and counts it in its conversation (the
/// caller's transaction makes the two one); returns its position. The position is taken
/// in the insert itself; a concurrent insert that took it first, or a message id stored
/// before, is a unique violation.
pub(crate) async fn insert_turn(
    connection: &mut sqlx::AnyConnection,
    turn: &TurnRecord,
) -> Result<i64, sqlx::Error> {
    let seq = sqlx::query(&format!(
        "INSERT INTO session_turns ({TURN_COLUMNS}) SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 FROM session_turns WHERE tenant_id = $1 AND session_id = $2 RETURNING seq"
    ))
    .bind(turn.tenant_id.as_str())
    .bind(turn.session_id.as_str())
    .bind(turn.message_id.as_str())
    .bind(turn.customer_id.as_str())
    .bind(turn.text.as_str())
    .bind(turn.reply.as_str())
    .bind(turn.intent.as_str())
    .bind(turn.sentiment as i64)
    .bind(turn.escalated as i64)
    .bind(turn.ticket_id.as_str())
    .bind(turn.response.clone())
    .bind(turn.created_at)
    .bind(turn.channel as i64)
    .bind(turn.language as i64)
    .bind(turn.unanswered.as_str())
    .fetch_one(&mut *connection)
    .await?
    .try_get("seq")?;
    sqlx::query(COUNT_IN_CONVERSATION)
        .bind(turn.tenant_id.as_str())
        .bind(turn.session_id.as_str())
        .bind(turn.customer_id.as_str())
        .bind(turn.created_at)
        .bind(turn.channel as i64)
        .bind(turn.language as i64)
        .bind(turn.escalated as i64)
        .bind((turn.unanswered != Unanswered::None) as i64)
        .execute(&mut *connection)
        .await?;
    Ok(seq)
}

/// A turn in its conversation's row: the first one opens it with its channel and
/// language, each one moves its last time, a hand-off or an unanswered question stays.
const COUNT_IN_CONVERSATION: &str = "
INSERT INTO conversations (tenant_id, session_id, customer_id, started_at, last_at, channel,
    language, turns, handed_off, unanswered)
VALUES ($1, $2, $3, $4, $4, $5, $6, 1, $7, $8)
ON CONFLICT (tenant_id, session_id) DO UPDATE SET
    last_at = CASE WHEN excluded.last_at > conversations.last_at THEN excluded.last_at ELSE conversations.last_at END,
    turns = conversations.turns + 1,
    handed_off = CASE WHEN excluded.handed_off > conversations.handed_off THEN excluded.handed_off ELSE conversations.handed_off END,
    unanswered = conversations.unanswered + excluded.unanswered";

/// The turn stored under a customer's message id.
pub(crate) async fn turn_by_message_id<'e, E>(
    executor: E,
    tenant_id: &str,
    customer_id: &str,
    message_id: &str,
) -> Result<Option<TurnRecord>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {TURN_COLUMNS} FROM session_turns WHERE tenant_id = $1 AND customer_id = $2 AND message_id = $3"
    ))
    .bind(tenant_id)
    .bind(customer_id)
    .bind(message_id)
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(turn_from_row)
    .transpose()
}

/// Concurrent appends to one session race for the next position; the loser retries.
const APPEND_ATTEMPTS: usize = 5;

#[async_trait]
impl SessionStore for SqlSessionStore {
    async fn recent_turns(
        &self,
        tenant_id: &str,
        session_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<TurnRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TURN_COLUMNS} FROM session_turns WHERE tenant_id = $1 AND session_id = $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(tenant_id)
        .bind(session_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut turns = rows
            .iter()
            .map(turn_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        turns.reverse();
        Ok(turns)
    }

    async fn find_by_message_id(
        &self,
        tenant_id: &str,
        customer_id: &str,
        message_id: &str,
    ) -> StoreResult<Option<TurnRecord>> {
        Ok(turn_by_message_id(self.db.pool(), tenant_id, customer_id, message_id).await?)
    }

    async fn append(&self, mut turn: TurnRecord) -> StoreResult<TurnRecord> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.db.begin_write().await?;
            let inserted = match insert_turn(&mut tx, &turn).await {
                Ok(seq) => tx.commit().await.map(|()| seq),
                failed => failed,
            };
            match inserted {
                Ok(seq) => {
                    turn.seq = seq;
                    return Ok(turn);
                }
                Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                    if let Some(existing) = self
                        .find_by_message_id(&turn.tenant_id, &turn.customer_id, &turn.message_id)
                        .await?
                    {
                        return Ok(existing);
                    }
                    if attempt >= APPEND_ATTEMPTS {
                        return Err(sqlx::Error::Database(error).into());
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

//! The channel service's tables: the conversations on outside channels (which session
//! each continues, whether a human has it and how far its events were followed) and the
//! channel messages in both directions. An inbound message is stored before the channel
//! hears it arrived; the reply it gets is queued in the same transaction that marks it
//! handled; an agent's reply in the same transaction that advances the followed event.
//! Claims skip each other's rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one
//! writer at a time), a failure backs one row off, and a row that keeps failing becomes a
//! dead letter, so one bad message never holds up the others.
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::conversations::{with_race_retries, Tx};
use crate::{now_millis, Database, StoreResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageStatus {
    Pending,
    Done,
    Dead,
}

impl MessageStatus {
    fn parse(value: &str) -> Self {
        match value {
            "done" => Self::Done,
            "dead" => Self::Dead,
            _ => Self::Pending,
        }
    }
}

/// A message to store: inbound from a customer, or a reply to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChannelMessage {
    pub tenant_id: String,
    /// 'webhook' or 'wechat'.
    pub channel: String,
    /// The channel's conversation key (the webhook's customer, the WeChat OpenID).
    pub thread: String,
    /// Inbound: the channel's message id. Outbound: what makes it one (see the migration).
    pub dedup_key: String,
    pub session_id: String,
    /// 'customer', 'bot' or 'agent'.
    pub role: String,
    /// JSON: what is handled or sent.
    pub payload: String,
}

/// A stored channel message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelMessage {
    pub message_id: String,
    pub direction: Direction,
    pub tenant_id: String,
    pub channel: String,
    pub thread: String,
    pub dedup_key: String,
    pub session_id: String,
    pub role: String,
    pub payload: String,
    pub status: MessageStatus,
    /// Attempts so far, counting the one under way for a claimed message.
    pub attempts: i32,
    pub last_error: String,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

/// What storing an inbound message found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// New: stored and held by the caller for its lease (its first attempt).
    New(ChannelMessage),
    /// The channel sent it before: the stored one, unchanged.
    Duplicate(ChannelMessage),
}

/// A conversation on an outside channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConversation {
    pub tenant_id: String,
    pub channel: String,
    pub thread: String,
    pub customer_id: String,
    pub session_id: String,
    pub following: bool,
    pub last_event_id: i64,
}

/// What the gateway made of an inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub session_id: String,
    /// A human has the session after it: follow its events for the agents' replies.
    pub with_human: bool,
    /// The bot's reply to deliver (none when it stayed silent).
    pub reply: Option<NewChannelMessage>,
    /// How long the caller holds the queued reply to deliver it itself (its first attempt).
    pub hold_ms: i64,
}

/// Counts for the metrics and alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub pending_in: i64,
    pub pending_out: i64,
    pub dead: i64,
    pub oldest_pending_at: Option<i64>,
}

const MESSAGE_COLUMNS: &str = "message_id, direction, tenant_id, channel, thread, dedup_key, session_id, role, payload, status, attempts, last_error, created_at, done_at";
const CONVERSATION_COLUMNS: &str =
    "tenant_id, channel, thread, customer_id, session_id, following, last_event_id";

fn message_from_row(row: &AnyRow) -> Result<ChannelMessage, sqlx::Error> {
    let direction: String = row.try_get("direction")?;
    Ok(ChannelMessage {
        message_id: row.try_get("message_id")?,
        direction: if direction == "in" {
            Direction::In
        } else {
            Direction::Out
        },
        tenant_id: row.try_get("tenant_id")?,
        channel: row.try_get("channel")?,
        thread: row.try_get("thread")?,
        dedup_key: row.try_get("dedup_key")?,
        session_id: row.try_get("session_id")?,
        role: row.try_get("role")?,
        payload: row.try_get("payload")?,
        status: MessageStatus::parse(&row.try_get::<String, _>("status")?),
        attempts: row.try_get::<i64, _>("attempts")? as i32,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        done_at: row.try_get("done_at")?,
    })
}

fn conversation_from_row(row: &AnyRow) -> Result<ChannelConversation, sqlx::Error> {
    Ok(ChannelConversation {
        tenant_id: row.try_get("tenant_id")?,
        channel: row.try_get("channel")?,
        thread: row.try_get("thread")?,
        customer_id: row.try_get("customer_id")?,
        session_id: row.try_get("session_id")?,
        following: row.try_get::<i64, _>("following")? != 0,
        last_event_id: row.try_get("last_event_id")?,
    })
}

#[derive(Clone)]
pub struct SqlChannels {
    db: Database,
}

impl SqlChannels {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores an inbound message from `customer_id` (creating its conversation), held by
    /// the caller for `lease_ms`; a message the channel sent before is returned as it is.
    pub async fn receive(
        &self,
        message: &NewChannelMessage,
        customer_id: &str,
        lease_ms: i64,
    ) -> StoreResult<Received> {
        with_race_retries(|| async {
            let now = now_millis();
            let mut tx = self.db.begin_write().await?;
            if let Some(existing) = find(&mut tx, message, Direction::In).await? {
                return Ok(Received::Duplicate(existing));
            }
            sqlx::query("INSERT INTO channel_conversations (tenant_id, channel, thread, customer_id, updated_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, channel, thread) DO NOTHING")
                .bind(message.tenant_id.as_str())
                .bind(message.channel.as_str())
                .bind(message.thread.as_str())
                .bind(customer_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let stored = insert(&mut tx, message, Direction::In, now, now + lease_ms, 1).await?;
            tx.commit().await?;
            Ok(Received::New(stored))
        })
        .await
    }

    /// The thread, and its customer, of the newest message on `channel` whose own id is
    /// one of `dedup_keys` or whose row id is one of `message_ids`.
    pub async fn thread_of(
        &self,
        tenant_id: &str,
        channel: &str,
        dedup_keys: &[String],
        message_ids: &[String],
    ) -> StoreResult<Option<(String, String)>> {
        if dedup_keys.is_empty() && message_ids.is_empty() {
            return Ok(None);
        }
        let placeholders = |from: usize, count: usize| {
            let list: Vec<String> = (from..from + count).map(|n| format!("${n}")).collect();
            if list.is_empty() {
                "NULL".to_owned()
            } else {
                list.join(", ")
            }
        };
        let sql = format!(
            "SELECT m.thread, c.customer_id FROM channel_messages m JOIN channel_conversations c ON c.tenant_id = m.tenant_id AND c.channel = m.channel AND c.thread = m.thread WHERE m.tenant_id = $1 AND m.channel = $2 AND (m.dedup_key IN ({}) OR m.message_id IN ({})) ORDER BY m.created_at DESC LIMIT 1",
            placeholders(3, dedup_keys.len()),
            placeholders(3 + dedup_keys.len(), message_ids.len()),
        );
        let mut query = sqlx::query(&sql).bind(tenant_id).bind(channel);
        for id in dedup_keys.iter().chain(message_ids) {
            query = query.bind(id.as_str());
        }
        let row = query.fetch_optional(self.db.pool()).await?;
        Ok(row
            .map(|row| Ok::<_, sqlx::Error>((row.try_get("thread")?, row.try_get("customer_id")?)))
            .transpose()?)
    }

    /// The newest message the customer sent in a thread.
    pub async fn latest_inbound(
        &self,
        tenant_id: &str,
        channel: &str,
        thread: &str,
    ) -> StoreResult<Option<ChannelMessage>> {
        let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE tenant_id = $1 AND channel = $2 AND thread = $3 AND direction = 'in' ORDER BY created_at DESC LIMIT 1"))
            .bind(tenant_id)
            .bind(channel)
            .bind(thread)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    pub async fn conversation(
        &self,
        tenant_id: &str,
        channel: &str,
        thread: &str,
    ) -> StoreResult<Option<ChannelConversation>> {
        let row = sqlx::query(&format!("SELECT {CONVERSATION_COLUMNS} FROM channel_conversations WHERE tenant_id = $1 AND channel = $2 AND thread = $3"))
            .bind(tenant_id)
            .bind(channel)
            .bind(thread)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(conversation_from_row).transpose()?)
    }

    /// Claims the message of `direction` due first for `lease_ms`, counting an attempt
    /// on it; rows another worker holds are skipped, not waited for. One at a time, so
    /// that a lease covers one attempt (see `TicketOutbox::claim_next`).
    pub async fn claim_next(
        &self,
        direction: Direction,
        lease_ms: i64,
    ) -> StoreResult<Option<ChannelMessage>> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(&format!(
            "UPDATE channel_messages SET attempts = attempts + 1, claimed_until = $1 WHERE message_id IN (SELECT message_id FROM channel_messages WHERE status = 'pending' AND direction = $2 AND next_attempt_at <= $3 AND claimed_until <= $3 ORDER BY next_attempt_at LIMIT 1 {}) RETURNING {MESSAGE_COLUMNS}",
            self.db.skip_locked()
        ))
        .bind(now + lease_ms)
        .bind(direction.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    /// The gateway answered an inbound message: it is done, its conversation continues
    /// the session (followed while a human has it), and the reply is queued, in one
    /// transaction. Returns the queued reply, held by the caller for `hold_ms`; None when
    /// there is none or it was queued before (by a worker that lost its lease).
    pub async fn inbound_handled(
        &self,
        message: &ChannelMessage,
        handled: &Handled,
    ) -> StoreResult<Option<ChannelMessage>> {
        with_race_retries(|| async {
            let now = now_millis();
            let mut tx = self.db.begin_write().await?;
            mark_done(&mut tx, &message.message_id, now).await?;
            sqlx::query("UPDATE channel_messages SET session_id = $1 WHERE message_id = $2")
                .bind(handled.session_id.as_str())
                .bind(message.message_id.as_str())
                .execute(&mut *tx)
                .await?;
            // Following starts with a hand-off; the follower alone ends it, when the
            // session returns to the bot, so that no agent reply is missed.
            sqlx::query("UPDATE channel_conversations SET session_id = $1, following = CASE WHEN $2 = 1 THEN 1 ELSE following END, last_event_id = CASE WHEN session_id = $1 THEN last_event_id ELSE 0 END, updated_at = $3 WHERE tenant_id = $4 AND channel = $5 AND thread = $6")
                .bind(handled.session_id.as_str())
                .bind(i64::from(handled.with_human))
                .bind(now)
                .bind(message.tenant_id.as_str())
                .bind(message.channel.as_str())
                .bind(message.thread.as_str())
                .execute(&mut *tx)
                .await?;
            let mut queued = None;
            if let Some(reply) = &handled.reply {
                if find(&mut tx, reply, Direction::Out).await?.is_none() {
                    let hold = now + handled.hold_ms;
                    queued = Some(insert(&mut tx, reply, Direction::Out, now, hold, 1).await?);
                }
            }
            tx.commit().await?;
            Ok(queued)
        })
        .await
    }

    /// An outbound message reached the channel.
    pub async fn delivered(&self, message: &ChannelMessage) -> StoreResult<()> {
        let mut tx = self.db.begin_write().await?;
        mark_done(&mut tx, &message.message_id, now_millis()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The attempt failed: tried again at `retry_at`, or a dead letter when None.
    pub async fn attempt_failed(
        &self,
        message: &ChannelMessage,
        error: &str,
        retry_at: Option<i64>,
    ) -> StoreResult<()> {
        let now = now_millis();
        let (status, next_attempt_at) = match retry_at {
            Some(at) => ("pending", at),
            None => ("dead", now),
        };
        sqlx::query("UPDATE channel_messages SET status = $1, last_error = $2, next_attempt_at = $3, claimed_until = 0, done_at = CASE WHEN $1 = 'dead' THEN $4 ELSE NULL END WHERE message_id = $5")
            .bind(status)
            .bind(error)
            .bind(next_attempt_at)
            .bind(now)
            .bind(message.message_id.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Claims up to `limit` conversations a human has that no replica follows, for
    /// `lease_ms`.
    pub async fn claim_following(
        &self,
        limit: i64,
        lease_ms: i64,
    ) -> StoreResult<Vec<ChannelConversation>> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE channel_conversations SET follower_until = $1 WHERE (tenant_id, channel, thread) IN (SELECT tenant_id, channel, thread FROM channel_conversations WHERE following = 1 AND follower_until <= $2 LIMIT $3 {}) RETURNING {CONVERSATION_COLUMNS}",
            self.db.skip_locked()
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(conversation_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Keeps following a conversation for `lease_ms` more; false when it is no longer
    /// followed (it went back to the bot, or its session changed).
    pub async fn renew_following(
        &self,
        conversation: &ChannelConversation,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        let renewed = sqlx::query("UPDATE channel_conversations SET follower_until = $1 WHERE tenant_id = $2 AND channel = $3 AND thread = $4 AND session_id = $5 AND following = 1")
            .bind(now_millis() + lease_ms)
            .bind(conversation.tenant_id.as_str())
            .bind(conversation.channel.as_str())
            .bind(conversation.thread.as_str())
            .bind(conversation.session_id.as_str())
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(renewed == 1)
    }

    /// A followed event is taken: the agent's reply it carries (if any) is queued and the
    /// conversation moves past it (and stops being followed when `back_to_bot`), in one
    /// transaction. Returns the queued reply, held by the caller for `hold_ms`; None
    /// when there is none or it was queued before.
    pub async fn event_followed(
        &self,
        conversation: &ChannelConversation,
        event_id: i64,
        reply: Option<&NewChannelMessage>,
        back_to_bot: bool,
        hold_ms: i64,
    ) -> StoreResult<Option<ChannelMessage>> {
        with_race_retries(|| async {
            let now = now_millis();
            let mut tx = self.db.begin_write().await?;
            sqlx::query("UPDATE channel_conversations SET last_event_id = $1, following = CASE WHEN $2 = 1 THEN 0 ELSE following END, follower_until = CASE WHEN $2 = 1 THEN 0 ELSE follower_until END, updated_at = $3 WHERE tenant_id = $4 AND channel = $5 AND thread = $6 AND session_id = $7 AND last_event_id < $1")
                .bind(event_id)
                .bind(i64::from(back_to_bot))
                .bind(now)
                .bind(conversation.tenant_id.as_str())
                .bind(conversation.channel.as_str())
                .bind(conversation.thread.as_str())
                .bind(conversation.session_id.as_str())
                .execute(&mut *tx)
                .await?;
            let mut queued = None;
            if let Some(reply) = reply {
                if find(&mut tx, reply, Direction::Out).await?.is_none() {
                    let hold = now + hold_ms;
                    queued = Some(insert(&mut tx, reply, Direction::Out, now, hold, 1).await?);
                }
            }
            tx.commit().await?;
            Ok(queued)
        })
        .await
    }

    /// A session's channel messages, oldest first, and the channel it is on.
    pub async fn deliveries(
        &self,
        tenant_id: &str,
        session_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<ChannelMessage>> {
        let rows = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE tenant_id = $1 AND session_id = $2 ORDER BY created_at, direction LIMIT $3"))
            .bind(tenant_id)
            .bind(session_id)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows
            .iter()
            .map(message_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The channel a session's conversation is on, if it came through one.
    pub async fn session_channel(
        &self,
        tenant_id: &str,
        session_id: &str,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT channel FROM channel_conversations WHERE tenant_id = $1 AND session_id = $2 LIMIT 1")
            .bind(tenant_id)
            .bind(session_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|row| row.try_get("channel")).transpose()?)
    }

    pub async fn stats(&self) -> StoreResult<ChannelStats> {
        let row = sqlx::query("SELECT COALESCE(SUM(CASE WHEN status = 'pending' AND direction = 'in' THEN 1 ELSE 0 END), 0) AS pending_in, COALESCE(SUM(CASE WHEN status = 'pending' AND direction = 'out' THEN 1 ELSE 0 END), 0) AS pending_out, COALESCE(SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END), 0) AS dead, MIN(CASE WHEN status = 'pending' THEN created_at END) AS oldest FROM channel_messages")
            .fetch_one(self.db.pool())
            .await?;
        Ok(ChannelStats {
            pending_in: row.try_get("pending_in")?,
            pending_out: row.try_get("pending_out")?,
            dead: row.try_get("dead")?,
            oldest_pending_at: row.try_get("oldest")?,
        })
    }
}

async fn find(
    tx: &mut Tx<'_>,
    message: &NewChannelMessage,
    direction: Direction,
) -> StoreResult<Option<ChannelMessage>> {
    let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM channel_messages WHERE tenant_id = $1 AND channel = $2 AND thread = $3 AND direction = $4 AND dedup_key = $5"))
        .bind(message.tenant_id.as_str())
        .bind(message.channel.as_str())
        .bind(message.thread.as_str())
        .bind(direction.as_str())
        .bind(message.dedup_key.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(message_from_row).transpose()?)
}

async fn insert(
    tx: &mut Tx<'_>,
    message: &NewChannelMessage,
    direction: Direction,
    now: i64,
    claimed_until: i64,
    attempts: i32,
) -> StoreResult<ChannelMessage> {
    let stored = ChannelMessage {
        message_id: uuid::Uuid::now_v7().to_string(),
        direction,
        tenant_id: message.tenant_id.clone(),
        channel: message.channel.clone(),
        thread: message.thread.clone(),
        dedup_key: message.dedup_key.clone(),
        session_id: message.session_id.clone(),
        role: message.role.clone(),
        payload: message.payload.clone(),
        status: MessageStatus::Pending,
        attempts,
        last_error: String::new(),
        created_at: now,
        done_at: None,
    };
    sqlx::query(&format!("INSERT INTO channel_messages ({MESSAGE_COLUMNS}, next_attempt_at, claimed_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, '', $11, NULL, $12, $13)"))
        .bind(stored.message_id.as_str())
        .bind(direction.as_str())
        .bind(stored.tenant_id.as_str())
        .bind(stored.channel.as_str())
        .bind(stored.thread.as_str())
        .bind(stored.dedup_key.as_str())
        .bind(stored.session_id.as_str())
        .bind(stored.role.as_str())
        .bind(stored.payload.as_str())
        .bind(attempts as i64)
        .bind(now)
        .bind(now)
        .bind(claimed_until)
        .execute(&mut **tx)
        .await?;
    Ok(stored)
}

async fn mark_done(tx: &mut Tx<'_>, message_id: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE channel_messages SET status = 'done', done_at = $1, claimed_until = 0, last_error = '' WHERE message_id = $2 AND status <> 'done'")
        .bind(now)
        .bind(message_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

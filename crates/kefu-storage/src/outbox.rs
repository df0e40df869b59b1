//! The ticket outbox. A ticket a turn needs (a hand-off, or a route that opens one) is a
//! row written in the same transaction as the turn and the session's move to the queue,
//! so a committed hand-off always gets its ticket, exactly once (the message id is the
//! ticket's idempotency key).
//!
//! The committing worker holds the new row for a lease and opens the ticket right after
//! the commit; when that fails, or the worker dies, the drainer of any replica takes the
//! row once it is due. Claims never wait on each other (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL; on SQLite writers take turns and the lease keeps a row to one worker), a
//! failure backs the row off instead of stopping the others, and a row that keeps failing
//! is moved to a dead letter that an admin can list and retry.
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::conversations::{apply_move, with_race_retries, HandlerMove, HandlerOutcome, Tx};
use crate::sessions::{insert_turn, turn_by_message_id};
use crate::{now_millis, SqlConversationStore, StoreResult, TurnRecord, HANDLER_BOT};

/// A ticket still to be opened for a turn.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub outbox_id: String,
    pub tenant_id: String,
    pub customer_id: String,
    pub message_id: String,
    pub session_id: String,
    /// The encoded ticket request, sent as it was meant to be.
    pub request: Vec<u8>,
    /// Attempts so far, counting the one under way for a claimed entry.
    pub attempts: i32,
    pub last_error: String,
    pub created_at: i64,
    /// When it was moved to the dead letter; None while it is still tried.
    pub dead_at: Option<i64>,
}

/// A turn that needs a ticket, committed as one.
#[derive(Clone, Debug)]
pub struct TicketTurn {
    pub turn: TurnRecord,
    /// The session moves to the queue (a hand-off); false for a ticket beside an answer.
    pub hand_off: bool,
    /// The encoded ticket request.
    pub request: Vec<u8>,
    /// How long the committing worker holds the new entry (its attempt right after commit).
    pub lease_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TicketTurnOutcome {
    /// The turn is stored with its entry, held by the caller for its lease; no entry when
    /// the session already waited for or was with a human (the turn joined its ticket).
    Committed {
        turn: TurnRecord,
        entry: Option<OutboxEntry>,
    },
    /// The message was stored before (a retry): its turn, unchanged.
    Replayed(TurnRecord),
}

/// What a team lead and an alert need to know of the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OutboxStats {
    /// Entries still being tried.
    pub pending: i64,
    pub oldest_pending_at: Option<i64>,
    pub dead: i64,
}

/// The reply a customer got once the ticket exists: its text, for the conversation's
/// transcript, and the encoded response, replayed when the message is sent again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedReply {
    pub reply: String,
    pub response: Vec<u8>,
}

#[async_trait]
pub trait TicketOutbox: Send + Sync {
    /// Stores the turn, moves the session to the queue (for a hand-off) and writes the
    /// outbox entry, in one transaction.
    async fn commit_ticket_turn(&self, turn: TicketTurn) -> StoreResult<TicketTurnOutcome>;
    /// Claims the entry due first for `lease_ms`, counting an attempt on it; entries
    /// another worker holds are skipped, not waited for. One at a time, so that a lease
    /// covers one attempt: entries claimed together and tried one after another could
    /// outlive their lease behind a slow ticket service, and be tried (and counted) again
    /// by another worker while still waiting their turn.
    async fn claim_next(&self, lease_ms: i64) -> StoreResult<Option<OutboxEntry>>;
    /// The ticket exists: the entry goes, and the turn (with the reply that names it,
    /// when given) and a session queued without a ticket get it.
    async fn ticket_opened(
        &self,
        entry: &OutboxEntry,
        ticket_id: &str,
        reply: Option<OpenedReply>,
    ) -> StoreResult<()>;
    /// The attempt failed: tried again at `retry_at`, or a dead letter when None.
    async fn attempt_failed(
        &self,
        entry: &OutboxEntry,
        error: &str,
        retry_at: Option<i64>,
    ) -> StoreResult<()>;
    async fn stats(&self) -> StoreResult<OutboxStats>;
    /// The tenant's dead letters, oldest first.
    async fn dead_letters(&self, tenant_id: &str, limit: i64) -> StoreResult<Vec<OutboxEntry>>;
    /// Puts a dead letter back, due now with its attempts reset; false when the tenant
    /// has no such dead letter.
    async fn retry_dead_letter(&self, tenant_id: &str, outbox_id: &str) -> StoreResult<bool>;
}

const OUTBOX_COLUMNS: &str = "outbox_id, tenant_id, customer_id, message_id, session_id, request, created_at, attempts, last_error, dead_at";

fn entry_from_row(row: &AnyRow) -> Result<OutboxEntry, sqlx::Error> {
    Ok(OutboxEntry {
        outbox_id: row.try_get("outbox_id")?,
        tenant_id: row.try_get("tenant_id")?,
        customer_id: row.try_get("customer_id")?,
        message_id: row.try_get("message_id")?,
        session_id: row.try_get("session_id")?,
        request: row.try_get("request")?,
        attempts: row.try_get::<i64, _>("attempts")? as i32,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        dead_at: row.try_get("dead_at")?,
    })
}

impl SqlConversationStore {
    /// One attempt at committing a ticket turn; a lost race is retried by the caller.
    async fn try_commit_ticket_turn(&self, turn: &TicketTurn) -> StoreResult<TicketTurnOutcome> {
        let mut stored = turn.turn.clone();
        let (tenant, session) = (stored.tenant_id.clone(), stored.session_id.clone());
        let mut tx = self.db().begin_write().await?;
        if let Some(existing) =
            turn_by_message_id(&mut *tx, &tenant, &stored.customer_id, &stored.message_id).await?
        {
            return Ok(TicketTurnOutcome::Replayed(existing));
        }
        let mut opens_ticket = true;
        if turn.hand_off {
            let change = HandlerMove::HandOff {
                customer_id: stored.customer_id.clone(),
                ticket_id: String::new(),
            };
            if let HandlerOutcome::Unchanged(Some(current)) =
                apply_move(&mut tx, &tenant, &session, &change).await?
            {
                // A human has the session already: this message joins that ticket.
                if current.handler != HANDLER_BOT {
                    stored.ticket_id = current.ticket_id;
                    opens_ticket = false;
                }
            }
        }
        stored.seq = insert_turn(&mut tx, &stored).await?;
        let entry = if opens_ticket {
            Some(insert_entry(&mut tx, &stored, &turn.request, turn.lease_ms).await?)
        } else {
            None
        };
        self.commit_and_announce(tx, &tenant, &session).await?;
        Ok(TicketTurnOutcome::Committed {
            turn: stored,
            entry,
        })
    }
}

/// Inserts the entry for a turn, held by its committer for `lease_ms` (its first attempt).
async fn insert_entry(
    tx: &mut Tx<'_>,
    turn: &TurnRecord,
    request: &[u8],
    lease_ms: i64,
) -> StoreResult<OutboxEntry> {
    let entry = OutboxEntry {
        outbox_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: turn.tenant_id.clone(),
        customer_id: turn.customer_id.clone(),
        message_id: turn.message_id.clone(),
        session_id: turn.session_id.clone(),
        request: request.to_vec(),
        attempts: 1,
        last_error: String::new(),
        created_at: turn.created_at,
        dead_at: None,
    };
    sqlx::query(&format!(
        "INSERT INTO ticket_outbox ({OUTBOX_COLUMNS}, next_attempt_at, claimed_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11)"
    ))
    .bind(entry.outbox_id.as_str())
    .bind(entry.tenant_id.as_str())
    .bind(entry.customer_id.as_str())
    .bind(entry.message_id.as_str())
    .bind(entry.session_id.as_str())
    .bind(entry.request.clone())
    .bind(entry.created_at)
    .bind(entry.attempts as i64)
    .bind("")
    .bind(entry.created_at)
    .bind(entry.created_at + lease_ms)
    .execute(&mut **tx)
    .await?;
    Ok(entry)
}

#[async_trait]
impl TicketOutbox for SqlConversationStore {
    async fn commit_ticket_turn(&self, turn: TicketTurn) -> StoreResult<TicketTurnOutcome> {
        with_race_retries(|| self.try_commit_ticket_turn(&turn)).await
    }

    async fn claim_next(&self, lease_ms: i64) -> StoreResult<Option<OutboxEntry>> {
        let skip_locked = self.db().skip_locked();
        let now = now_millis();
        let mut tx = self.db().begin_write().await?;
        let row = sqlx::query(&format!(
            "UPDATE ticket_outbox SET attempts = attempts + 1, claimed_until = $1 WHERE outbox_id IN (SELECT outbox_id FROM ticket_outbox WHERE dead_at IS NULL AND next_attempt_at <= $2 AND claimed_until <= $2 ORDER BY next_attempt_at LIMIT 1 {skip_locked}) RETURNING {OUTBOX_COLUMNS}"
        ))
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(entry_from_row).transpose()?)
    }

    async fn ticket_opened(
        &self,
        entry: &OutboxEntry,
        ticket_id: &str,
        reply: Option<OpenedReply>,
    ) -> StoreResult<()> {
        with_race_retries(|| async {
            let mut tx = self.db().begin_write().await?;
            sqlx::query("DELETE FROM ticket_outbox WHERE outbox_id = $1")
                .bind(entry.outbox_id.as_str())
                .execute(&mut *tx)
                .await?;
            attach_to_turn(&mut tx, entry, ticket_id, reply.as_ref()).await?;
            attach_to_session(&mut tx, entry, ticket_id).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn attempt_failed(
        &self,
        entry: &OutboxEntry,
        error: &str,
        retry_at: Option<i64>,
    ) -> StoreResult<()> {
        let now = now_millis();
        let (next_attempt_at, dead_at) = match retry_at {
            Some(at) => (at, None),
            None => (now, Some(now)),
        };
        sqlx::query("UPDATE ticket_outbox SET last_error = $1, next_attempt_at = $2, dead_at = $3, claimed_until = 0 WHERE outbox_id = $4")
            .bind(error)
            .bind(next_attempt_at)
            .bind(dead_at)
            .bind(entry.outbox_id.as_str())
            .execute(self.db().pool())
            .await?;
        Ok(())
    }

    async fn stats(&self) -> StoreResult<OutboxStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) - COUNT(dead_at) AS pending, MIN(CASE WHEN dead_at IS NULL THEN created_at END) AS oldest, COUNT(dead_at) AS dead FROM ticket_outbox",
        )
        .fetch_one(self.db().pool())
        .await?;
        Ok(OutboxStats {
            pending: row.try_get("pending")?,
            oldest_pending_at: row.try_get("oldest")?,
            dead: row.try_get("dead")?,
        })
    }

    async fn dead_letters(&self, tenant_id: &str, limit: i64) -> StoreResult<Vec<OutboxEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM ticket_outbox WHERE tenant_id = $1 AND dead_at IS NOT NULL ORDER BY dead_at LIMIT $2"
        ))
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(self.db().pool())
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    async fn retry_dead_letter(&self, tenant_id: &str, outbox_id: &str) -> StoreResult<bool> {
        let retried = sqlx::query("UPDATE ticket_outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $1, claimed_until = 0 WHERE tenant_id = $2 AND outbox_id = $3 AND dead_at IS NOT NULL")
            .bind(now_millis())
            .bind(tenant_id)
            .bind(outbox_id)
            .execute(self.db().pool())
            .await?
            .rows_affected();
        Ok(retried == 1)
    }
}

/// The turn gets its ticket (and, from the committing worker, the reply that names it).
async fn attach_to_turn(
    tx: &mut Tx<'_>,
    entry: &OutboxEntry,
    ticket_id: &str,
    reply: Option<&OpenedReply>,
) -> StoreResult<()> {
    let query = match reply {
        Some(opened) => sqlx::query("UPDATE session_turns SET ticket_id = $1, reply = $2, response = $3 WHERE tenant_id = $4 AND customer_id = $5 AND message_id = $6")
            .bind(ticket_id)
            .bind(opened.reply.as_str())
            .bind(opened.response.clone()),
        None => sqlx::query("UPDATE session_turns SET ticket_id = $1 WHERE tenant_id = $2 AND customer_id = $3 AND message_id = $4")
            .bind(ticket_id),
    };
    query
        .bind(entry.tenant_id.as_str())
        .bind(entry.customer_id.as_str())
        .bind(entry.message_id.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A session queued without a ticket gets this one. No event: the customer was told of
/// the hand-off when it was committed, and a ticket number changes nothing they can do.
async fn attach_to_session(
    tx: &mut Tx<'_>,
    entry: &OutboxEntry,
    ticket_id: &str,
) -> StoreResult<()> {
    sqlx::query("UPDATE session_handlers SET ticket_id = $1, version = version + 1, updated_at = $2 WHERE tenant_id = $3 AND session_id = $4 AND handler <> $5 AND ticket_id = ''")
        .bind(ticket_id)
        .bind(now_millis())
        .bind(entry.tenant_id.as_str())
        .bind(entry.session_id.as_str())
        .bind(HANDLER_BOT as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

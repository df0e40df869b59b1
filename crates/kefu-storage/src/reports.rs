//! Support reports read from the stored conversations, tickets and ratings: the same SQL
//! on SQLite and PostgreSQL. What the figures mean is defined here, once:
//! - a conversation is a session whose first turn falls in the period; its channel and
//!   language are its first message's (the `conversations` table, kept with the turns);
//! - it was handed off when any of its turns was escalated;
//! - the bot resolved it when it was never handed off, no question in it was left
//!   unanswered (`Unanswered`), and its customer started no other conversation within
//!   24 hours after its last turn; until those 24 hours have passed it awaits;
//! - hand-offs are the tickets opened in the period with an escalation reason, their
//!   times measured from the ticket's opening to an agent's first reply and to
//!   resolution.
use sqlx::Row;

use crate::{Database, StoreResult};

pub const DAY_MS: i64 = 86_400_000;
/// A customer who writes again within this time after a conversation was not helped by it.
pub const RETURN_WINDOW_MS: i64 = DAY_MS;

/// The conversations, tickets and ratings a report covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportScope {
    pub tenant_id: String,
    /// Unix milliseconds, from inclusive, to exclusive.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only this channel (`Channel`) or language (`Language`); None for all.
    pub channel: Option<i32>,
    pub language: Option<i32>,
    /// The time the report is made: a conversation that ended less than the return
    /// window before it awaits its outcome.
    pub as_of_ms: i64,
}

/// Conversations started on one UTC day, on one channel, in one language.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationCell {
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub channel: i32,
    pub language: i32,
    pub conversations: i64,
    pub resolved_by_bot: i64,
    pub handed_off: i64,
    /// Resolved so far, but the return window is still open.
    pub awaiting: i64,
}

/// A hand-off ticket's times, in milliseconds from its opening; None until they happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffTimes {
    pub vip: bool,
    pub first_response_ms: Option<i64>,
    pub resolution_ms: Option<i64>,
}

/// What the database says about a scope; summed and ranked by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportRows {
    pub conversations: Vec<ConversationCell>,
    /// Escalation reason and tickets.
    pub handoff_reasons: Vec<(String, i64)>,
    pub handoffs: Vec<HandoffTimes>,
    /// Score (1..5) and ratings.
    pub ratings: Vec<(i32, i64)>,
}

/// The report queries over one database.
pub struct SqlReports {
    db: Database,
}

/// The conditions on a ticket `k` that keep it in the scope's channel and language (a
/// ticket's language is its session's first message's). Parameters: $1 tenant, $4
/// channel, $5 language, 0 meaning any.
macro_rules! ticket_in_scope {
    () => {
        "($4 = 0 OR k.channel = $4) AND ($5 = 0 OR EXISTS (SELECT 1 FROM conversations c WHERE c.tenant_id = $1 AND c.session_id = k.session_id AND c.language = $5))"
    };
}

impl SqlReports {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn rows(&self, scope: &ReportScope) -> StoreResult<ReportRows> {
        let mut tx = self.db.begin_report().await?;
        let bind = |sql: &'static str| {
            sqlx::query(sql)
                .bind(scope.tenant_id.as_str())
                .bind(scope.from_ms)
                .bind(scope.to_ms)
                .bind(scope.channel.unwrap_or(0) as i64)
                .bind(scope.language.unwrap_or(0) as i64)
        };
        let conversations = bind(CONVERSATIONS_SQL)
            .bind(RETURN_WINDOW_MS)
            .bind(DAY_MS)
            .bind(scope.as_of_ms)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok(ConversationCell {
                    day: row.try_get("day")?,
                    channel: row.try_get::<i64, _>("channel")? as i32,
                    language: row.try_get::<i64, _>("language")? as i32,
                    conversations: row.try_get("conversations")?,
                    resolved_by_bot: row.try_get("resolved")?,
                    handed_off: row.try_get("handed_off")?,
                    awaiting: row.try_get("awaiting")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let handoff_reasons = bind(HANDOFF_REASONS_SQL)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("escalation_reason")?, row.try_get("tickets")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let handoffs = bind(HANDOFF_TIMES_SQL)
            .bind(VIP_TIER_GOLD)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok(HandoffTimes {
                    vip: row.try_get::<i64, _>("vip")? != 0,
                    first_response_ms: row.try_get("first_response_ms")?,
                    resolution_ms: row.try_get("resolution_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let ratings = bind(RATINGS_SQL)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("score")? as i32,
                    row.try_get("ratings")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        tx.commit().await?;
        Ok(ReportRows {
            conversations,
            handoff_reasons,
            handoffs,
            ratings,
        })
    }
}

/// Gold and Platinum customers are VIP (`VipTier`).
const VIP_TIER_GOLD: i64 = 3;

/// Conversations by day, channel and language. A conversation's next one by the same
/// customer (on any channel) is found among those started up to the return window
/// after the period. $6: the return window, $7: a day, $8: the time of the report.
const CONVERSATIONS_SQL: &str = "
WITH c AS (
    SELECT started_at, last_at, channel, language, handed_off, unanswered,
           LEAD(started_at) OVER (PARTITION BY customer_id ORDER BY started_at) AS next_started
    FROM conversations
    WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 + $6
)
SELECT started_at / $7 AS day, channel, language,
       COUNT(*) AS conversations,
       CAST(SUM(CASE WHEN handed_off <> 0 THEN 1 ELSE 0 END) AS BIGINT) AS handed_off,
       CAST(SUM(CASE WHEN handed_off = 0 AND unanswered = 0
                      AND (next_started > last_at + $6 OR (next_started IS NULL AND last_at + $6 <= $8))
                     THEN 1 ELSE 0 END) AS BIGINT) AS resolved,
       CAST(SUM(CASE WHEN handed_off = 0 AND unanswered = 0
                      AND next_started IS NULL AND last_at + $6 > $8
                     THEN 1 ELSE 0 END) AS BIGINT) AS awaiting
FROM c
WHERE started_at < $3 AND ($4 = 0 OR channel = $4) AND ($5 = 0 OR language = $5)
GROUP BY started_at / $7, channel, language
ORDER BY day, channel, language";

const HANDOFF_REASONS_SQL: &str = concat!(
    "SELECT k.escalation_reason, COUNT(*) AS tickets FROM tickets k
     WHERE k.tenant_id = $1 AND k.created_at >= $2 AND k.created_at < $3
       AND k.escalation_reason <> '' AND ",
    ticket_in_scope!(),
    " GROUP BY k.escalation_reason ORDER BY tickets DESC, k.escalation_reason"
);

/// $6: the lowest VIP tier.
const HANDOFF_TIMES_SQL: &str = concat!(
    "SELECT CASE WHEN k.vip_tier >= $6 THEN 1 ELSE 0 END AS vip,
            k.first_response_at - k.created_at AS first_response_ms,
            k.resolved_at - k.created_at AS resolution_ms
     FROM tickets k
     WHERE k.tenant_id = $1 AND k.created_at >= $2 AND k.created_at < $3
       AND k.escalation_reason <> '' AND ",
    ticket_in_scope!()
);

/// A rating is in the scope of its ticket.
const RATINGS_SQL: &str = concat!(
    "SELECT r.score, COUNT(*) AS ratings FROM conversation_ratings r
     WHERE r.tenant_id = $1 AND r.at >= $2 AND r.at < $3
       AND (($4 = 0 AND $5 = 0) OR EXISTS (SELECT 1 FROM tickets k
            WHERE k.tenant_id = $1 AND k.ticket_id = r.ticket_id AND ",
    ticket_in_scope!(),
    ")) GROUP BY r.score ORDER BY r.score"
);

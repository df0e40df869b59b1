//! Knowledge gaps: the questions the bot left unanswered (read from the session turns,
//! see `Unanswered`), each kept once in the group of similar questions it joined, and
//! the groups with what the knowledge service found about them. One replica groups a
//! tenant's questions at a time, under a lease.
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::content::{vector_from_bytes, vector_to_bytes};
use crate::{now_millis, Database, StoreResult};

/// A question not yet in a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingQuestion {
    pub customer_id: String,
    pub message_id: String,
    pub text: String,
    pub asked_at: i64,
}

/// A group of similar unanswered questions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GapRecord {
    pub gap_id: String,
    pub language: i32,
    /// The normalised mean of the members' vectors, from `vector_model`.
    pub centroid: Vec<f32>,
    pub vector_model: String,
    pub questions: i64,
    pub suggested_title: String,
    pub closest_document_id: String,
    pub closest_document_title: String,
    pub closeness: f64,
    pub first_asked: i64,
    pub last_asked: i64,
    pub covered_at: Option<i64>,
    pub covered_by_document_id: String,
    /// The documents' generation the closest article and coverage were found in.
    pub checked_generation: String,
}

/// A question as it joined its group.
#[derive(Clone, Debug, PartialEq)]
pub struct GapQuestion {
    pub customer_id: String,
    pub message_id: String,
    pub gap_id: String,
    pub text: String,
    /// Its embedding, from the group's encoder.
    pub vector: Vec<f32>,
    /// Cosine similarity to the group's centroid when it joined.
    pub similarity: f64,
    pub asked_at: i64,
}

/// How many of a group's questions were asked in two recent windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapTrend {
    pub recent: i64,
    pub before: i64,
}

pub struct SqlGaps {
    db: Database,
}

/// Turns that leave a question unanswered and whose question is in no group yet; for
/// `not_helped` the question is the session's previous turn. Only turns from shortly
/// before the newest grouped question on are read ($2: that slack), so the scan does not
/// grow with the history; a turn committed later than that by a slow replica is rare.
const PENDING_SQL: &str = "
SELECT t.customer_id, t.message_id, t.created_at,
       CASE WHEN t.unanswered = 'not_helped'
            THEN COALESCE((SELECT p.text FROM session_turns p WHERE p.tenant_id = t.tenant_id AND p.session_id = t.session_id AND p.seq = t.seq - 1), t.text)
            ELSE t.text END AS question
FROM session_turns t
WHERE t.tenant_id = $1 AND t.unanswered <> ''
  AND t.created_at >= (SELECT COALESCE(MAX(g.asked_at), 0) FROM gap_questions g WHERE g.tenant_id = $1) - $2
  AND NOT EXISTS (SELECT 1 FROM gap_questions q WHERE q.tenant_id = t.tenant_id AND q.customer_id = t.customer_id AND q.message_id = t.message_id)
ORDER BY t.created_at";

/// How far before the newest grouped question pending ones are looked for.
const PENDING_SLACK_MS: i64 = 10 * 60 * 1000;

const GAP_COLUMNS: &str = "gap_id, language, centroid, vector_model, questions, suggested_title, closest_document_id, closest_document_title, closeness, first_asked, last_asked, covered_at, covered_by_document_id, checked_generation";

fn gap_from_row(row: &AnyRow) -> Result<GapRecord, sqlx::Error> {
    Ok(GapRecord {
        gap_id: row.try_get("gap_id")?,
        language: row.try_get::<i64, _>("language")? as i32,
        centroid: vector_from_bytes(&row.try_get::<Vec<u8>, _>("centroid")?),
        vector_model: row.try_get("vector_model")?,
        questions: row.try_get("questions")?,
        suggested_title: row.try_get("suggested_title")?,
        closest_document_id: row.try_get("closest_document_id")?,
        closest_document_title: row.try_get("closest_document_title")?,
        closeness: row.try_get("closeness")?,
        first_asked: row.try_get("first_asked")?,
        last_asked: row.try_get("last_asked")?,
        covered_at: row.try_get("covered_at")?,
        covered_by_document_id: row.try_get("covered_by_document_id")?,
        checked_generation: row.try_get("checked_generation")?,
    })
}

impl SqlGaps {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The right to group a tenant's questions for `lease_ms`, or false while another
    /// replica holds it.
    pub async fn claim(&self, tenant_id: &str, lease_ms: i64) -> StoreResult<bool> {
        let now = now_millis();
        sqlx::query(
            "INSERT INTO gap_grouping_leases (tenant_id, claimed_until) VALUES ($1, 0) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .execute(self.db.pool())
        .await?;
        let claimed = sqlx::query(
            "UPDATE gap_grouping_leases SET claimed_until = $2 WHERE tenant_id = $1 AND claimed_until < $3",
        )
        .bind(tenant_id)
        .bind(now + lease_ms)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    pub async fn release(&self, tenant_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE gap_grouping_leases SET claimed_until = 0 WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The oldest `limit` questions not in a group yet, and how many there are in all.
    pub async fn pending(
        &self,
        tenant_id: &str,
        limit: usize,
    ) -> StoreResult<(Vec<PendingQuestion>, i64)> {
        let rows = sqlx::query(PENDING_SQL)
            .bind(tenant_id)
            .bind(PENDING_SLACK_MS)
            .fetch_all(self.db.pool())
            .await?;
        let total = rows.len() as i64;
        let questions = rows
            .iter()
            .take(limit)
            .map(|row| {
                Ok(PendingQuestion {
                    customer_id: row.try_get("customer_id")?,
                    message_id: row.try_get("message_id")?,
                    text: row.try_get("question")?,
                    asked_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((questions, total))
    }

    /// Every group of a tenant, largest first.
    pub async fn groups(&self, tenant_id: &str) -> StoreResult<Vec<GapRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {GAP_COLUMNS} FROM knowledge_gaps WHERE tenant_id = $1 ORDER BY questions DESC, last_asked DESC"
        ))
        .bind(tenant_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(gap_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Stores groups and the questions that joined them, in one transaction; a question
    /// grouped before (by a replica whose lease ran out) is not counted twice.
    pub async fn save(
        &self,
        tenant_id: &str,
        groups: &[GapRecord],
        questions: &[GapQuestion],
    ) -> StoreResult<()> {
        let mut tx = self.db.pool().begin().await?;
        for question in questions {
            sqlx::query(
                "INSERT INTO gap_questions (tenant_id, customer_id, message_id, gap_id, text, vector, similarity, asked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, customer_id, message_id) DO NOTHING",
            )
            .bind(tenant_id)
            .bind(question.customer_id.as_str())
            .bind(question.message_id.as_str())
            .bind(question.gap_id.as_str())
            .bind(question.text.as_str())
            .bind(vector_to_bytes(&question.vector))
            .bind(question.similarity)
            .bind(question.asked_at)
            .execute(&mut *tx)
            .await?;
        }
        for group in groups {
            sqlx::query(&format!(
                "INSERT INTO knowledge_gaps (tenant_id, {GAP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (tenant_id, gap_id) DO UPDATE SET centroid = excluded.centroid, vector_model = excluded.vector_model, questions = excluded.questions, suggested_title = excluded.suggested_title, closest_document_id = excluded.closest_document_id, closest_document_title = excluded.closest_document_title, closeness = excluded.closeness, last_asked = excluded.last_asked, covered_at = excluded.covered_at, covered_by_document_id = excluded.covered_by_document_id, checked_generation = excluded.checked_generation"
            ))
            .bind(tenant_id)
            .bind(group.gap_id.as_str())
            .bind(group.language as i64)
            .bind(vector_to_bytes(&group.centroid))
            .bind(group.vector_model.as_str())
            .bind(group.questions)
            .bind(group.suggested_title.as_str())
            .bind(group.closest_document_id.as_str())
            .bind(group.closest_document_title.as_str())
            .bind(group.closeness)
            .bind(group.first_asked)
            .bind(group.last_asked)
            .bind(group.covered_at)
            .bind(group.covered_by_document_id.as_str())
            .bind(group.checked_generation.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A group's most typical questions (closest to the centroid when they joined).
    pub async fn examples(
        &self,
        tenant_id: &str,
        gap_id: &str,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT text FROM gap_questions WHERE tenant_id = $1 AND gap_id = $2 ORDER BY similarity DESC, asked_at DESC LIMIT $3",
        )
        .bind(tenant_id)
        .bind(gap_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| row.try_get("text"))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Questions per group asked in [split - window, split) and [split - 2 window, split -
    /// window).
    pub async fn trends(
        &self,
        tenant_id: &str,
        split: i64,
        window: i64,
    ) -> StoreResult<Vec<(String, GapTrend)>> {
        let rows = sqlx::query(
            "SELECT gap_id,
                    CAST(SUM(CASE WHEN asked_at >= $2 - $3 THEN 1 ELSE 0 END) AS BIGINT) AS recent,
                    CAST(SUM(CASE WHEN asked_at < $2 - $3 THEN 1 ELSE 0 END) AS BIGINT) AS earlier
             FROM gap_questions WHERE tenant_id = $1 AND asked_at >= $2 - 2 * $3 AND asked_at < $2
             GROUP BY gap_id",
        )
        .bind(tenant_id)
        .bind(split)
        .bind(window)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("gap_id")?,
                    GapTrend {
                        recent: row.try_get("recent")?,
                        before: row.try_get("earlier")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?)
    }
}

//! The ticket aggregate: tickets, their audit trail and the customers' profiles.
//! Status, priority, channel and VIP tier are stored as the kefu.v1 enum numbers.
use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{Database, StoreResult};

#[derive(Clone, Debug, PartialEq)]
pub struct TicketRecord {
    pub tenant_id: String,
    pub ticket_id: String,
    pub customer_id: String,
    pub session_id: String,
    pub subject: String,
    pub description: String,
    pub status: i32,
    pub priority: i32,
    pub intent: String,
    pub channel: i32,
    pub assignee: String,
    pub vip_tier: i32,
    pub escalation_reason: String,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub sla_due_at: i64,
    pub resolved_at: Option<i64>,
    /// Optimistic-concurrency counter: every update must name the version it read.
    pub version: i64,
    /// When an agent first wrote to the customer.
    pub first_response_at: Option<i64>,
    /// Whether the SLA policy has already raised its priority (it does so once).
    pub sla_raised: bool,
}

/// A ticket to open; the store writes it and its "created" audit row together.
pub type NewTicket = TicketRecord;

#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    pub actor: String,
    pub action: String,
    pub from_status: i32,
    pub to_status: i32,
    pub comment: String,
    pub at: i64,
}

/// The new state of a ticket after a transition or an assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct TicketChange {
    pub status: i32,
    pub priority: i32,
    pub assignee: String,
    pub updated_at: i64,
    pub resolved_at: Option<i64>,
    pub sla_raised: bool,
}

impl TicketChange {
    /// The ticket as it is, to be changed field by field.
    pub fn from_current(ticket: &TicketRecord, now: i64) -> Self {
        Self {
            status: ticket.status,
            priority: ticket.priority,
            assignee: ticket.assignee.clone(),
            updated_at: now,
            resolved_at: ticket.resolved_at,
            sla_raised: ticket.sla_raised,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum UpdateOutcome {
    Updated(Box<TicketRecord>),
    /// Someone else changed the ticket since it was read: re-read and decide again.
    Conflict,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub depth: i64,
    pub oldest_created_at: Option<i64>,
    pub overdue: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CustomerRecord {
    pub tenant_id: String,
    pub customer_id: String,
    pub display_name: String,
    pub vip_tier: i32,
}

#[async_trait]
pub trait TicketStore: Send + Sync {
    /// Inserts the ticket unless one with the same (tenant, customer, idempotency key) exists;
    /// returns the stored ticket and whether this call created it.
    async fn create(
        &self,
        ticket: NewTicket,
        audit: AuditRecord,
    ) -> StoreResult<(TicketRecord, bool)>;
    async fn get(&self, tenant_id: &str, ticket_id: &str) -> StoreResult<Option<TicketRecord>>;
    async fn audit_trail(&self, tenant_id: &str, ticket_id: &str) -> StoreResult<Vec<AuditRecord>>;
    async fn list(
        &self,
        tenant_id: &str,
        customer_id: Option<&str>,
        status: Option<i32>,
        limit: i64,
    ) -> StoreResult<Vec<TicketRecord>>;
    /// Open, unassigned tickets: highest VIP tier, then priority, then the oldest.
    async fn next_in_queue(
        &self,
        tenant_id: &str,
        open_status: i32,
    ) -> StoreResult<Option<TicketRecord>>;
    async fn queue_stats(
        &self,
        tenant_id: &str,
        open_status: i32,
        now: i64,
    ) -> StoreResult<QueueStats>;
    /// Applies `change` if the ticket is still at `expected_version`, with its audit row,
    /// in one transaction.
    async fn update(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        expected_version: i64,
        change: TicketChange,
        audit: AuditRecord,
    ) -> StoreResult<UpdateOutcome>;
    async fn tenants_with_tickets(&self) -> StoreResult<Vec<String>>;
    /// Sets the first response time unless one is set; true when this call set it.
    async fn record_first_response(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        at: i64,
    ) -> StoreResult<bool>;
    /// Unresolved tickets past 80% of their SLA with no agent reply yet and not yet
    /// raised by the SLA policy, oldest deadline first.
    async fn sla_at_risk(&self, now: i64, limit: i64) -> StoreResult<Vec<TicketRecord>>;
    async fn get_customer(
        &self,
        tenant_id: &str,
        customer_id: &str,
    ) -> StoreResult<Option<CustomerRecord>>;
    async fn upsert_customer(&self, customer: CustomerRecord) -> StoreResult<CustomerRecord>;
}

pub struct SqlTicketStore {
    db: Database,
}

impl SqlTicketStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

const TICKET_COLUMNS: &str = "tenant_id, ticket_id, customer_id, session_id, subject, description, status, priority, intent, channel, assignee, vip_tier, escalation_reason, idempotency_key, created_at, updated_at, sla_due_at, resolved_at, version, first_response_at, sla_raised";

fn ticket_from_row(row: &AnyRow) -> Result<TicketRecord, sqlx::Error> {
    Ok(TicketRecord {
        tenant_id: row.try_get("tenant_id")?,
        ticket_id: row.try_get("ticket_id")?,
        customer_id: row.try_get("customer_id")?,
        session_id: row.try_get("session_id")?,
        subject: row.try_get("subject")?,
        description: row.try_get("description")?,
        status: row.try_get::<i64, _>("status")? as i32,
        priority: row.try_get::<i64, _>("priority")? as i32,
        intent: row.try_get("intent")?,
        channel: row.try_get::<i64, _>("channel")? as i32,
        assignee: row.try_get("assignee")?,
        vip_tier: row.try_get::<i64, _>("vip_tier")? as i32,
        escalation_reason: row.try_get("escalation_reason")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        sla_due_at: row.try_get("sla_due_at")?,
        resolved_at: row.try_get("resolved_at")?,
        version: row.try_get("version")?,
        first_response_at: row.try_get("first_response_at")?,
        sla_raised: row.try_get::<i64, _>("sla_raised")? != 0,
    })
}

/// The `SELECT` of whole tickets where `condition` holds (it may end in ORDER BY, LIMIT).
fn select_tickets(condition: &str) -> String {
    format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE {condition}")
}

const BY_ID: &str = "tenant_id = $1 AND ticket_id = $2";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

const INSERT_AUDIT: &str = "INSERT INTO ticket_audit (tenant_id, ticket_id, actor, action, from_status, to_status, comment, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn insert_audit<'q>(
    tenant_id: &'q str,
    ticket_id: &'q str,
    audit: &'q AuditRecord,
) -> AnyQuery<'q> {
    sqlx::query(INSERT_AUDIT)
        .bind(tenant_id)
        .bind(ticket_id)
        .bind(audit.actor.as_str())
        .bind(audit.action.as_str())
        .bind(audit.from_status as i64)
        .bind(audit.to_status as i64)
        .bind(audit.comment.as_str())
        .bind(audit.at)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl TicketStore for SqlTicketStore {
    async fn create(
        &self,
        ticket: NewTicket,
        audit: AuditRecord,
    ) -> StoreResult<(TicketRecord, bool)> {
        if let Some(key) = &ticket.idempotency_key {
            if let Some(existing) = self
                .find_by_key(&ticket.tenant_id, &ticket.customer_id, key)
                .await?
            {
                return Ok((existing, false));
            }
        }
        let mut tx = self.db.begin_write().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO tickets ({TICKET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
        ))
        .bind(ticket.tenant_id.as_str())
        .bind(ticket.ticket_id.as_str())
        .bind(ticket.customer_id.as_str())
        .bind(ticket.session_id.as_str())
        .bind(ticket.subject.as_str())
        .bind(ticket.description.as_str())
        .bind(ticket.status as i64)
        .bind(ticket.priority as i64)
        .bind(ticket.intent.as_str())
        .bind(ticket.channel as i64)
        .bind(ticket.assignee.as_str())
        .bind(ticket.vip_tier as i64)
        .bind(ticket.escalation_reason.as_str())
        .bind(ticket.idempotency_key.clone())
        .bind(ticket.created_at)
        .bind(ticket.updated_at)
        .bind(ticket.sla_due_at)
        .bind(ticket.resolved_at)
        .bind(ticket.version)
        .bind(ticket.first_response_at)
        .bind(ticket.sla_raised as i64)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // A concurrent request with the same key won the race: return its ticket.
            Err(error) if is_unique_violation(&error) && ticket.idempotency_key.is_some() => {
                drop(tx);
                let key = ticket.idempotency_key.as_deref().unwrap_or_default();
                return match self
                    .find_by_key(&ticket.tenant_id, &ticket.customer_id, key)
                    .await?
                {
                    Some(existing) => Ok((existing, false)),
                    None => Err(error.into()),
                };
            }
            Err(error) => return Err(error.into()),
        }
        insert_audit(&ticket.tenant_id, &ticket.ticket_id, &audit)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((ticket, true))
    }

    async fn get(&self, tenant_id: &str, ticket_id: &str) -> StoreResult<Option<TicketRecord>> {
        let sql = select_tickets(BY_ID);
        self.fetch_ticket(sqlx::query(&sql).bind(tenant_id).bind(ticket_id))
            .await
    }

    async fn audit_trail(&self, tenant_id: &str, ticket_id: &str) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query("SELECT actor, action, from_status, to_status, comment, at FROM ticket_audit WHERE tenant_id = $1 AND ticket_id = $2 ORDER BY id")
            .bind(tenant_id)
            .bind(ticket_id)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    from_status: row.try_get::<i64, _>("from_status")? as i32,
                    to_status: row.try_get::<i64, _>("to_status")? as i32,
                    comment: row.try_get("comment")?,
                    at: row.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn list(
        &self,
        tenant_id: &str,
        customer_id: Option<&str>,
        status: Option<i32>,
        limit: i64,
    ) -> StoreResult<Vec<TicketRecord>> {
        let sql = select_tickets(
            "tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND ($3 = 0 OR status = $3) ORDER BY created_at DESC, ticket_id DESC LIMIT $4",
        );
        let query = sqlx::query(&sql)
            .bind(tenant_id)
            .bind(customer_id.unwrap_or_default())
            .bind(status.unwrap_or(0) as i64)
            .bind(limit);
        self.fetch_tickets(query).await
    }

    async fn next_in_queue(
        &self,
        tenant_id: &str,
        open_status: i32,
    ) -> StoreResult<Option<TicketRecord>> {
        let sql = select_tickets(
            "tenant_id = $1 AND status = $2 AND assignee = '' ORDER BY vip_tier DESC, priority DESC, created_at ASC, ticket_id ASC LIMIT 1",
        );
        self.fetch_ticket(sqlx::query(&sql).bind(tenant_id).bind(open_status as i64))
            .await
    }

    async fn queue_stats(
        &self,
        tenant_id: &str,
        open_status: i32,
        now: i64,
    ) -> StoreResult<QueueStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS depth, MIN(created_at) AS oldest, COALESCE(SUM(CASE WHEN sla_due_at < $3 THEN 1 ELSE 0 END), 0) AS overdue FROM tickets WHERE tenant_id = $1 AND status = $2 AND assignee = ''",
        )
        .bind(tenant_id)
        .bind(open_status as i64)
        .bind(now)
        .fetch_one(self.db.pool())
        .await?;
        Ok(QueueStats {
            depth: row.try_get("depth")?,
            oldest_created_at: row.try_get("oldest")?,
            overdue: row.try_get("overdue")?,
        })
    }

    async fn update(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        expected_version: i64,
        change: TicketChange,
        audit: AuditRecord,
    ) -> StoreResult<UpdateOutcome> {
        let mut tx = self.db.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE tickets SET status = $1, assignee = $2, updated_at = $3, resolved_at = $4, priority = $8, sla_raised = $9, version = version + 1 WHERE tenant_id = $5 AND ticket_id = $6 AND version = $7",
        )
        .bind(change.status as i64)
        .bind(change.assignee.as_str())
        .bind(change.updated_at)
        .bind(change.resolved_at)
        .bind(tenant_id)
        .bind(ticket_id)
        .bind(expected_version)
        .bind(change.priority as i64)
        .bind(change.sla_raised as i64)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(UpdateOutcome::Conflict);
        }
        insert_audit(tenant_id, ticket_id, &audit)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&select_tickets(BY_ID))
            .bind(tenant_id)
            .bind(ticket_id)
            .fetch_one(&mut *tx)
            .await?;
        let ticket = ticket_from_row(&row)?;
        tx.commit().await?;
        Ok(UpdateOutcome::Updated(Box::new(ticket)))
    }

    async fn tenants_with_tickets(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT tenant_id FROM tickets")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| row.try_get("tenant_id"))
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    async fn record_first_response(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        at: i64,
    ) -> StoreResult<bool> {
        let updated = sqlx::query("UPDATE tickets SET first_response_at = $1 WHERE tenant_id = $2 AND ticket_id = $3 AND first_response_at IS NULL")
            .bind(at)
            .bind(tenant_id)
            .bind(ticket_id)
            .execute(self.db.pool())
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn sla_at_risk(&self, now: i64, limit: i64) -> StoreResult<Vec<TicketRecord>> {
        // Unresolved (1, 2, 3: open, in progress, pending), and created + 0.8 * (due -
        // created) <= now in integers; the ticket service checks the rule again on the
        // ticket it re-reads before it raises it.
        let sql = select_tickets(
            "status IN (1, 2, 3) AND first_response_at IS NULL AND sla_raised = 0 \
             AND created_at + (sla_due_at - created_at) * 4 / 5 <= $1 ORDER BY sla_due_at LIMIT $2",
        );
        self.fetch_tickets(sqlx::query(&sql).bind(now).bind(limit))
            .await
    }

    async fn get_customer(
        &self,
        tenant_id: &str,
        customer_id: &str,
    ) -> StoreResult<Option<CustomerRecord>> {
        let row = sqlx::query("SELECT tenant_id, customer_id, display_name, vip_tier FROM customers WHERE tenant_id = $1 AND customer_id = $2")
            .bind(tenant_id)
            .bind(customer_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| {
            Ok(CustomerRecord {
                tenant_id: row.try_get("tenant_id")?,
                customer_id: row.try_get("customer_id")?,
                display_name: row.try_get("display_name")?,
                vip_tier: row.try_get::<i64, _>("vip_tier")? as i32,
            })
        })
        .transpose()
        .map_err(|error: sqlx::Error| error.into())
    }

    async fn upsert_customer(&self, customer: CustomerRecord) -> StoreResult<CustomerRecord> {
        let now = crate::now_millis();
        sqlx::query(
            "INSERT INTO customers (tenant_id, customer_id, display_name, vip_tier, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (tenant_id, customer_id) DO UPDATE SET display_name = excluded.display_name, vip_tier = excluded.vip_tier, updated_at = excluded.updated_at",
        )
        .bind(customer.tenant_id.as_str())
        .bind(customer.customer_id.as_str())
        .bind(customer.display_name.as_str())
        .bind(customer.vip_tier as i64)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(customer)
    }
}

impl SqlTicketStore {
    /// The ticket opened with `key` for this customer: keys are the customer's own.
    async fn find_by_key(
        &self,
        tenant_id: &str,
        customer_id: &str,
        key: &str,
    ) -> StoreResult<Option<TicketRecord>> {
        let sql = select_tickets("tenant_id = $1 AND customer_id = $2 AND idempotency_key = $3");
        self.fetch_ticket(
            sqlx::query(&sql)
                .bind(tenant_id)
                .bind(customer_id)
                .bind(key),
        )
        .await
    }

    async fn fetch_ticket(&self, query: AnyQuery<'_>) -> StoreResult<Option<TicketRecord>> {
        let row = query.fetch_optional(self.db.pool()).await?;
        Ok(row.as_ref().map(ticket_from_row).transpose()?)
    }

    async fn fetch_tickets(&self, query: AnyQuery<'_>) -> StoreResult<Vec<TicketRecord>> {
        let rows = query.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(ticket_from_row)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }
}

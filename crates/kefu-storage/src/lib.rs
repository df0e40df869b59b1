//! Storage for kefu: one connection pool chosen by URL (`sqlite://` embedded default,
//! `postgres://` production), migrations from the repository, and a small trait per
//! aggregate (tickets with their audit trail and customer profiles, session turns,
//! tenant content), and the two-level cache with change notification over Redis.

pub mod cache;
pub mod channels;
mod content;
pub mod conversations;
mod db;
pub mod gaps;
pub mod outbox;
pub mod rate_limit;
pub mod reports;
pub mod sessions;
pub mod tickets;

pub use cache::{fingerprint, Cache, Redis, RedisProbe};
pub use channels::SqlChannels;
pub use content::{ContentStore, SqlContentStore, StoredChunk, StoredDocument};
pub use conversations::{
    ConversationStore, EventBus, EventKind, EventRecord, HandlerMove, HandlerOutcome,
    HandlerRecord, RatingRecord, SqlConversationStore, HANDLER_BOT,
};
pub use db::{now_millis, now_secs, Database, DatabaseProbe};
pub use gaps::SqlGaps;
pub use outbox::{
    OpenedReply, OutboxEntry, OutboxStats, TicketOutbox, TicketTurn, TicketTurnOutcome,
};
pub use rate_limit::{Rate, RateLimiter};
pub use reports::{ReportRows, ReportScope, SqlReports};
pub use sessions::{SessionStore, SqlSessionStore, TurnRecord, Unanswered};
pub use tickets::{
    AuditRecord, CustomerRecord, NewTicket, QueueStats, SqlTicketStore, TicketChange, TicketRecord,
    TicketStore, UpdateOutcome,
};

/// Storage failures the services map to gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A concurrent writer got there first (a key it took, a row it changed, a snapshot
    /// it made stale): the same write may succeed if tried again.
    #[error("write conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if means_unavailable(&error) {
            Self::Unavailable(error)
        } else if means_conflict(&error) {
            Self::Conflict(error.to_string())
        } else {
            Self::Other(error)
        }
    }
}

/// The database could not be reached, or said it cannot serve now: a failure to wait
/// out, not one of the request. A server that shuts down or starts up says so with a
/// SQLSTATE (PostgreSQL's appendix A): class 08, connection exceptions; 53300,
/// too_many_connections; 57P01-57P03, admin_shutdown, crash_shutdown, cannot_connect_now.
fn means_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "53300" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// A write that lost a race with another writer: a unique key taken meanwhile (both
/// backends), PostgreSQL's 40001 serialization_failure and 40P01 deadlock_detected,
/// SQLite's busy and locked results (primary codes 5 and 6, whatever the extended code).
/// Any other refusal (a constraint, a missing table) would fail the same way again.
fn means_conflict(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    if error.is_unique_violation() {
        return true;
    }
    let Some(code) = error.code() else {
        return false;
    };
    match error.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        Some(_) => code
            .parse::<u32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6)),
        None => matches!(&*code, "40001" | "40P01"),
    }
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Unavailable(_) => Self::unavailable(error.to_string()),
            StoreError::Conflict(_) => Self::aborted(error.to_string()),
            StoreError::Other(_) => Self::internal(error.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

//! Opening the tickets of the outbox (see `kefu_storage::outbox`): right after the turn
//! that needs one commits, and by a drainer on every replica for what that left. Each
//! entry stands alone: a failure backs it off or moves it to the dead letter, and the
//! drainer goes on with the next.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::{
    CreateTicketRequest, DeadLetter, ListDeadLettersRequest, ListDeadLettersResponse,
    RetryDeadLetterRequest, RetryDeadLetterResponse,
};
use kefu_runtime::retry::is_transient;
use kefu_runtime::{GrpcChannel, RetryPolicy};
use kefu_storage::{now_millis, OutboxEntry, TicketOutbox};
use prost::Message as _;
use tonic::Status;

use crate::config::OutboxArgs;

const SERVICE: &str = "kefu-orchestrator";
/// How long a worker holds an entry it is trying: longer than a ticket call may take.
pub const LEASE_MS: i64 = 30_000;
/// How often the drainer looks for due entries.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);
/// Entries claimed at once by one drainer.
const CLAIM_BATCH: i64 = 50;
const MAX_DEAD_LETTERS_LISTED: i32 = 100;

/// The outbox's retry schedule, from its flags.
pub fn retry_policy(args: &OutboxArgs) -> RetryPolicy {
    RetryPolicy::new(args.outbox_max_attempts, args.outbox_backoff_ms)
}

/// The reply to store with a turn once its ticket is known, given the ticket's id.
pub type StoredReply<'a> = dyn Fn(&str) -> kefu_storage::OpenedReply + Sync + 'a;

/// Opens tickets from outbox entries.
#[derive(Clone)]
pub struct TicketOpener {
    pub outbox: Arc<dyn TicketOutbox>,
    pub tickets: TicketServiceClient<GrpcChannel>,
    pub policy: RetryPolicy,
}

/// Why an attempt failed; the message is the ticket service's, never customer text.
struct Failure {
    message: String,
    transient: bool,
}

impl TicketOpener {
    /// One attempt at an entry's ticket; on success the entry goes and the turn gets
    /// the ticket (with `response(ticket_id)` as its stored reply, when given).
    pub async fn open(
        &self,
        entry: &OutboxEntry,
        response: Option<&StoredReply<'_>>,
    ) -> Result<Option<String>, Status> {
        match self.create_ticket(entry).await {
            Ok(ticket_id) => {
                self.outbox
                    .ticket_opened(entry, &ticket_id, response.map(|r| r(&ticket_id)))
                    .await?;
                metrics::counter!("kefu_outbox_attempts_total", "service" => SERVICE, "outcome" => "opened").increment(1);
                Ok(Some(ticket_id))
            }
            Err(failure) => {
                let retry_at =
                    self.policy
                        .retry_at(entry.attempts, failure.transient, now_millis());
                let outcome = if retry_at.is_some() {
                    "retry"
                } else {
                    "dead_letter"
                };
                tracing::warn!(
                    outbox_id = %entry.outbox_id,
                    attempts = entry.attempts,
                    error = %failure.message,
                    outcome,
                    "ticket from the outbox not opened"
                );
                metrics::counter!("kefu_outbox_attempts_total", "service" => SERVICE, "outcome" => outcome).increment(1);
                self.outbox
                    .attempt_failed(entry, &failure.message, retry_at)
                    .await?;
                Ok(None)
            }
        }
    }

    async fn create_ticket(&self, entry: &OutboxEntry) -> Result<String, Failure> {
        let request =
            CreateTicketRequest::decode(entry.request.as_slice()).map_err(|error| Failure {
                message: format!("the stored ticket request is unreadable: {error}"),
                transient: false,
            })?;
        let response = self
            .tickets
            .clone()
            .create_ticket(request)
            .await
            .map_err(|status| Failure {
                message: format!("{:?}: {}", status.code(), status.message()),
                transient: is_transient(&status),
            })?;
        response
            .into_inner()
            .ticket
            .map(|ticket| ticket.ticket_id)
            .ok_or_else(|| Failure {
                message: "the ticket service answered without a ticket".into(),
                transient: false,
            })
    }

    /// Works every due entry once; returns how many tickets were opened.
    pub async fn drain(&self) -> Result<usize, Status> {
        let mut opened = 0;
        for entry in self.outbox.claim_due(CLAIM_BATCH, LEASE_MS).await? {
            if self.open(&entry, None).await?.is_some() {
                opened += 1;
            }
        }
        Ok(opened)
    }

    /// Depth, age of the oldest entry and dead letters, for dashboards and alerts.
    pub async fn publish_metrics(&self) -> Result<(), Status> {
        let stats = self.outbox.stats().await?;
        let oldest_age = stats
            .oldest_pending_at
            .map_or(0.0, |at| (now_millis() - at).max(0) as f64 / 1000.0);
        metrics::gauge!("kefu_outbox_pending", "service" => SERVICE).set(stats.pending as f64);
        metrics::gauge!("kefu_outbox_oldest_age_seconds", "service" => SERVICE).set(oldest_age);
        metrics::gauge!("kefu_outbox_dead_letters", "service" => SERVICE).set(stats.dead as f64);
        Ok(())
    }

    /// The drainer: due entries and the metrics every `DRAIN_INTERVAL`, until shutdown.
    pub fn spawn_drainer(self, shutdown: &kefu_runtime::Shutdown) {
        shutdown.every(DRAIN_INTERVAL, move || {
            let opener = self.clone();
            async move {
                match opener.drain().await {
                    Ok(0) => {}
                    Ok(opened) => tracing::info!(opened, "tickets from the outbox opened"),
                    Err(status) => {
                        tracing::warn!(error = %status.message(), "the outbox could not be read")
                    }
                }
                if let Err(status) = opener.publish_metrics().await {
                    tracing::debug!(error = %status.message(), "outbox metrics not read");
                }
            }
        });
    }

    pub async fn list_dead_letters(
        &self,
        request: ListDeadLettersRequest,
    ) -> Result<ListDeadLettersResponse, Status> {
        if request.tenant_id.trim().is_empty() {
            return Err(Status::invalid_argument("tenant_id is required"));
        }
        if request.limit < 0 || request.limit > MAX_DEAD_LETTERS_LISTED {
            return Err(Status::invalid_argument(format!(
                "limit must be from 0 to {MAX_DEAD_LETTERS_LISTED} (0: {MAX_DEAD_LETTERS_LISTED})"
            )));
        }
        let limit = if request.limit == 0 {
            MAX_DEAD_LETTERS_LISTED
        } else {
            request.limit
        };
        let entries = self
            .outbox
            .dead_letters(&request.tenant_id, limit as i64)
            .await?;
        Ok(ListDeadLettersResponse {
            dead_letters: entries.into_iter().map(dead_letter).collect(),
        })
    }

    pub async fn retry_dead_letter(
        &self,
        request: RetryDeadLetterRequest,
    ) -> Result<RetryDeadLetterResponse, Status> {
        if request.tenant_id.trim().is_empty() || request.outbox_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "tenant_id and outbox_id are required",
            ));
        }
        if !self
            .outbox
            .retry_dead_letter(&request.tenant_id, &request.outbox_id)
            .await?
        {
            return Err(Status::not_found(format!(
                "no dead letter {:?} for this tenant",
                request.outbox_id
            )));
        }
        tracing::info!(outbox_id = %request.outbox_id, "dead letter put back into the outbox");
        Ok(RetryDeadLetterResponse {
            outbox_id: request.outbox_id,
        })
    }
}

fn dead_letter(entry: OutboxEntry) -> DeadLetter {
    DeadLetter {
        outbox_id: entry.outbox_id,
        session_id: entry.session_id,
        customer_id: entry.customer_id,
        message_id: entry.message_id,
        attempts: entry.attempts,
        last_error: entry.last_error,
        created_at: Some(kefu_proto::timestamp_from_millis(entry.created_at)),
        dead_at: entry.dead_at.map(kefu_proto::timestamp_from_millis),
    }
}

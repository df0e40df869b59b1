//! Opening the tickets of the outbox (see `kefu_storage::outbox`): right after the turn
//! that needs one commits, and by a drainer on every replica for what that left. Each
//! entry stands alone: a failure backs it off or moves it to the dead letter, and the
//! drainer goes on with the next.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::{
    CreateTicketRequest, DeadLetter, ListDeadLettersRequest, ListDeadLettersResponse,
    RetryDeadLetterRequest, RetryDeadLetterResponse, Ticket,
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
/// What the lease of a turn's own entry adds to the time left of the customer's call:
/// room for the clocks of two replicas to differ.
pub const TURN_LEASE_MARGIN_MS: i64 = 1_000;
/// How often the drainer looks for due entries.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);
/// Entries one drainer works in a pass, each claimed when its turn comes.
const ENTRIES_PER_PASS: usize = 50;
const MAX_DEAD_LETTERS_LISTED: i32 = 100;

/// The outbox's retry schedule, from its flags.
pub fn retry_policy(args: &OutboxArgs) -> RetryPolicy {
    RetryPolicy::new(args.outbox_max_attempts, args.outbox_backoff_ms)
}

/// The reply to store with a turn once its ticket is known, given the ticket.
pub type StoredReply<'a> = dyn Fn(&Ticket) -> kefu_storage::OpenedReply + Sync + 'a;

/// Opens tickets from outbox entries.
#[derive(Clone)]
pub struct TicketOpener {
    pub outbox: Arc<dyn TicketOutbox>,
    pub tickets: TicketServiceClient<GrpcChannel>,
    pub policy: RetryPolicy,
    /// How long an entry is held for one attempt (`LEASE_MS`).
    pub lease_ms: i64,
}

/// `lease_ms`, or less when the call being served (`call_left`) ends sooner.
fn lease_within_call(lease_ms: i64, call_left: Option<Duration>) -> i64 {
    call_left.map_or(lease_ms, |left| {
        let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
        lease_ms.min(left.saturating_add(TURN_LEASE_MARGIN_MS))
    })
}

/// Why an attempt failed; the message is the ticket service's, never customer text.
struct Failure {
    message: String,
    transient: bool,
}

impl TicketOpener {
    /// The lease of the entry a turn commits. The turn's own attempt stops with the
    /// customer's call (the handler is dropped at its deadline), so when the call ends
    /// before `lease_ms`, so does the lease: an attempt the turn could not record (its
    /// database went away, its process died) is drained soon after, not `LEASE_MS` later.
    pub fn turn_lease_ms(&self) -> i64 {
        lease_within_call(self.lease_ms, kefu_runtime::resilience::remaining())
    }

    /// One attempt at an entry's ticket; on success the entry goes and the turn gets
    /// the ticket (with `response(ticket)` as its stored reply, when given).
    pub async fn open(
        &self,
        entry: &OutboxEntry,
        response: Option<&StoredReply<'_>>,
    ) -> Result<Option<Ticket>, Status> {
        match self.create_ticket(entry).await {
            Ok(ticket) => {
                self.outbox
                    .ticket_opened(entry, &ticket.ticket_id, response.map(|r| r(&ticket)))
                    .await?;
                metrics::counter!("kefu_outbox_attempts_total", "service" => SERVICE, "outcome" => "opened").increment(1);
                Ok(Some(ticket))
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

    async fn create_ticket(&self, entry: &OutboxEntry) -> Result<Ticket, Failure> {
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
        response.into_inner().ticket.ok_or_else(|| Failure {
            message: "the ticket service answered without a ticket".into(),
            transient: false,
        })
    }

    /// Works due entries, up to `ENTRIES_PER_PASS`, claiming each when its turn comes;
    /// returns how many tickets were opened.
    pub async fn drain(&self) -> Result<usize, Status> {
        let mut opened = 0;
        for _ in 0..ENTRIES_PER_PASS {
            let Some(entry) = self.outbox.claim_next(self.lease_ms).await? else {
                break;
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_storage::{Database, SqlConversationStore};
    use kefu_test_db::TestDb;

    const ENTRIES: usize = 8;
    /// Each call waits at most this long for a ticket service that never answers ...
    const CALL_TIMEOUT_MS: u64 = 400;
    /// ... so one attempt fits in a lease, and the entries tried one after another do not.
    const LEASE_MS_HERE: i64 = 1_000;

    #[test]
    fn a_turns_lease_ends_soon_after_its_call() {
        assert_eq!(lease_within_call(LEASE_MS, None), LEASE_MS);
        assert_eq!(
            lease_within_call(LEASE_MS, Some(Duration::from_millis(4_000))),
            4_000 + TURN_LEASE_MARGIN_MS
        );
        assert_eq!(
            lease_within_call(LEASE_MS, Some(Duration::from_secs(600))),
            LEASE_MS
        );
        assert_eq!(lease_within_call(LEASE_MS, Some(Duration::MAX)), LEASE_MS);
    }

    /// A ticket service that accepts connections and never answers, as a stopped or
    /// overloaded one does: each call ends at its deadline.
    async fn hung_ticket_service() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        (url, held)
    }

    /// Two replicas drain one outbox while every ticket call hangs to its deadline:
    /// no entry is tried twice, so no attempt is counted twice (counted attempts send an
    /// entry to the dead letter).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_draining_behind_a_hung_ticket_service_try_each_entry_once() {
        let (_guard, url) = TestDb::postgres().await;
        let db = Database::connect(&url).await.unwrap();
        for i in 0..ENTRIES {
            sqlx::query("INSERT INTO ticket_outbox (outbox_id, tenant_id, customer_id, message_id, session_id, request, created_at, next_attempt_at) VALUES ($1, 'demo', $2, 'm-1', $3, $4, $5, 0)")
                .bind(format!("entry-{i}"))
                .bind(format!("customer-{i}"))
                .bind(format!("session-{i}"))
                .bind(CreateTicketRequest::default().encode_to_vec())
                .bind(i as i64)
                .execute(db.pool())
                .await
                .unwrap();
        }
        let (ticket_url, _held) = hung_ticket_service().await;
        let clients = kefu_runtime::ClientArgs {
            call_timeout_ms: CALL_TIMEOUT_MS,
            ..Default::default()
        };
        let connect =
            kefu_runtime::Connector::new("test", &clients, &kefu_runtime::TlsArgs::default())
                .unwrap();
        let opener = TicketOpener {
            outbox: Arc::new(SqlConversationStore::new(db.clone())),
            tickets: TicketServiceClient::new(connect.channel("kefu-ticket", &ticket_url).unwrap()),
            policy: RetryPolicy::new(8, 60_000),
            lease_ms: LEASE_MS_HERE,
        };

        // Two replicas' drainers look every 100 ms, for less time than a failed entry
        // waits before its next attempt (5 s while the ticket service is unreachable).
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let opener = opener.clone();
                tokio::spawn(async move {
                    let until = tokio::time::Instant::now() + Duration::from_secs(3);
                    while tokio::time::Instant::now() < until {
                        assert_eq!(opener.drain().await.unwrap(), 0, "no ticket can open");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        for replica in replicas {
            replica.await.unwrap();
        }

        let attempts: Vec<(String, i64)> =
            sqlx::query_as("SELECT outbox_id, attempts FROM ticket_outbox ORDER BY outbox_id")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert_eq!(attempts.len(), ENTRIES);
        for (outbox_id, attempts) in attempts {
            assert_eq!(attempts, 1, "{outbox_id} was tried {attempts} times");
        }
    }
}

//! Following a session: its stored events from a cursor on, then each new one as it is
//! written. The table is the record and the bus only a wake-up, so an event is sent
//! once, in order, whether it was announced, announced on another replica, or missed
//! while the stream was away (the client resumes with the last event id it saw).
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kefu_proto::v1::{conversation_event, AgentReply, ConversationEvent, HandlerChange};
use kefu_runtime::Shutdown;
use kefu_storage::{now_millis, ConversationStore, EventBus, EventKind, EventRecord};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ConversationEvent, Status>> + Send>>;

const SERVICE: &str = "kefu-orchestrator";
/// Events read from the table at a time.
const PAGE: i64 = 100;
/// Without any wake-up (a notification lost while the listener reconnects) the table
/// is read again after this long.
const FALLBACK_POLL: Duration = Duration::from_secs(2);
/// Events buffered for a slow client before the reader waits for it.
const BUFFER: usize = 16;

pub fn to_proto(event: EventRecord) -> ConversationEvent {
    let kind = match event.kind {
        EventKind::AgentReply { author, text } => {
            conversation_event::Kind::AgentReply(AgentReply {
                agent_id: author,
                text,
                ticket_id: event.ticket_id,
            })
        }
        EventKind::HandlerChange { handler } => {
            conversation_event::Kind::HandlerChange(HandlerChange {
                handler,
                ticket_id: event.ticket_id,
            })
        }
    };
    ConversationEvent {
        event_id: event.event_id,
        at: Some(kefu_proto::timestamp_from_millis(event.at)),
        session_id: event.session_id,
        kind: Some(kind),
    }
}

fn kind_label(event: &EventRecord) -> &'static str {
    match event.kind {
        EventKind::AgentReply { .. } => "agent_reply",
        EventKind::HandlerChange { .. } => "handler_change",
    }
}

/// Streams the session's events after `after_event_id` until the client leaves or the
/// server shuts down (the client then resumes on another replica).
pub fn follow(
    store: Arc<dyn ConversationStore>,
    bus: &EventBus,
    tenant_id: String,
    session_id: String,
    after_event_id: i64,
    shutdown: Shutdown,
) -> EventStream {
    let (sender, mut receiver) = mpsc::channel(BUFFER);
    // Subscribed before the first read, so nothing written in between goes unnoticed.
    let mut wake = bus.subscribe();
    tokio::spawn(async move {
        let key = EventBus::key(&tenant_id, &session_id);
        let mut cursor = after_event_id;
        loop {
            let events = match store
                .events_after(&tenant_id, &session_id, cursor, PAGE)
                .await
            {
                Ok(events) => events,
                Err(error) => {
                    // The client keeps its cursor and reconnects; nothing is skipped.
                    let _ = sender.send(Err(Status::from(error))).await;
                    return;
                }
            };
            let full_page = events.len() as i64 == PAGE;
            for event in events {
                cursor = event.event_id;
                let kind = kind_label(&event);
                let delay = (now_millis() - event.at).max(0) as f64 / 1000.0;
                if sender.send(Ok(to_proto(event))).await.is_err() {
                    return;
                }
                metrics::counter!("kefu_conversation_events_delivered_total", "service" => SERVICE, "kind" => kind).increment(1);
                metrics::histogram!("kefu_event_delivery_seconds", "service" => SERVICE, "kind" => kind).record(delay);
            }
            if full_page {
                continue;
            }
            tokio::select! {
                _ = woken_for(&mut wake, &key) => {}
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
                _ = sender.closed() => return,
                _ = shutdown.wait() => return,
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)))
}

/// Returns when `key` is announced, or when announcements were missed (read anyway).
async fn woken_for(wake: &mut broadcast::Receiver<String>, key: &str) {
    loop {
        match wake.recv().await {
            Ok(announced) if announced == key => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

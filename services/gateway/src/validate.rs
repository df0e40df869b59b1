//! Each public request bounded and completed before it is forwarded: ids and texts
//! within their limits, enums known, and idempotency keys assigned here, before the
//! first attempt, so that a retry is the same request.
use kefu_proto::v1::*;
use tonic::Status;

const MAX_ID_CHARS: usize = 128;

pub fn bounded_id(value: &str, field: &str, required: bool) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.chars().count() > MAX_ID_CHARS || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} must be at most {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(())
}

fn known_channel(channel: i32) -> Result<(), Status> {
    Channel::try_from(channel)
        .map(drop)
        .map_err(|_| Status::invalid_argument(format!("unknown channel {channel}")))
}

/// An idempotency key where the client sent none.
fn assign_id(id: &mut String) {
    if id.is_empty() {
        *id = uuid::Uuid::now_v7().to_string();
    }
}

/// How long texts may be.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
}

impl Limits {
    fn required_id(&self, id: &str, field: &str) -> Result<(), Status> {
        bounded_id(id, field, true)
    }

    fn optional_id(&self, id: &str, field: &str) -> Result<(), Status> {
        bounded_id(id, field, false)
    }

    /// A text someone must have written: not blank, within the limit.
    fn text(&self, text: &str, field: &str) -> Result<(), Status> {
        if text.trim().is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field} must not be empty"
            )));
        }
        self.note(text, field)
    }

    /// A text that may be empty, within the limit.
    fn note(&self, text: &str, field: &str) -> Result<(), Status> {
        if text.len() > self.max_message_bytes {
            return Err(Status::invalid_argument(format!(
                "{field} is {} bytes; the limit is {} bytes",
                text.len(),
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

/// A public request checked and completed for forwarding.
pub trait Prepare {
    fn prepare(&mut self, limits: &Limits) -> Result<(), Status>;
}

/// Requests whose fields need only be within bounds: each field with the `Limits`
/// check it passes.
macro_rules! bounded {
    ($($request:ident { $($field:ident: $check:ident),* })*) => {$(
        impl Prepare for $request {
            fn prepare(&mut self, _limits: &Limits) -> Result<(), Status> {
                $(_limits.$check(&self.$field, stringify!($field))?;)*
                Ok(())
            }
        }
    )*};
}

bounded! {
    GetSessionRequest { session_id: required_id }
    StreamEventsRequest { session_id: required_id }
    RateConversationRequest { ticket_id: required_id }
    GetTicketRequest { ticket_id: required_id }
    ListTicketsRequest { customer_id: optional_id }
    NextInQueueRequest { assignee: optional_id }
    TransitionTicketRequest { ticket_id: required_id, comment: note }
    GetCustomerRequest { customer_id: required_id }
    GetConversationRequest { ticket_id: required_id }
    RaisePriorityRequest { ticket_id: required_id, reason: note }
    DeleteDocumentRequest { document_id: required_id }
    ReindexRequest {}
    ReloadTenantRequest {}
    ListDeadLettersRequest {}
    RetryDeadLetterRequest { outbox_id: required_id }
    GetSupportReportRequest {}
    ListKnowledgeGapsRequest {}
    ListDeliveriesRequest { session_id: required_id }
}

impl Prepare for SendMessageRequest {
    fn prepare(&mut self, limits: &Limits) -> Result<(), Status> {
        bounded_id(&self.customer_id, "customer_id", true)?;
        bounded_id(&self.session_id, "session_id", false)?;
        bounded_id(&self.message_id, "message_id", false)?;
        known_channel(self.channel)?;
        limits.text(&self.text, "text")?;
        assign_id(&mut self.message_id);
        Ok(())
    }
}

/// Every field of a ticket is shown in lists and the console: all are bounded.
impl Prepare for CreateTicketRequest {
    fn prepare(&mut self, limits: &Limits) -> Result<(), Status> {
        bounded_id(&self.customer_id, "customer_id", true)?;
        bounded_id(&self.session_id, "session_id", false)?;
        bounded_id(&self.idempotency_key, "idempotency_key", false)?;
        bounded_id(&self.intent, "intent", false)?;
        bounded_id(&self.escalation_reason, "escalation_reason", false)?;
        limits.text(&self.subject, "subject")?;
        limits.note(&self.description, "description")?;
        known_channel(self.channel)?;
        if Priority::try_from(self.priority).is_err() {
            return Err(Status::invalid_argument(format!(
                "unknown priority {}",
                self.priority
            )));
        }
        assign_id(&mut self.idempotency_key);
        Ok(())
    }
}

impl Prepare for UpsertCustomerRequest {
    fn prepare(&mut self, _: &Limits) -> Result<(), Status> {
        let customer = self
            .customer
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("customer is required"))?;
        bounded_id(&customer.customer_id, "customer.customer_id", true)?;
        bounded_id(&customer.display_name, "customer.display_name", false)
    }
}

impl Prepare for ReplyToCustomerRequest {
    fn prepare(&mut self, limits: &Limits) -> Result<(), Status> {
        bounded_id(&self.ticket_id, "ticket_id", true)?;
        bounded_id(&self.request_id, "request_id", false)?;
        limits.text(&self.text, "text")?;
        // With a key assigned before the first attempt, a retried reply is stored once.
        assign_id(&mut self.request_id);
        Ok(())
    }
}

impl Prepare for IngestDocumentsRequest {
    fn prepare(&mut self, _: &Limits) -> Result<(), Status> {
        self.documents
            .iter()
            .try_for_each(|document| bounded_id(&document.document_id, "document_id", false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_identifiers() {
        assert!(bounded_id("", "customer_id", true).is_err());
        assert!(bounded_id("", "session_id", false).is_ok());
        assert!(bounded_id(&"x".repeat(129), "customer_id", true).is_err());
        assert!(bounded_id("a\u{0}b", "customer_id", true).is_err());
        assert!(bounded_id("c-42", "customer_id", true).is_ok());
    }

    #[test]
    fn a_message_gets_an_id_before_it_is_forwarded_and_keeps_its_own() {
        let limits = Limits {
            max_message_bytes: 16,
        };
        let mut message = SendMessageRequest {
            customer_id: "c-1".into(),
            text: "hello".into(),
            ..Default::default()
        };
        message.prepare(&limits).unwrap();
        assert!(!message.message_id.is_empty());
        let mut retried = SendMessageRequest {
            message_id: "m-1".into(),
            ..message.clone()
        };
        retried.prepare(&limits).unwrap();
        assert_eq!(retried.message_id, "m-1");
        message.text = "x".repeat(17);
        assert_eq!(
            message.prepare(&limits).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}

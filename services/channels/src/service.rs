//! The gRPC side: a session's channel messages with their delivery status, for the
//! tenant's agents and admins (the gateway admits them; the principal it forwards is
//! checked again here, as every internal service does).
use kefu_proto::v1::channel_service_server::ChannelService;
use kefu_proto::v1::{
    Delivery, DeliveryDirection, DeliveryStatus, ListDeliveriesRequest, ListDeliveriesResponse,
    Role,
};
use kefu_runtime::Principal;
use kefu_storage::channels::{ChannelMessage, Direction, MessageStatus, SqlChannels};
use tonic::{Request, Response, Status};

use crate::relay::ChannelKind;

/// More than a session's messages ever are; the list is bounded all the same.
const MAX_LISTED: i64 = 500;

pub struct Deliveries(pub SqlChannels);

fn delivery(message: ChannelMessage) -> Delivery {
    Delivery {
        delivery_id: message.message_id,
        channel: ChannelKind::parse(&message.channel).map_or(0, |kind| kind.channel() as i32),
        direction: match message.direction {
            Direction::In => DeliveryDirection::Inbound,
            Direction::Out => DeliveryDirection::Outbound,
        } as i32,
        status: match message.status {
            MessageStatus::Pending => DeliveryStatus::Pending,
            MessageStatus::Done => DeliveryStatus::Delivered,
            MessageStatus::Dead => DeliveryStatus::Failed,
        } as i32,
        role: match message.role.as_str() {
            "customer" => Role::Customer,
            "bot" => Role::Bot,
            "agent" => Role::Agent,
            _ => Role::Unspecified,
        } as i32,
        attempts: message.attempts,
        last_error: message.last_error,
        created_at: Some(kefu_proto::timestamp_from_millis(message.created_at)),
        delivered_at: match message.status {
            MessageStatus::Done => message.done_at.map(kefu_proto::timestamp_from_millis),
            _ => None,
        },
    }
}

#[tonic::async_trait]
impl ChannelService for Deliveries {
    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let principal = Principal::from_metadata(request.metadata())
            .ok_or_else(|| Status::unauthenticated("no principal: call through the gateway"))?;
        let request = request.into_inner();
        if principal.tenant_id != request.tenant_id || !principal.is_staff() {
            return Err(Status::permission_denied(
                "only the tenant's agents and admins see deliveries",
            ));
        }
        if request.session_id.trim().is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let channel = self
            .0
            .session_channel(&request.tenant_id, &request.session_id)
            .await?;
        let messages = self
            .0
            .deliveries(&request.tenant_id, &request.session_id, MAX_LISTED)
            .await?;
        Ok(Response::new(ListDeliveriesResponse {
            channel: channel
                .as_deref()
                .and_then(ChannelKind::parse)
                .map_or(0, |kind| kind.channel() as i32),
            deliveries: messages.into_iter().map(delivery).collect(),
        }))
    }
}

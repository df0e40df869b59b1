//! Who is calling. The gateway authenticates every public call once and passes the
//! principal to the internal services in call metadata; they take the actor of an
//! audit entry or a reply from it, never from a request field. Internal services are
//! reachable only by kefu services, so the metadata cannot come from a customer: the
//! gateway builds every downstream request itself and forwards no client metadata.
use serde::{Deserialize, Serialize};
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

/// Binary metadata key (tonic base64-encodes `-bin` values on the wire).
pub const PRINCIPAL_METADATA: &str = "x-kefu-principal-bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A customer, through an open tenant or a customer-app key.
    Customer,
    /// A human agent working the queue.
    Agent,
    /// An agent who also manages the tenant (VIP tiers, knowledge, intents).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Agent => "agent",
            Self::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant_id: String,
    pub role: Role,
    /// The API key's id from the tenant file; empty for a customer of an open tenant.
    pub key_id: String,
    /// Agents and admins: the person recorded as actor. Customers: the customer id.
    pub actor: String,
}

impl Principal {
    /// Adds the principal to the metadata of an outgoing call.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        if let Ok(bytes) = serde_json::to_vec(self) {
            metadata.insert_bin(PRINCIPAL_METADATA, BinaryMetadataValue::from_bytes(&bytes));
        }
    }

    /// The principal an incoming call carries, if any.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        let value = metadata.get_bin(PRINCIPAL_METADATA)?;
        serde_json::from_slice(&value.to_bytes().ok()?).ok()
    }

    /// Whether this principal may act as staff (agent or admin).
    pub fn is_staff(&self) -> bool {
        self.role >= Role::Agent
    }

    /// A request carrying this principal.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.attach(request.metadata_mut());
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travels_in_metadata() {
        let principal = Principal {
            tenant_id: "demo".into(),
            role: Role::Agent,
            key_id: "desk".into(),
            actor: "安娜".into(),
        };
        let mut metadata = MetadataMap::new();
        assert_eq!(Principal::from_metadata(&metadata), None);
        principal.attach(&mut metadata);
        assert_eq!(Principal::from_metadata(&metadata), Some(principal.clone()));
        assert!(principal.is_staff());
        metadata.insert_bin(PRINCIPAL_METADATA, BinaryMetadataValue::from_bytes(b"{"));
        assert_eq!(
            Principal::from_metadata(&metadata),
            None,
            "garbage is no principal"
        );
    }
}

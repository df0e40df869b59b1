//! Who may call what, decided once for every public RPC: the rules, readable and
//! tested without gRPC. The gateway turns the outcome into a status, a metric and a log
//! line; the internal services receive the [`Principal`] and never a request's word for
//! who is acting.
use kefu_runtime::{Principal, Role};
use kefu_tenant::{KeyRole, Tenants};

/// The least an RPC needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The customer's own conversation: SendMessage, StreamEvents, RateConversation.
    Customer,
    /// A customer's own session, or any session for agents: GetSession.
    CustomerOrStaff,
    /// The queue and tickets: agents and admins.
    Staff,
    /// The tenant's VIP tiers, knowledge and intents.
    Admin,
}

/// What a caller presented.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    /// From `authorization: Bearer <key>` or `x-api-key`.
    pub key: Option<&'a str>,
    /// `x-kefu-customer-hash`, where the tenant verifies customer ids.
    pub customer_hash: Option<&'a str>,
}

/// Why a call was refused; `reason` labels the failure metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No valid key: the same answer for an unknown tenant, so a caller without a key
    /// learns nothing about which tenants exist.
    Unauthenticated { reason: &'static str },
    /// Known caller, not allowed here.
    PermissionDenied { reason: &'static str },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated { reason } | Self::PermissionDenied { reason } => reason,
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated { .. } => tonic::Status::unauthenticated(
                "a valid API key for this tenant is required (authorization: Bearer <key> or x-api-key)",
            ),
            Refusal::PermissionDenied { reason } => tonic::Status::permission_denied(match reason {
                "wrong_role" => "this key's role may not call this method",
                "wrong_tenant" => "this key belongs to another tenant",
                _ => "the customer could not be verified (x-kefu-customer-hash)",
            }),
        }
    }
}

const MISSING_KEY: Refusal = Refusal::Unauthenticated {
    reason: "missing_key",
};

/// Decides whether the caller may make a call of `access` on `tenant_id`; for customer
/// access, `customer_id` is the customer the request acts for. `secret` reads the
/// environment variable a tenant names for customer verification.
pub fn authenticate(
    tenants: &Tenants,
    tenant_id: &str,
    credentials: Credentials<'_>,
    access: Access,
    customer_id: &str,
    secret: impl Fn(&str) -> Option<String>,
) -> Result<Principal, Refusal> {
    let tenant = tenants.get(tenant_id);
    // The customer-app key the caller used, if any (staff keys return early).
    let app_key = match credentials.key {
        Some(key) => {
            let Some(entry) = tenant.as_ref().and_then(|t| t.find_key(key)) else {
                return Err(if tenants.find_key(key).is_some() {
                    Refusal::PermissionDenied {
                        reason: "wrong_tenant",
                    }
                } else {
                    Refusal::Unauthenticated {
                        reason: "invalid_key",
                    }
                });
            };
            let role = match entry.role {
                KeyRole::CustomerApp => Role::Customer,
                KeyRole::Agent => Role::Agent,
                KeyRole::Admin => Role::Admin,
            };
            if role != Role::Customer {
                let allowed = match access {
                    Access::Customer => false,
                    Access::CustomerOrStaff | Access::Staff => true,
                    Access::Admin => role == Role::Admin,
                };
                if !allowed {
                    return Err(Refusal::PermissionDenied {
                        reason: "wrong_role",
                    });
                }
                return Ok(Principal {
                    tenant_id: tenant_id.to_owned(),
                    role,
                    key_id: entry.id.clone(),
                    actor: entry.actor().to_owned(),
                });
            }
            Some(entry.id.clone())
        }
        // Without a key only a customer of an open tenant gets through.
        None => match &tenant {
            Some(tenant) if !tenant.customers_need_key() => None,
            _ => return Err(MISSING_KEY),
        },
    };
    if matches!(access, Access::Staff | Access::Admin) {
        return Err(if app_key.is_some() {
            Refusal::PermissionDenied {
                reason: "wrong_role",
            }
        } else {
            MISSING_KEY
        });
    }
    // A customer acts for one customer id, verified where the tenant asks for it.
    let tenant = tenant.expect("a customer was admitted on an existing tenant");
    if let Some(variable) = &tenant.customer_hmac_secret_env {
        let Some(hash) = credentials.customer_hash else {
            return Err(Refusal::Unauthenticated {
                reason: "bad_customer_hash",
            });
        };
        let verified = secret(variable)
            .is_some_and(|secret| kefu_tenant::customer_hash_matches(&secret, customer_id, hash));
        if !verified {
            return Err(Refusal::PermissionDenied {
                reason: "bad_customer_hash",
            });
        }
    }
    Ok(Principal {
        tenant_id: tenant_id.to_owned(),
        role: Role::Customer,
        key_id: app_key.unwrap_or_default(),
        actor: customer_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn tenants(dir: &std::path::Path) -> Tenants {
        let key = |k: &str| hex::encode(<Sha256 as sha2::Digest>::digest(k.as_bytes()));
        for (id, extra) in [
            (
                "shop",
                format!(
                    "customer_hmac_secret_env = \"SHOP_SECRET\"\n[[api_keys]]\nid = \"widget\"\nrole = \"customer_app\"\nsha256 = \"{}\"\n[[api_keys]]\nid = \"desk\"\nrole = \"agent\"\nsha256 = \"{}\"\nagent = \"anna\"\n[[api_keys]]\nid = \"boss\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
                    key("widget-key"),
                    key("agent-key"),
                    key("admin-key")
                ),
            ),
            ("open", String::new()),
        ] {
            std::fs::create_dir_all(dir.join(id)).unwrap();
            std::fs::write(
                dir.join(id).join("tenant.toml"),
                format!("id = \"{id}\"\nname = \"{id}\"\n{extra}[[intents]]\nname = \"greeting\"\nroute = \"answer\"\nurgency = \"low\"\nexamples = [\"hi\"]\n"),
            )
            .unwrap();
        }
        Tenants::load_dir(dir).unwrap()
    }

    fn hash(customer: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(customer.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn check(
        tenants: &Tenants,
        tenant: &str,
        key: Option<&str>,
        customer_hash: Option<&str>,
        access: Access,
    ) -> Result<Principal, Refusal> {
        authenticate(
            tenants,
            tenant,
            Credentials { key, customer_hash },
            access,
            "c-1",
            |name| (name == "SHOP_SECRET").then(|| "s3cret".to_owned()),
        )
    }

    #[test]
    fn roles_reach_what_they_may_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = tenants(dir.path());
        let good = hash("c-1");
        let customer = Some(good.as_str());
        let unauthenticated = |reason| Err(Refusal::Unauthenticated { reason });
        let denied = |reason| Err(Refusal::PermissionDenied { reason });

        // Open tenant: customers without a key, never staff without one.
        assert_eq!(
            check(&tenants, "open", None, None, Access::Customer)
                .unwrap()
                .actor,
            "c-1"
        );
        assert_eq!(
            check(&tenants, "open", None, None, Access::Staff),
            unauthenticated("missing_key")
        );
        // Unknown tenant and bad key look the same.
        assert_eq!(
            check(&tenants, "nope", None, None, Access::Customer),
            unauthenticated("missing_key")
        );
        assert_eq!(
            check(&tenants, "open", Some("junk"), None, Access::Customer),
            unauthenticated("invalid_key")
        );
        assert_eq!(
            check(&tenants, "nope", Some("junk"), None, Access::Staff),
            unauthenticated("invalid_key")
        );
        // A key of another tenant is known but not allowed here.
        assert_eq!(
            check(&tenants, "open", Some("agent-key"), None, Access::Staff),
            denied("wrong_tenant")
        );

        // Closed tenant: customers need the app key and a verified customer id.
        assert_eq!(
            check(&tenants, "shop", None, customer, Access::Customer),
            unauthenticated("missing_key")
        );
        let principal = check(
            &tenants,
            "shop",
            Some("widget-key"),
            customer,
            Access::Customer,
        )
        .unwrap();
        assert_eq!(
            (principal.role, principal.key_id.as_str()),
            (Role::Customer, "widget")
        );
        assert_eq!(
            check(&tenants, "shop", Some("widget-key"), None, Access::Customer),
            unauthenticated("bad_customer_hash")
        );
        let other = hash("c-2");
        assert_eq!(
            check(
                &tenants,
                "shop",
                Some("widget-key"),
                Some(&other),
                Access::Customer
            ),
            denied("bad_customer_hash")
        );
        assert_eq!(
            check(
                &tenants,
                "shop",
                Some("widget-key"),
                customer,
                Access::Staff
            ),
            denied("wrong_role")
        );

        // Agents: the queue and any session, not the customer's own RPCs, not admin.
        let agent = check(&tenants, "shop", Some("agent-key"), None, Access::Staff).unwrap();
        assert_eq!(
            (agent.role, agent.actor.as_str(), agent.key_id.as_str()),
            (Role::Agent, "anna", "desk")
        );
        assert!(check(
            &tenants,
            "shop",
            Some("agent-key"),
            None,
            Access::CustomerOrStaff
        )
        .is_ok());
        assert_eq!(
            check(&tenants, "shop", Some("agent-key"), None, Access::Customer),
            denied("wrong_role")
        );
        assert_eq!(
            check(&tenants, "shop", Some("agent-key"), None, Access::Admin),
            denied("wrong_role")
        );
        // Admins: everything staff may, plus admin; the actor defaults to the key id.
        let admin = check(&tenants, "shop", Some("admin-key"), None, Access::Admin).unwrap();
        assert_eq!((admin.role, admin.actor.as_str()), (Role::Admin, "boss"));
        assert!(check(&tenants, "shop", Some("admin-key"), None, Access::Staff).is_ok());
    }
}

//! `kefu_gateway::authenticate`: whatever a caller presents, the outcome follows the
//! table of who may do what (README): keys act only on their own tenant and within
//! their role, customers of a tenant with keys need the app key and, where the tenant
//! verifies them, the HMAC of their own id.
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use kefu_gateway::{authenticate, Access, Credentials, Refusal};
use kefu_runtime::Role;
use kefu_tenant::Tenants;
use sha2::{Digest, Sha256};

const SECRET_ENV: &str = "SHOP_SECRET";
const SECRET: &str = "s3cret";
/// (key, tenant, role) of every key the tenants know.
const KEYS: [(&str, &str, Role); 4] = [
    ("widget-key", "shop", Role::Customer),
    ("agent-key", "shop", Role::Agent),
    ("admin-key", "shop", Role::Admin),
    ("other-agent-key", "other", Role::Agent),
];
const TENANTS: [&str; 3] = ["open", "shop", "other"];

/// `open`: no keys; `shop`: an app key with verified customer ids, an agent and an
/// admin; `other`: an agent key only, so its customers need no key either.
fn tenants() -> &'static Tenants {
    static LOADED: OnceLock<Tenants> = OnceLock::new();
    LOADED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for tenant in TENANTS {
            let mut text = format!("id = \"{tenant}\"\nname = \"{tenant}\"\n");
            if tenant == "shop" {
                text += &format!("customer_hmac_secret_env = \"{SECRET_ENV}\"\n");
            }
            for (n, (key, _, role)) in KEYS.iter().enumerate().filter(|k| k.1 .1 == tenant) {
                let role = match role {
                    Role::Customer => "customer_app",
                    Role::Agent => "agent",
                    _ => "admin",
                };
                let digest = hex::encode(Sha256::digest(key.as_bytes()));
                text += &format!("[[api_keys]]\nid = \"k{n}\"\nrole = \"{role}\"\nsha256 = \"{digest}\"\n");
            }
            text += "[[intents]]\nname = \"greeting\"\nroute = \"answer\"\nurgency = \"low\"\nexamples = [\"hi\"]\n";
            std::fs::create_dir_all(dir.path().join(tenant)).expect("a tenant directory");
            std::fs::write(dir.path().join(tenant).join("tenant.toml"), text).expect("a tenant file");
        }
        Tenants::load_dir(dir.path()).expect("the tenants load")
    })
}

fn customer_hash(customer_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(customer_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A value a caller may send: one the tenants know, or anything.
#[derive(Arbitrary, Debug)]
enum Pick<'a> {
    Known(u8),
    Any(&'a str),
}

#[derive(Arbitrary, Debug)]
enum Hash<'a> {
    None,
    /// The right HMAC, possibly upper-case or padded.
    Valid {
        upper: bool,
        padded: bool,
    },
    Any(&'a str),
}

#[derive(Arbitrary, Debug)]
pub struct Call<'a> {
    tenant: Pick<'a>,
    key: Option<Pick<'a>>,
    hash: Hash<'a>,
    access: u8,
    customer_id: &'a str,
    secret_set: bool,
}

pub fn check(call: Call<'_>) {
    let tenant_id = match call.tenant {
        Pick::Known(n) => TENANTS[usize::from(n) % TENANTS.len()],
        Pick::Any(s) => s,
    };
    let key = call.key.map(|key| match key {
        Pick::Known(n) => KEYS[usize::from(n) % KEYS.len()].0,
        Pick::Any(s) => s,
    });
    let valid_hash = customer_hash(call.customer_id);
    let hash = match call.hash {
        Hash::None => None,
        Hash::Valid { upper, padded } => {
            let hash = if upper {
                valid_hash.to_uppercase()
            } else {
                valid_hash.clone()
            };
            Some(if padded { format!(" {hash} ") } else { hash })
        }
        Hash::Any(s) => Some(s.to_owned()),
    };
    let access = [
        Access::Customer,
        Access::CustomerOrStaff,
        Access::Staff,
        Access::Admin,
    ][usize::from(call.access % 4)];
    let outcome = authenticate(
        tenants(),
        tenant_id,
        Credentials {
            key,
            customer_hash: hash.as_deref(),
        },
        access,
        call.customer_id,
        |variable| (call.secret_set && variable == SECRET_ENV).then(|| SECRET.to_owned()),
    );

    let known = key.and_then(|key| KEYS.iter().find(|k| k.0 == key));
    let principal = match outcome {
        Ok(principal) => principal,
        Err(refusal) => {
            match known {
                // A key of no tenant and a missing one say nothing about the tenant.
                None => assert!(
                    matches!(refusal, Refusal::Unauthenticated { .. }),
                    "{refusal:?}"
                ),
                Some(&(_, owner, _)) if owner != tenant_id => assert_eq!(
                    refusal,
                    Refusal::PermissionDenied {
                        reason: "wrong_tenant"
                    }
                ),
                Some(_) => {}
            }
            return;
        }
    };
    assert_eq!(principal.tenant_id, tenant_id);
    assert!(
        TENANTS.contains(&tenant_id),
        "admitted on unknown tenant {tenant_id:?}"
    );
    match known {
        Some(&(_, owner, role)) => {
            assert_eq!(owner, tenant_id, "a key admitted on another tenant");
            assert_eq!(principal.role, role);
        }
        None => {
            assert!(key.is_none(), "admitted with an unknown key");
            let open = !KEYS
                .iter()
                .any(|k| k.1 == tenant_id && k.2 == Role::Customer);
            assert!(open, "admitted without a key on {tenant_id}");
            assert_eq!(principal.role, Role::Customer);
        }
    }
    let allowed = match access {
        Access::Customer => principal.role == Role::Customer,
        Access::CustomerOrStaff => true,
        Access::Staff => principal.role != Role::Customer,
        Access::Admin => principal.role == Role::Admin,
    };
    assert!(allowed, "{:?} admitted for {access:?}", principal.role);
    if principal.role == Role::Customer {
        assert_eq!(principal.actor, call.customer_id);
        if tenant_id == "shop" {
            let hash = hash.as_deref().map(str::trim).map(str::to_lowercase);
            assert!(call.secret_set, "a customer verified without the secret");
            assert_eq!(
                hash.as_deref(),
                Some(valid_hash.as_str()),
                "an unverified customer"
            );
        }
    }
}

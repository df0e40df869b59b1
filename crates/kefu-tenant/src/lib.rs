//! Tenants are data: `tenants/<id>/tenant.toml` (identity, API keys, intents with
//! examples, routes and urgencies) and `tenants/<id>/docs/*.md` (help articles).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

mod channels;
mod customer_hash;
mod escalation;

pub use channels::{
    Channels, EmailChannel, SecretRef, SmtpRelay, SmtpTls, WebhookChannel, WechatChannel,
};
pub use customer_hash::{customer_hash, customer_hash_matches};

pub use escalation::{
    CueEffect, CueList, EscalationPolicy, EscalationReason, EscalationSection, Negation, Negators,
    Phrases, QuestionMarkers, QuestionPhrases,
};

/// What the tenant wants done with an intent.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Answer from the knowledge base.
    Answer,
    /// Answer if possible and open a ticket.
    Ticket,
    /// Hand the customer to a human.
    Human,
    /// Hand the customer to a human when the message reads negative or as needing a
    /// person; otherwise answer.
    HumanIfNegative,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Low,
    Medium,
    High,
    Urgent,
}

/// What an API key lets its holder do.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// A customer-facing app (web widget, mobile app): the customer RPCs.
    CustomerApp,
    /// A human agent: the queue, tickets, replies to customers.
    Agent,
    /// An agent who also manages the tenant: VIP tiers, knowledge, intents.
    Admin,
}

/// One `[[api_keys]]` entry of a tenant. Only the key's SHA-256 digest is stored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Recorded in the audit trail.
    pub id: String,
    pub role: KeyRole,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Agent and admin keys: the person recorded as actor (default: `id`).
    #[serde(default)]
    pub agent: Option<String>,
}

impl ApiKey {
    /// Who acts with this key in the audit trail and on replies.
    pub fn actor(&self) -> &str {
        self.agent.as_deref().unwrap_or(&self.id)
    }

    fn matches(&self, digest: &[u8; 32]) -> bool {
        let Ok(stored) = hex::decode(&self.sha256) else {
            return false;
        };
        // Constant time over the digest, so timing tells nothing about stored keys.
        stored.len() == digest.len()
            && stored
                .iter()
                .zip(digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// `[rate_limit]`: a sustained rate with a burst on top, shared by all gateway replicas.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// Fixed replies of an intent, per language.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Replies {
    pub en: Option<String>,
    pub zh: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IntentDefinition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub route: Route,
    pub urgency: Urgency,
    pub examples: Vec<String>,
    #[serde(default)]
    pub reply: Option<Replies>,
}

/// A help article of the tenant's knowledge base.
#[derive(Clone, Debug)]
pub struct Article {
    /// File stem, e.g. `refunds.en`.
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    #[serde(default = "default_language")]
    pub default_language: String,
    /// The tenant's API keys. Without a `customer_app` key the customer RPCs are open;
    /// agent and admin RPCs always need a key of that role.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// When set, customer RPCs must carry `x-kefu-customer-hash`, the hex
    /// HMAC-SHA256 of the customer id under the secret in this environment variable.
    #[serde(default)]
    pub customer_hmac_secret_env: Option<String>,
    /// Web origins (e.g. "https://shop.example.com") whose pages may call kefu from the
    /// browser over gRPC-Web, in addition to the gateway's own pages.
    #[serde(default)]
    pub web_origins: Vec<String>,
    /// Requests the tenant may make through the gateway; no section: unlimited.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    pub intents: Vec<IntentDefinition>,
    /// Outside channels (signed webhooks, WeChat) and where their replies go.
    #[serde(default)]
    pub channels: Channels,
    /// When a customer goes to a human: cue phrases and sentiment thresholds over kefu's
    /// defaults ([`EscalationPolicy`]).
    #[serde(default, rename = "escalation")]
    escalation_section: EscalationSection,
    /// The policy in force: the defaults with `[escalation]` laid over them.
    #[serde(skip)]
    pub escalation: EscalationPolicy,
    #[serde(skip)]
    pub articles: Vec<Article>,
    /// The `tenant.toml` text this tenant was read from (stored for other replicas).
    #[serde(skip)]
    pub source: String,
}

/// Parses TOML, with an error that names the line but does not quote it: the line may
/// hold a secret someone wrote inline by mistake, and errors reach the logs.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(source: &str) -> anyhow::Result<T> {
    toml::from_str(source).map_err(|error| {
        let line = error
            .span()
            .map(|span| source[..span.start.min(source.len())].matches('\n').count() + 1);
        match line {
            Some(line) => anyhow::anyhow!("line {line}: {}", error.message()),
            None => anyhow::anyhow!("{}", error.message()),
        }
    })
}

fn default_language() -> String {
    "en".into()
}

impl Tenant {
    /// Reads and validates a tenant definition (the text of a `tenant.toml`).
    pub fn parse(source: &str) -> anyhow::Result<Self> {
        let mut tenant: Tenant = from_toml(source)?;
        tenant.validate()?;
        tenant.escalation = EscalationPolicy::with(&tenant.escalation_section)
            .with_context(|| format!("tenant {}", tenant.id))?;
        tenant.source = source.to_owned();
        Ok(tenant)
    }

    pub fn intent(&self, name: &str) -> Option<&IntentDefinition> {
        self.intents.iter().find(|intent| intent.name == name)
    }

    /// (text, intent) pairs for training the router.
    pub fn training_examples(&self) -> Vec<(String, String)> {
        self.intents
            .iter()
            .flat_map(|intent| {
                intent
                    .examples
                    .iter()
                    .map(|example| (example.clone(), intent.name.clone()))
            })
            .collect()
    }

    /// Whether customers need an app key (the tenant has at least one).
    pub fn customers_need_key(&self) -> bool {
        self.api_keys
            .iter()
            .any(|key| key.role == KeyRole::CustomerApp)
    }

    /// The tenant's API key `key` is, compared by digest.
    pub fn find_key(&self, key: &str) -> Option<&ApiKey> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.api_keys.iter().find(|entry| entry.matches(&digest))
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            is_valid_id(&self.id),
            "tenant id {:?} must be 1-64 characters of [a-z0-9_-]",
            self.id
        );
        anyhow::ensure!(
            !self.intents.is_empty(),
            "tenant {} defines no intents",
            self.id
        );
        if let Some(limit) = &self.rate_limit {
            anyhow::ensure!(
                (MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND)
                    .contains(&limit.requests_per_second)
                    && limit.burst >= 1,
                "tenant {}: [rate_limit] needs requests_per_second between {MIN_REQUESTS_PER_SECOND} \
                 and {MAX_REQUESTS_PER_SECOND}, and burst >= 1",
                self.id
            );
        }
        self.channels
            .validate()
            .with_context(|| format!("tenant {}", self.id))?;
        let mut key_ids = std::collections::BTreeSet::new();
        for key in &self.api_keys {
            anyhow::ensure!(
                key_ids.insert(&key.id) && !key.id.trim().is_empty(),
                "tenant {}: api key id {:?} is empty or used twice",
                self.id,
                key.id
            );
            anyhow::ensure!(
                key.agent.as_deref().is_none_or(is_valid_actor),
                "tenant {}: api key {} needs an agent of 1-128 printable characters, not blank",
                self.id,
                key.id
            );
            anyhow::ensure!(
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "tenant {}: api key {} needs sha256 = the 64 hex digits of the key's SHA-256",
                self.id,
                key.id
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for intent in &self.intents {
            anyhow::ensure!(
                seen.insert(&intent.name),
                "tenant {}: intent {} defined twice",
                self.id,
                intent.name
            );
            anyhow::ensure!(
                !intent.examples.is_empty(),
                "tenant {}: intent {} has no examples",
                self.id,
                intent.name
            );
        }
        Ok(())
    }
}

/// A rate below one request in about 17 minutes is a typo, not a policy.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

/// An actor is recorded in every audit entry made with its key: blank would leave no trace.
fn is_valid_actor(actor: &str) -> bool {
    !actor.trim().is_empty() && actor.chars().count() <= 128 && !actor.chars().any(char::is_control)
}

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// All tenants of a deployment, by id.
#[derive(Clone, Debug, Default)]
pub struct Tenants(BTreeMap<String, Arc<Tenant>>);

impl Tenants {
    /// Loads every `<dir>/<id>/tenant.toml` with its `docs/`.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut tenants = BTreeMap::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the tenants directory {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.join("tenant.toml").is_file() {
                let tenant = load_tenant(&path)?;
                tenants.insert(tenant.id.clone(), Arc::new(tenant));
            }
        }
        anyhow::ensure!(
            !tenants.is_empty(),
            "no tenant found in {} (expected <id>/tenant.toml)",
            dir.display()
        );
        let mut mailboxes = BTreeMap::new();
        for tenant in tenants.values() {
            if let Some(email) = &tenant.channels.email {
                if let Some(other) =
                    mailboxes.insert(email.address.to_lowercase(), tenant.id.clone())
                {
                    anyhow::bail!(
                        "tenants {other} and {} both take mail for {}",
                        tenant.id,
                        email.address
                    );
                }
            }
        }
        Ok(Self(tenants))
    }

    /// The tenant whose support address `address` is (any case).
    pub fn by_mail_address(&self, address: &str) -> Option<Arc<Tenant>> {
        self.0
            .values()
            .find(|tenant| {
                tenant
                    .channels
                    .email
                    .as_ref()
                    .is_some_and(|email| email.address.eq_ignore_ascii_case(address))
            })
            .cloned()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.0.get(id).cloned()
    }

    /// The tenant that has `key`, and the key's entry.
    pub fn find_key(&self, key: &str) -> Option<(Arc<Tenant>, ApiKey)> {
        self.0.values().find_map(|tenant| {
            tenant
                .find_key(key)
                .map(|entry| (tenant.clone(), entry.clone()))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn load_tenant(dir: &Path) -> anyhow::Result<Tenant> {
    let file = dir.join("tenant.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut tenant = Tenant::parse(&text).with_context(|| format!("in {}", file.display()))?;
    let docs = dir.join("docs");
    if docs.is_dir() {
        let mut paths: Vec<_> = std::fs::read_dir(&docs)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "txt")))
        {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let title = text
                .lines()
                .find_map(|line| line.strip_prefix("# "))
                .map(|t| t.trim().to_owned())
                .unwrap_or_else(|| id.clone());
            tenant.articles.push(Article { id, title, text });
        }
    }
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = r#"
id = "acme"
name = "Acme"
[[api_keys]]
id = "desk"
role = "agent"
sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
agent = "anna"
[[api_keys]]
id = "widget"
role = "customer_app"
sha256 = "7ad27016613c81b7f569b3456fcfd3ff34cd2e773fb79c15875f4a52188abc89"
[[intents]]
name = "greeting"
route = "answer"
urgency = "low"
examples = ["hi", "你好"]
reply = { en = "Hello!", zh = "您好！" }
[[intents]]
name = "complaint"
route = "human_if_negative"
urgency = "high"
examples = ["this is awful"]
"#;

    #[test]
    fn loads_a_tenant_directory_with_articles() {
        let dir = tempfile::tempdir().unwrap();
        let acme = dir.path().join("acme");
        std::fs::create_dir_all(acme.join("docs")).unwrap();
        std::fs::write(acme.join("tenant.toml"), TENANT).unwrap();
        std::fs::write(
            acme.join("docs/refunds.en.md"),
            "# Refunds\n\nWithin 14 days.",
        )
        .unwrap();
        let tenants = Tenants::load_dir(dir.path()).unwrap();
        let tenant = tenants.get("acme").unwrap();
        assert_eq!(tenant.intents.len(), 2);
        assert_eq!(
            tenant.intent("complaint").unwrap().route,
            Route::HumanIfNegative
        );
        assert_eq!(tenant.training_examples().len(), 3);
        assert_eq!(tenant.articles[0].title, "Refunds");
        assert_eq!(tenant.articles[0].id, "refunds.en");
        let desk = tenant.find_key("secret").unwrap();
        assert_eq!((desk.role, desk.actor()), (KeyRole::Agent, "anna"));
        assert_eq!(tenant.find_key("widget-key").unwrap().actor(), "widget");
        assert!(tenant.find_key("wrong").is_none());
        assert!(tenant.customers_need_key());
        assert_eq!(tenants.find_key("secret").unwrap().0.id, "acme");
        assert!(tenants.get("other").is_none());
    }

    #[test]
    fn rejects_invalid_definitions() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(
            bad.join("tenant.toml"),
            TENANT.replace("\"acme\"", "\"Not Valid\""),
        )
        .unwrap();
        let error = Tenants::load_dir(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("tenant id"), "{error:#}");
    }

    #[test]
    fn a_support_address_belongs_to_one_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let with_mailbox = |id: &str, address: &str| {
            let tenant = dir.path().join(id);
            std::fs::create_dir_all(&tenant).unwrap();
            let text = TENANT.replace("\"acme\"", &format!("\"{id}\""));
            let text = format!(
                "{text}\n[channels.email]\naddress = \"{address}\"\nrelay = {{ host = \"smtp.example\" }}\n"
            );
            std::fs::write(tenant.join("tenant.toml"), text).unwrap();
        };
        with_mailbox("acme", "support@acme.example");
        with_mailbox("shop", "help@shop.example");
        let tenants = Tenants::load_dir(dir.path()).unwrap();
        assert_eq!(
            tenants.by_mail_address("Support@ACME.example").unwrap().id,
            "acme"
        );
        assert!(tenants.by_mail_address("nobody@acme.example").is_none());
        with_mailbox("shop", "SUPPORT@acme.example");
        let error = Tenants::load_dir(dir.path()).unwrap_err();
        assert!(format!("{error:#}").contains("both take mail"), "{error:#}");
    }

    #[test]
    fn the_bundled_demo_tenant_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tenants");
        let tenants = Tenants::load_dir(&dir).unwrap();
        let demo = tenants.get("demo").unwrap();
        for intent in [
            "product_inquiry",
            "technical_support",
            "complaint",
            "billing",
            "order_status",
            "account",
            "human_agent",
            "greeting",
        ] {
            assert!(demo.intent(intent).is_some(), "demo lacks {intent}");
        }
        assert!(demo.articles.len() >= 10);
    }
}

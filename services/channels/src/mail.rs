//! Mail for the tenants' support addresses, from the SMTP listener into the relay: the
//! tenant by the recipient, the customer by the sender, the thread by the messages it
//! answers (a thread is only continued by the customer who started it), automatic mail
//! taken and never answered, and 250 only once every copy is stored.
use std::collections::BTreeMap;
use std::sync::Arc;

use kefu_storage::channels::Received;
use kefu_tenant::Tenant;

use crate::email::{self, InboundMail, MailError};
use crate::relay::{
    count_message, count_refusal, customer_for, ChannelKind, InboundPayload, Relay,
};
use crate::smtp::{Envelope, Postmaster, Reply};

pub struct Mailroom {
    pub relay: Relay,
    /// Largest text handed to the gateway (its limit), attachments' list included.
    pub max_message_bytes: usize,
}

const KIND: ChannelKind = ChannelKind::Email;

impl Postmaster for Mailroom {
    fn accepts(&self, address: &str) -> Result<(), Reply> {
        match self.relay.tenants.current().by_mail_address(address) {
            Some(_) => Ok(()),
            None => Err(Reply::new(550, "5.1.1 No such mailbox here")),
        }
    }

    async fn deliver(&self, envelope: Envelope, raw: Vec<u8>) -> Reply {
        let mail = match email::read(&raw, &envelope.sender, self.max_message_bytes) {
            Ok(mail) => mail,
            Err(error) => {
                refused(&error);
                let status = match error {
                    MailError::Unreadable => "5.6.0",
                    MailError::NoSender => "5.1.7",
                };
                return Reply::new(550, format!("{status} {error}"));
            }
        };
        let tenants = self.relay.tenants.current();
        // each tenant once, however many of its addresses the mail was sent to
        let addressed: BTreeMap<String, Arc<Tenant>> = envelope
            .recipients
            .iter()
            .filter_map(|address| tenants.by_mail_address(address))
            .map(|tenant| (tenant.id.clone(), tenant))
            .collect();
        for tenant in addressed.values() {
            if let Err(reply) = self.take(tenant, &mail).await {
                return reply;
            }
        }
        Reply::new(250, format!("2.0.0 Taken as <{}>", mail.message_id))
    }
}

impl Mailroom {
    /// Stores a tenant's copy and starts answering it; Err(4xx) when it cannot be stored.
    async fn take(&self, tenant: &Tenant, mail: &InboundMail) -> Result<(), Reply> {
        let tenant_id = tenant.id.as_str();
        let own_address = tenant
            .channels
            .email
            .as_ref()
            .is_some_and(|settings| settings.address.eq_ignore_ascii_case(&mail.sender));
        let automatic = mail
            .automatic
            .or(own_address.then_some("sent from the support address itself"));
        if let Some(why) = automatic {
            tracing::info!(
                tenant = tenant_id,
                why,
                "automatic mail taken, not answered"
            );
            counted("ignored");
            return Ok(());
        }
        let customer_id = customer_for(tenant, KIND, &mail.sender, None);
        let store_down = |_| {
            Reply::new(
                451,
                "4.3.0 Mail cannot be stored right now; try again later",
            )
        };
        let thread = self
            .thread(
                tenant_id,
                mail,
                &customer_id,
                tenant.channels.email.as_ref(),
            )
            .await
            .map_err(store_down)?;
        let payload = InboundPayload {
            customer_id,
            text: mail.text.clone(),
            mail: Some(mail.thread.clone()),
        };
        match self
            .relay
            .receive(KIND, tenant_id, &thread, &mail.message_id, &payload)
            .await
            .map_err(store_down)?
        {
            Received::New(stored) => self.relay.spawn_handling(stored, None),
            // The sending server did not hear our 250 the first time.
            Received::Duplicate(_) => counted("duplicate"),
        }
        Ok(())
    }

    /// The thread the mail continues: that of the newest message it answers (a
    /// customer's by its Message-ID, a reply of ours by the row id in our Message-ID),
    /// when the same customer wrote it; otherwise a new thread named by the mail itself.
    async fn thread(
        &self,
        tenant_id: &str,
        mail: &InboundMail,
        customer_id: &str,
        settings: Option<&kefu_tenant::EmailChannel>,
    ) -> Result<String, kefu_storage::StoreError> {
        // the Message-IDs of customers' mails are their dedup keys
        let mut dedup_keys = vec![mail.message_id.clone()];
        dedup_keys.extend(mail.answers.iter().cloned());
        let ours: Vec<String> = mail
            .answers
            .iter()
            .filter_map(|id| {
                let (local, domain) = id.rsplit_once('@')?;
                settings
                    .is_some_and(|s| s.domain().eq_ignore_ascii_case(domain))
                    .then(|| local.to_owned())
            })
            .collect();
        let found = self
            .relay
            .store
            .thread_of(tenant_id, KIND.as_str(), &dedup_keys, &ours)
            .await?;
        Ok(match found {
            Some((thread, owner)) if owner == customer_id => thread,
            _ => mail.message_id.clone(),
        })
    }
}

fn counted(outcome: &'static str) {
    count_message(KIND.as_str(), "in", outcome);
}

fn refused(error: &MailError) {
    tracing::info!(%error, "mail refused");
    count_refusal(KIND.as_str(), 550);
}

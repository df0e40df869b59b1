-- An email continues the thread of the message it answers: a customer's message is found
-- by its own Message-ID (its dedup key), a reply kefu sent by its row id.
CREATE INDEX channel_messages_dedup ON channel_messages (tenant_id, channel, dedup_key);

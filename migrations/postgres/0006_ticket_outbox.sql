-- The ticket outbox: every ticket a turn needs (not only those the ticket service was
-- down for) is a row written in the same transaction as the turn and the session's
-- move to the queue. Claimed with a lease, tried again with backoff, and moved to a dead
-- letter (dead_at) when it keeps failing.
ALTER TABLE handoff_outbox RENAME TO ticket_outbox;
ALTER TABLE ticket_outbox ADD COLUMN outbox_id TEXT NOT NULL DEFAULT '';
ALTER TABLE ticket_outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ticket_outbox ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ticket_outbox ADD COLUMN claimed_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ticket_outbox ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE ticket_outbox ADD COLUMN dead_at BIGINT;
-- Rows waiting from before are due at once, under an id of their own.
UPDATE ticket_outbox SET outbox_id = tenant_id || ':' || customer_id || ':' || message_id;
CREATE UNIQUE INDEX ticket_outbox_id ON ticket_outbox (outbox_id);
CREATE INDEX ticket_outbox_due ON ticket_outbox (next_attempt_at) WHERE dead_at IS NULL;
CREATE INDEX ticket_outbox_dead ON ticket_outbox (tenant_id, dead_at) WHERE dead_at IS NOT NULL;

-- The ticket outbox: a ticket a turn needs is a row written in the same transaction as
-- the turn (and the session's move to the queue). Claimed with a lease, tried again
-- with backoff, and moved to a dead letter (dead_at) when it keeps failing.
CREATE TABLE ticket_outbox (
    outbox_id        TEXT    NOT NULL PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    message_id       TEXT    NOT NULL,
    session_id       TEXT    NOT NULL,
    request          BLOB   NOT NULL,
    created_at       BIGINT  NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    claimed_until    BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT    NOT NULL DEFAULT '',
    dead_at          BIGINT,
    UNIQUE (tenant_id, customer_id, message_id)
);
CREATE INDEX ticket_outbox_due ON ticket_outbox (next_attempt_at) WHERE dead_at IS NULL;
CREATE INDEX ticket_outbox_dead ON ticket_outbox (tenant_id, dead_at) WHERE dead_at IS NOT NULL;

-- Rows waiting in the old outbox move over, due at once.
INSERT INTO ticket_outbox (outbox_id, tenant_id, customer_id, message_id, session_id, request, created_at, next_attempt_at)
SELECT tenant_id || ':' || customer_id || ':' || message_id, tenant_id, customer_id, message_id, session_id, request, created_at, created_at
FROM handoff_outbox;
DROP TABLE handoff_outbox;

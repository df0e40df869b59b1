-- Hand-offs whose ticket could not be opened yet (the ticket service was unreachable):
-- kept until the ticket exists, then the session gets its ticket. One row per message;
-- the ticket is created with the message id as idempotency key, so exactly once.
CREATE TABLE handoff_outbox (
    tenant_id    TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    request      BLOB   NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, message_id)
);

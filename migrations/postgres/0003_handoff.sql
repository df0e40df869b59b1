-- The human side of a conversation: who handles each session, the events a customer
-- is streamed (agents' replies, handler changes), satisfaction ratings, and what the
-- SLA policy needs on tickets.

-- Message ids are the client's idempotency keys: unique per customer, not per tenant.
DROP INDEX session_turns_message;
CREATE UNIQUE INDEX session_turns_message ON session_turns (tenant_id, customer_id, message_id);

ALTER TABLE tickets ADD COLUMN first_response_at BIGINT;
ALTER TABLE tickets ADD COLUMN sla_raised BIGINT NOT NULL DEFAULT 0;

CREATE TABLE session_handlers (
    tenant_id    TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    handler      BIGINT NOT NULL,
    ticket_id    TEXT    NOT NULL DEFAULT '',
    updated_at   BIGINT  NOT NULL,
    version      BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, session_id)
);

-- event_id counts from 1 within a session; readers resume after the last one they saw.
CREATE TABLE session_events (
    tenant_id    TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    event_id     BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    ticket_id    TEXT    NOT NULL DEFAULT '',
    handler      BIGINT NOT NULL DEFAULT 0,
    author       TEXT    NOT NULL DEFAULT '',
    text         TEXT    NOT NULL DEFAULT '',
    request_id   TEXT,
    at           BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, session_id, event_id)
);
CREATE UNIQUE INDEX session_events_request ON session_events (tenant_id, ticket_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE conversation_ratings (
    tenant_id    TEXT    NOT NULL,
    ticket_id    TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    score        BIGINT NOT NULL,
    comment      TEXT    NOT NULL DEFAULT '',
    at           BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, ticket_id)
);

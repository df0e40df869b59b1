-- kefu schema, PostgreSQL flavour (production). Timestamps are Unix milliseconds.
CREATE TABLE customers (
    tenant_id     TEXT    NOT NULL,
    customer_id   TEXT    NOT NULL,
    display_name  TEXT    NOT NULL DEFAULT '',
    vip_tier      BIGINT  NOT NULL DEFAULT 1,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE tickets (
    tenant_id          TEXT    NOT NULL,
    ticket_id          TEXT    NOT NULL,
    customer_id        TEXT    NOT NULL,
    session_id         TEXT    NOT NULL DEFAULT '',
    subject            TEXT    NOT NULL,
    description        TEXT    NOT NULL DEFAULT '',
    status             BIGINT  NOT NULL,
    priority           BIGINT  NOT NULL,
    intent             TEXT    NOT NULL DEFAULT '',
    channel            BIGINT  NOT NULL DEFAULT 0,
    assignee           TEXT    NOT NULL DEFAULT '',
    vip_tier           BIGINT  NOT NULL DEFAULT 1,
    escalation_reason  TEXT    NOT NULL DEFAULT '',
    idempotency_key    TEXT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    sla_due_at         BIGINT  NOT NULL,
    resolved_at        BIGINT,
    version            BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, ticket_id)
);
CREATE UNIQUE INDEX tickets_idempotency ON tickets (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tickets_queue ON tickets (tenant_id, status, assignee, vip_tier, priority, created_at);
CREATE INDEX tickets_customer ON tickets (tenant_id, customer_id, created_at);

CREATE TABLE ticket_audit (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL,
    ticket_id    TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    from_status  BIGINT  NOT NULL,
    to_status    BIGINT  NOT NULL,
    comment      TEXT    NOT NULL DEFAULT '',
    at           BIGINT  NOT NULL
);
CREATE INDEX ticket_audit_ticket ON ticket_audit (tenant_id, ticket_id, id);

CREATE TABLE session_turns (
    tenant_id    TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    message_id   TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    reply        TEXT    NOT NULL,
    intent       TEXT    NOT NULL,
    sentiment    BIGINT  NOT NULL,
    escalated    BIGINT  NOT NULL,
    ticket_id    TEXT    NOT NULL DEFAULT '',
    response     BYTEA   NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq)
);
CREATE UNIQUE INDEX session_turns_message ON session_turns (tenant_id, message_id);

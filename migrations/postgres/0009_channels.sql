-- A conversation on an outside channel (a signed webhook's customer, a WeChat follower):
-- the session it continues, where its replies go, and how far the session's events (an
-- agent's replies) have been followed while a human has it.
CREATE TABLE channel_conversations (
    tenant_id      TEXT    NOT NULL,
    -- 'webhook' or 'wechat'.
    channel        TEXT    NOT NULL,
    -- The channel's key of the conversation: the webhook's customer, the WeChat OpenID.
    thread         TEXT    NOT NULL,
    customer_id    TEXT    NOT NULL,
    session_id     TEXT    NOT NULL DEFAULT '',
    -- 1 while a human has the session: its events are followed for the agents' replies.
    following      BIGINT  NOT NULL DEFAULT 0,
    last_event_id  BIGINT  NOT NULL DEFAULT 0,
    -- A replica following the session holds it until then.
    follower_until BIGINT  NOT NULL DEFAULT 0,
    updated_at     BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, channel, thread)
);
CREATE INDEX channel_conversations_session ON channel_conversations (tenant_id, session_id);
CREATE INDEX channel_conversations_following ON channel_conversations (following, follower_until);

-- Channel messages in both directions. An inbound message is stored before the channel
-- is told it arrived; an outbound one (a reply) in the same transaction that learns of it.
-- Both are drained by claims that skip each other's rows, with attempts, backoff and a
-- dead letter. The dedup key makes a channel's retry, or a second replica, a no-op.
CREATE TABLE channel_messages (
    message_id      TEXT    NOT NULL PRIMARY KEY,
    -- 'in' or 'out'.
    direction       TEXT    NOT NULL,
    tenant_id       TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    thread          TEXT    NOT NULL,
    -- In: the channel's own message id. Out: 'reply:<message id>' or 'event:<session>:<event id>'.
    dedup_key       TEXT    NOT NULL,
    session_id      TEXT    NOT NULL DEFAULT '',
    -- 'customer', 'bot' or 'agent'.
    role            TEXT    NOT NULL,
    -- JSON: what is to be sent or handled.
    payload         TEXT    NOT NULL,
    -- 'pending', 'done' or 'dead'.
    status          TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT    NOT NULL DEFAULT '',
    next_attempt_at BIGINT  NOT NULL,
    claimed_until   BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    done_at         BIGINT,
    UNIQUE (tenant_id, channel, thread, direction, dedup_key)
);
CREATE INDEX channel_messages_due ON channel_messages (direction, next_attempt_at) WHERE status = 'pending';
CREATE INDEX channel_messages_session ON channel_messages (tenant_id, session_id, created_at);

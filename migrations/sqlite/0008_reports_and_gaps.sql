-- What reports and knowledge gaps read of a turn: the channel and language of the
-- customer's message, and why the bot left its question unanswered: '' (answered, or
-- not the bot's to answer), 'miss' (nothing it could answer from), 'no_answer' (handed
-- off for that) or 'not_helped' (the customer said the previous answer did not help;
-- the question is the previous turn's).
ALTER TABLE session_turns ADD COLUMN channel BIGINT NOT NULL DEFAULT 0;
ALTER TABLE session_turns ADD COLUMN language BIGINT NOT NULL DEFAULT 0;
ALTER TABLE session_turns ADD COLUMN unanswered TEXT NOT NULL DEFAULT '';
CREATE INDEX session_turns_unanswered ON session_turns (tenant_id, created_at) WHERE unanswered <> '';
CREATE INDEX tickets_period ON tickets (tenant_id, created_at);

-- One row per session, written with each of its turns: what reports read of a
-- conversation (its first message's time, channel and language, its last message's
-- time, whether any turn was handed off, how many questions were left unanswered).
CREATE TABLE conversations (
    tenant_id    TEXT    NOT NULL,
    session_id   TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    started_at   BIGINT  NOT NULL,
    last_at      BIGINT  NOT NULL,
    channel      BIGINT  NOT NULL,
    language     BIGINT  NOT NULL,
    turns        BIGINT  NOT NULL,
    handed_off   BIGINT  NOT NULL,
    unanswered   BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE INDEX conversations_period ON conversations (tenant_id, started_at);
-- Sessions from before, summed from their turns (channel and language unknown).
INSERT INTO conversations (tenant_id, session_id, customer_id, started_at, last_at, channel, language, turns, handed_off, unanswered)
SELECT tenant_id, session_id, MIN(customer_id), MIN(created_at), MAX(created_at), 0, 0, COUNT(*), MAX(escalated), 0
FROM session_turns GROUP BY tenant_id, session_id;
CREATE INDEX conversation_ratings_period ON conversation_ratings (tenant_id, at);

-- Groups of similar unanswered questions, per tenant and language. The centroid is the
-- normalised mean of the members' vectors (little-endian f32) from vector_model.
CREATE TABLE knowledge_gaps (
    tenant_id               TEXT    NOT NULL,
    gap_id                  TEXT    NOT NULL,
    language                BIGINT  NOT NULL,
    centroid                BLOB   NOT NULL,
    vector_model            TEXT    NOT NULL,
    questions               BIGINT  NOT NULL,
    suggested_title         TEXT    NOT NULL,
    closest_document_id     TEXT    NOT NULL DEFAULT '',
    closest_document_title  TEXT    NOT NULL DEFAULT '',
    closeness               REAL  NOT NULL DEFAULT 0,
    first_asked             BIGINT  NOT NULL,
    last_asked              BIGINT  NOT NULL,
    covered_at              BIGINT,
    covered_by_document_id  TEXT    NOT NULL DEFAULT '',
    -- The documents generation the closest article and coverage were found in.
    checked_generation      TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, gap_id)
);

-- Each unanswered question once, with its embedding (the group's encoder), in the group
-- it joined.
CREATE TABLE gap_questions (
    tenant_id    TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    gap_id       TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    vector       BLOB    NOT NULL,
    similarity   REAL  NOT NULL,
    asked_at     BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, message_id)
);
CREATE INDEX gap_questions_gap ON gap_questions (tenant_id, gap_id, asked_at);

-- One knowledge replica groups a tenant's questions at a time.
CREATE TABLE gap_grouping_leases (
    tenant_id      TEXT    NOT NULL PRIMARY KEY,
    claimed_until  BIGINT  NOT NULL
);

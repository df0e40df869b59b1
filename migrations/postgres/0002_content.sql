-- Tenant content shared by replicas: intent definitions and knowledge documents with
-- their chunks and embedding vectors (little-endian f32), so a new replica builds its
-- index without recomputing anything.
CREATE TABLE tenant_definitions (
    tenant_id   TEXT    NOT NULL PRIMARY KEY,
    source      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE documents (
    tenant_id    TEXT    NOT NULL,
    document_id  TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, document_id)
);

CREATE TABLE document_chunks (
    tenant_id    TEXT    NOT NULL,
    document_id  TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    chunk_id     TEXT    NOT NULL,
    heading      TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    vector       BYTEA   NOT NULL,
    PRIMARY KEY (tenant_id, document_id, seq)
);

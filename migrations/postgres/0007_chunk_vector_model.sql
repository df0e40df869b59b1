-- The encoder a chunk's vector came from: a vector of another encoder (an earlier
-- model, or none) is computed again when the index is built.
ALTER TABLE document_chunks ADD COLUMN vector_model TEXT NOT NULL DEFAULT '';

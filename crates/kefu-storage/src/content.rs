//! Tenant content: intent definitions (the tenant file's source) and knowledge
//! documents with their chunks and vectors.
use async_trait::async_trait;
use sqlx::Row;

use crate::{now_millis, Database, StoreResult};

#[derive(Clone, Debug, PartialEq)]
pub struct StoredDocument {
    pub document_id: String,
    pub title: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredChunk {
    pub chunk_id: String,
    pub heading: String,
    pub text: String,
    /// Empty when the chunk was indexed without embeddings.
    pub vector: Vec<f32>,
    /// The encoder the vector came from (`Embedder::model_id`); empty without a vector.
    pub vector_model: String,
}

#[async_trait]
pub trait ContentStore: Send + Sync {
    async fn definition(&self, tenant_id: &str) -> StoreResult<Option<String>>;
    /// Stores a tenant's definition; returns whether it changed.
    async fn put_definition(&self, tenant_id: &str, source: &str) -> StoreResult<bool>;
    async fn document(
        &self,
        tenant_id: &str,
        document_id: &str,
    ) -> StoreResult<Option<StoredDocument>>;
    /// Replaces a document and all its chunks in one transaction.
    async fn put_document(
        &self,
        tenant_id: &str,
        document: &StoredDocument,
        chunks: &[StoredChunk],
    ) -> StoreResult<()>;
    async fn delete_document(&self, tenant_id: &str, document_id: &str) -> StoreResult<bool>;
    async fn documents(&self, tenant_id: &str) -> StoreResult<Vec<StoredDocument>>;
    /// Every chunk of the tenant, grouped by document in id order.
    async fn chunks(&self, tenant_id: &str)
        -> StoreResult<Vec<(StoredDocument, Vec<StoredChunk>)>>;
    /// Changes whenever the tenant's documents change (count and last update).
    async fn documents_generation(&self, tenant_id: &str) -> StoreResult<String>;
}

pub struct SqlContentStore {
    db: Database,
}

impl SqlContentStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

pub(crate) fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[async_trait]
impl ContentStore for SqlContentStore {
    async fn definition(&self, tenant_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT source FROM tenant_definitions WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|row| row.try_get("source")).transpose()?)
    }

    async fn put_definition(&self, tenant_id: &str, source: &str) -> StoreResult<bool> {
        if self.definition(tenant_id).await?.as_deref() == Some(source) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO tenant_definitions (tenant_id, source, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(source)
        .bind(now_millis())
        .execute(self.db.pool())
        .await?;
        Ok(true)
    }

    async fn document(
        &self,
        tenant_id: &str,
        document_id: &str,
    ) -> StoreResult<Option<StoredDocument>> {
        let row = sqlx::query("SELECT document_id, title, body FROM documents WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant_id)
            .bind(document_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| {
            Ok(StoredDocument {
                document_id: row.try_get("document_id")?,
                title: row.try_get("title")?,
                text: row.try_get("body")?,
            })
        })
        .transpose()
        .map_err(|error: sqlx::Error| error.into())
    }

    async fn put_document(
        &self,
        tenant_id: &str,
        document: &StoredDocument,
        chunks: &[StoredChunk],
    ) -> StoreResult<()> {
        let mut tx = self.db.begin_write().await?;
        // The document row first: its lock serializes replicas writing the same document
        // (e.g. seeding at the same start), so their chunk rows never collide.
        sqlx::query(
            "INSERT INTO documents (tenant_id, document_id, title, body, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id, document_id) DO UPDATE SET title = excluded.title, body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(document.document_id.as_str())
        .bind(document.title.as_str())
        .bind(document.text.as_str())
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM document_chunks WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant_id)
            .bind(document.document_id.as_str())
            .execute(&mut *tx)
            .await?;
        for (seq, chunk) in chunks.iter().enumerate() {
            sqlx::query("INSERT INTO document_chunks (tenant_id, document_id, seq, chunk_id, heading, body, vector, vector_model) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(tenant_id)
                .bind(document.document_id.as_str())
                .bind(seq as i64)
                .bind(chunk.chunk_id.as_str())
                .bind(chunk.heading.as_str())
                .bind(chunk.text.as_str())
                .bind(vector_to_bytes(&chunk.vector))
                .bind(chunk.vector_model.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_document(&self, tenant_id: &str, document_id: &str) -> StoreResult<bool> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM document_chunks WHERE tenant_id = $1 AND document_id = $2")
            .bind(tenant_id)
            .bind(document_id)
            .execute(&mut *tx)
            .await?;
        let deleted =
            sqlx::query("DELETE FROM documents WHERE tenant_id = $1 AND document_id = $2")
                .bind(tenant_id)
                .bind(document_id)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn documents(&self, tenant_id: &str) -> StoreResult<Vec<StoredDocument>> {
        let rows = sqlx::query("SELECT document_id, title, body FROM documents WHERE tenant_id = $1 ORDER BY document_id").bind(tenant_id).fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|row| {
                Ok(StoredDocument {
                    document_id: row.try_get("document_id")?,
                    title: row.try_get("title")?,
                    text: row.try_get("body")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn chunks(
        &self,
        tenant_id: &str,
    ) -> StoreResult<Vec<(StoredDocument, Vec<StoredChunk>)>> {
        let mut grouped: Vec<(StoredDocument, Vec<StoredChunk>)> = self
            .documents(tenant_id)
            .await?
            .into_iter()
            .map(|d| (d, Vec::new()))
            .collect();
        let rows = sqlx::query("SELECT document_id, chunk_id, heading, body, vector, vector_model FROM document_chunks WHERE tenant_id = $1 ORDER BY document_id, seq")
            .bind(tenant_id)
            .fetch_all(self.db.pool())
            .await?;
        for row in rows {
            let document_id: String = row.try_get("document_id")?;
            let vector: Vec<u8> = row.try_get("vector")?;
            let chunk = StoredChunk {
                chunk_id: row.try_get("chunk_id")?,
                heading: row.try_get("heading")?,
                text: row.try_get("body")?,
                vector: vector_from_bytes(&vector),
                vector_model: row.try_get("vector_model")?,
            };
            if let Some((_, chunks)) = grouped
                .iter_mut()
                .find(|(d, _)| d.document_id == document_id)
            {
                chunks.push(chunk);
            }
        }
        Ok(grouped)
    }

    async fn documents_generation(&self, tenant_id: &str) -> StoreResult<String> {
        let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(updated_at), 0) AS last FROM documents WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(self.db.pool())
            .await?;
        let count: i64 = row.try_get("n")?;
        let last: i64 = row.try_get("last")?;
        Ok(format!("{count}-{last}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_survive_the_byte_encoding() {
        let vector = vec![0.25, -1.5, 3.0e-7];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&vector)), vector);
    }
}

//! The tenants' indexes: documents chunked and embedded, stored with their vectors, and
//! loaded into one hybrid index per tenant; one index change at a time per replica.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kefu_nlp::embed::Embedder;
use kefu_search::{chunk_document, Chunk, Document, SearchIndex};
use kefu_storage::{Cache, ContentStore, Redis, SqlGaps, StoredChunk, StoredDocument};
use kefu_tenant::Tenants;
use tonic::Status;

use crate::DOCUMENTS_TOPIC;

/// The index of one tenant and the version of the documents it was built from.
pub(crate) struct TenantIndex {
    pub(crate) index: SearchIndex,
    pub(crate) generation: String,
}

pub(crate) struct Knowledge {
    pub(crate) embedder: Option<Arc<Embedder>>,
    pub(crate) store: Arc<dyn ContentStore>,
    pub(crate) gaps: SqlGaps,
    pub(crate) known_tenants: Tenants,
    pub(crate) indexes: RwLock<HashMap<String, Arc<TenantIndex>>>,
    pub(crate) cache: Cache,
    pub(crate) redis: Option<Redis>,
    /// One index change (ingest, delete, reindex) at a time per replica: each re-embeds
    /// and rebuilds on the blocking pool, and several at once would starve searches.
    pub(crate) index_change: tokio::sync::Semaphore,
}

/// How long a caller refused by `index_change` should wait before trying again.
const INDEX_CHANGE_RETRY_AFTER_MS: &str = "1000";

pub(crate) fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(error.to_string())
}

impl Knowledge {
    /// The right to change an index now, or RESOURCE_EXHAUSTED while another change runs.
    pub(crate) fn begin_index_change(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.index_change.try_acquire().map_err(|_| {
            let mut status = Status::resource_exhausted(
                "another document change is being indexed; retry when it is done",
            );
            status.metadata_mut().insert(
                "retry-after-ms",
                INDEX_CHANGE_RETRY_AFTER_MS.parse().expect("digits"),
            );
            status
        })
    }

    pub(crate) fn index(&self, tenant_id: &str) -> Result<Arc<TenantIndex>, Status> {
        if self.known_tenants.get(tenant_id).is_none() {
            return Err(Status::not_found(format!("unknown tenant {tenant_id:?}")));
        }
        self.indexes
            .read()
            .expect("index map lock")
            .get(tenant_id)
            .cloned()
            .ok_or_else(|| Status::unavailable("the tenant's index is still being built"))
    }

    /// Chunks and embeds documents (CPU work, off the async threads).
    async fn prepare(
        &self,
        documents: Vec<Document>,
    ) -> Result<Vec<(Document, Vec<Chunk>)>, Status> {
        let embedder = self.embedder.clone();
        tokio::task::spawn_blocking(move || {
            let scratch = SearchIndex::new(embedder)?;
            documents
                .into_iter()
                .map(|document| {
                    let mut chunks = chunk_document(&document);
                    scratch.embed_chunks(&mut chunks)?;
                    Ok((document, chunks))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .map_err(internal)?
        .map_err(|error| internal(format!("{error:#}")))
    }

    /// Stores documents with their chunks (replacing earlier versions by id).
    pub(crate) async fn store_documents(
        &self,
        tenant_id: &str,
        documents: Vec<Document>,
    ) -> Result<usize, Status> {
        let mut total = 0;
        let vector_model = self
            .embedder
            .as_ref()
            .map_or("", |e| e.model_id())
            .to_owned();
        for (document, chunks) in self.prepare(documents).await? {
            total += chunks.len();
            let stored = StoredDocument {
                document_id: document.id.clone(),
                title: document.title.clone(),
                text: document.text.clone(),
            };
            let chunks: Vec<StoredChunk> = chunks
                .into_iter()
                .map(|c| StoredChunk {
                    chunk_id: c.id,
                    heading: c.heading,
                    text: c.text,
                    vector_model: if c.vector.is_some() {
                        vector_model.clone()
                    } else {
                        String::new()
                    },
                    vector: c.vector.unwrap_or_default(),
                })
                .collect();
            self.store.put_document(tenant_id, &stored, &chunks).await?;
        }
        Ok(total)
    }

    /// (Re)builds a tenant's index from the stored chunks and vectors.
    pub(crate) async fn load(&self, tenant_id: &str) -> Result<(usize, usize), Status> {
        let generation = self.store.documents_generation(tenant_id).await?;
        let stored = self.store.chunks(tenant_id).await?;
        let embedder = self.embedder.clone();
        let (index, counts) = tokio::task::spawn_blocking(move || {
            let model = embedder.as_ref().map(|e| e.model_id().to_owned());
            let model = model.as_deref();
            let index = SearchIndex::new(embedder)?;
            let mut chunks: Vec<Chunk> = stored
                .iter()
                .flat_map(|(document, chunks)| {
                    chunks.iter().map(move |c| Chunk {
                        id: c.chunk_id.clone(),
                        doc_id: document.document_id.clone(),
                        title: document.title.clone(),
                        heading: c.heading.clone(),
                        text: c.text.clone(),
                        vector: (!c.vector.is_empty() && model == Some(c.vector_model.as_str()))
                            .then(|| c.vector.clone()),
                    })
                })
                .collect();
            // Chunks stored without vectors, or with another encoder's, are embedded now.
            index.embed_chunks(&mut chunks)?;
            let counts = (stored.len(), chunks.len());
            index.add_chunks(chunks)?;
            Ok::<_, anyhow::Error>((index, counts))
        })
        .await
        .map_err(internal)?
        .map_err(|error| internal(format!("{error:#}")))?;
        self.indexes.write().expect("index map lock").insert(
            tenant_id.to_owned(),
            Arc::new(TenantIndex { index, generation }),
        );
        self.cache.forget_tenant(tenant_id);
        Ok(counts)
    }

    /// Puts the tenant's bundled articles into the store where missing or changed.
    async fn seed(&self, tenant: &kefu_tenant::Tenant) -> Result<(), Status> {
        let mut changed = Vec::new();
        for article in &tenant.articles {
            let stored = self.store.document(&tenant.id, &article.id).await?;
            if stored.as_ref().map(|d| (&d.title, &d.text)) != Some((&article.title, &article.text))
            {
                changed.push(Document {
                    id: article.id.clone(),
                    title: article.title.clone(),
                    text: article.text.clone(),
                });
            }
        }
        if !changed.is_empty() {
            self.store_documents(&tenant.id, changed).await?;
        }
        Ok(())
    }

    pub(crate) async fn changed(&self, tenant_id: &str) -> Result<(usize, usize), Status> {
        let counts = self.load(tenant_id).await?;
        if let Some(redis) = &self.redis {
            redis.announce(DOCUMENTS_TOPIC, tenant_id).await;
        }
        Ok(counts)
    }

    pub(crate) async fn start_up(&self) -> Result<(), Status> {
        for tenant in self.known_tenants.iter() {
            self.seed(tenant).await?;
            let (documents, chunks) = self.load(&tenant.id).await?;
            tracing::info!(tenant = %tenant.id, documents, chunks, "knowledge indexed");
        }
        Ok(())
    }
}

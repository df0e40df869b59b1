//! Knowledge service: a hybrid (BM25 + sentence embeddings) index per tenant over its
//! documents, answering with the best passages and their sources. Documents, chunks and
//! vectors live in the database, so every replica builds the same index without
//! recomputing; a change made through one replica reaches the others over Redis.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kefu_nlp::embed::Embedder;
use kefu_proto::v1::knowledge_service_server::{KnowledgeService, KnowledgeServiceServer};
use kefu_proto::v1::{
    DeleteDocumentRequest, DeleteDocumentResponse, Embedding, IngestDocumentsRequest,
    IngestDocumentsResponse, ReindexRequest, ReindexResponse, SearchRequest, SearchResponse,
    Source,
};
use kefu_runtime::{
    ContentArgs, DataArgs, ReadyFlag, RunningServer, ServerArgs, ServiceSpec, Shutdown,
};
use kefu_search::{chunk_document, compose_answer, Chunk, Document, SearchIndex};
use kefu_storage::{
    fingerprint, Cache, ContentStore, Database, Redis, SqlContentStore, StoredChunk, StoredDocument,
};
use kefu_tenant::Tenants;
use prost::Message as _;
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::KNOWLEDGE;
const SERVICE: &str = "kefu-knowledge";
const DEFAULT_TOP_K: usize = 3;
const MAX_TOP_K: usize = 20;
const SNIPPET_CHARS: usize = 280;
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const RETRIEVAL_CACHE_TTL: Duration = Duration::from_secs(600);
/// Change-notification topic of documents.
const DOCUMENTS_TOPIC: &str = "documents";

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// The index of one tenant and the version of the documents it was built from.
struct TenantIndex {
    index: SearchIndex,
    generation: String,
}

pub struct Knowledge {
    embedder: Option<Arc<Embedder>>,
    store: Arc<dyn ContentStore>,
    known_tenants: Tenants,
    indexes: RwLock<HashMap<String, Arc<TenantIndex>>>,
    cache: Cache,
    redis: Option<Redis>,
    /// One index change (ingest, delete, reindex) at a time per replica: each re-embeds
    /// and rebuilds on the blocking pool, and several at once would starve searches.
    index_change: tokio::sync::Semaphore,
}

/// How long a caller refused by `index_change` should wait before trying again.
const INDEX_CHANGE_RETRY_AFTER_MS: &str = "1000";

fn snippet(text: &str) -> String {
    let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(error.to_string())
}

impl Knowledge {
    /// The right to change an index now, or RESOURCE_EXHAUSTED while another change runs.
    fn begin_index_change(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
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

    fn index(&self, tenant_id: &str) -> Result<Arc<TenantIndex>, Status> {
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
    async fn store_documents(
        &self,
        tenant_id: &str,
        documents: Vec<Document>,
    ) -> Result<usize, Status> {
        let mut total = 0;
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
                    vector: c.vector.unwrap_or_default(),
                })
                .collect();
            self.store.put_document(tenant_id, &stored, &chunks).await?;
        }
        Ok(total)
    }

    /// (Re)builds a tenant's index from the stored chunks and vectors.
    async fn load(&self, tenant_id: &str) -> Result<(usize, usize), Status> {
        let generation = self.store.documents_generation(tenant_id).await?;
        let stored = self.store.chunks(tenant_id).await?;
        let embedder = self.embedder.clone();
        let (index, counts) = tokio::task::spawn_blocking(move || {
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
                        vector: (!c.vector.is_empty()).then(|| c.vector.clone()),
                    })
                })
                .collect();
            // Chunks stored without vectors (model added later) are embedded now.
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

    async fn changed(&self, tenant_id: &str) -> Result<(usize, usize), Status> {
        let counts = self.load(tenant_id).await?;
        if let Some(redis) = &self.redis {
            redis.announce(DOCUMENTS_TOPIC, tenant_id).await;
        }
        Ok(counts)
    }

    async fn start_up(&self) -> Result<(), Status> {
        for tenant in self.known_tenants.iter() {
            self.seed(tenant).await?;
            let (documents, chunks) = self.load(&tenant.id).await?;
            tracing::info!(tenant = %tenant.id, documents, chunks, "knowledge indexed");
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct KnowledgeHandle(Arc<Knowledge>);

#[tonic::async_trait]
impl KnowledgeService for KnowledgeHandle {
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let request = request.into_inner();
        if request.query.trim().is_empty() {
            return Err(Status::invalid_argument("query must not be empty"));
        }
        if request.top_k < 0 {
            return Err(Status::invalid_argument("top_k must not be negative"));
        }
        let top_k = if request.top_k == 0 {
            DEFAULT_TOP_K
        } else {
            (request.top_k as usize).min(MAX_TOP_K)
        };
        let tenant = self.0.index(&request.tenant_id)?;
        let key = fingerprint(&[&tenant.generation, &top_k.to_string(), &request.query]);
        let response = match self
            .0
            .cache
            .get(&request.tenant_id, &key)
            .await
            .and_then(|bytes| SearchResponse::decode(bytes.as_slice()).ok())
        {
            Some(cached) => cached,
            None => {
                let query = request.query.clone();
                // The caller's embedding of the query (the router's) saves a forward pass;
                // otherwise the query joins the encoder's batch here, not on the search thread.
                let query_embedding = match &self.0.embedder {
                    Some(embedder) => {
                        let supplied = request
                            .query_embedding
                            .as_ref()
                            .map(|e| (e.model.as_str(), e.values.as_slice()));
                        let values = embedder
                            .reuse_or_embed_batched(&query, supplied)
                            .await
                            .map_err(|error| internal(format!("embedding the query: {error:#}")))?
                            .into_owned();
                        Some(Embedding {
                            model: embedder.model_id().to_owned(),
                            values,
                        })
                    }
                    None => request.query_embedding,
                };
                let searched = tenant.clone();
                let (passages, answer) = tokio::task::spawn_blocking(move || {
                    let passages = searched.index.search_with_query_embedding(
                        &query,
                        top_k,
                        query_embedding
                            .as_ref()
                            .map(|e| (e.model.as_str(), e.values.as_slice())),
                    )?;
                    let answer = compose_answer(&query, &passages);
                    Ok::<_, anyhow::Error>((passages, answer))
                })
                .await
                .map_err(internal)?
                .map_err(|error| internal(format!("{error:#}")))?;
                let confident = answer.as_ref().is_some_and(|a| a.confident);
                let response = SearchResponse {
                    answer: answer.map(|a| a.text).unwrap_or_default(),
                    confident,
                    sources: passages
                        .iter()
                        .map(|p| Source {
                            document_id: p.doc_id.clone(),
                            title: p.title.clone(),
                            snippet: snippet(&p.text),
                            score: p.confidence,
                        })
                        .collect(),
                };
                self.0
                    .cache
                    .put(&request.tenant_id, &key, response.encode_to_vec())
                    .await;
                response
            }
        };
        metrics::counter!("kefu_knowledge_searches_total", "service" => SERVICE, "tenant" => request.tenant_id, "result" => if response.confident { "hit" } else { "miss" }).increment(1);
        Ok(Response::new(response))
    }

    async fn ingest_documents(
        &self,
        request: Request<IngestDocumentsRequest>,
    ) -> Result<Response<IngestDocumentsResponse>, Status> {
        let request = request.into_inner();
        if request.documents.is_empty() {
            return Err(Status::invalid_argument("no documents given"));
        }
        for document in &request.documents {
            if document.document_id.trim().is_empty() || document.text.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "every document needs a document_id and text",
                ));
            }
            if document.text.len() > MAX_DOCUMENT_BYTES {
                return Err(Status::invalid_argument(format!(
                    "document {:?} is larger than {MAX_DOCUMENT_BYTES} bytes",
                    document.document_id
                )));
            }
        }
        self.0.index(&request.tenant_id)?;
        let _change = self.0.begin_index_change()?;
        let documents: Vec<Document> = request
            .documents
            .into_iter()
            .map(|d| Document {
                title: if d.title.is_empty() {
                    d.document_id.clone()
                } else {
                    d.title
                },
                id: d.document_id,
                text: d.text,
            })
            .collect();
        let count = documents.len();
        let chunks = self
            .0
            .store_documents(&request.tenant_id, documents)
            .await?;
        self.0.changed(&request.tenant_id).await?;
        Ok(Response::new(IngestDocumentsResponse {
            documents: count as i32,
            chunks: chunks as i32,
        }))
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let request = request.into_inner();
        self.0.index(&request.tenant_id)?;
        let _change = self.0.begin_index_change()?;
        let deleted = self
            .0
            .store
            .delete_document(&request.tenant_id, &request.document_id)
            .await?;
        if deleted {
            self.0.changed(&request.tenant_id).await?;
        }
        Ok(Response::new(DeleteDocumentResponse { deleted }))
    }

    async fn reindex(
        &self,
        request: Request<ReindexRequest>,
    ) -> Result<Response<ReindexResponse>, Status> {
        let tenant_id = request.into_inner().tenant_id;
        self.0.index(&tenant_id)?;
        let _change = self.0.begin_index_change()?;
        // Re-chunk and re-embed every stored document, e.g. after a model or chunking change.
        let documents: Vec<Document> = self
            .0
            .store
            .documents(&tenant_id)
            .await?
            .into_iter()
            .map(|d| Document {
                id: d.document_id,
                title: d.title,
                text: d.text,
            })
            .collect();
        self.0.store_documents(&tenant_id, documents).await?;
        let (documents, chunks) = self.0.changed(&tenant_id).await?;
        Ok(Response::new(ReindexResponse {
            documents: documents as i32,
            chunks: chunks as i32,
        }))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let known_tenants = Tenants::load_dir(&config.content.tenants_dir)?;
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let knowledge = Arc::new(Knowledge {
        embedder: kefu_nlp::embed::load_optional(&config.content.models.models_dir),
        store: Arc::new(SqlContentStore::new(db.clone())),
        known_tenants,
        indexes: RwLock::new(HashMap::new()),
        cache: Cache::new("retrieval", SERVICE, RETRIEVAL_CACHE_TTL, redis.clone()),
        redis: redis.clone(),
        index_change: tokio::sync::Semaphore::new(1),
    });
    let ready = ReadyFlag::new("knowledge index");
    let mut server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(KnowledgeServiceServer::new(KnowledgeHandle(
            knowledge.clone(),
        )))
        .probe(Arc::new(ready.clone()))
        .probe(Arc::new(db.probe()));
    if let Some(redis) = &redis {
        server = server.probe(Arc::new(redis.probe()));
        let listener = knowledge.clone();
        redis.on_change(DOCUMENTS_TOPIC, move |tenant_id| {
            let knowledge = listener.clone();
            async move {
                if knowledge.known_tenants.get(&tenant_id).is_none() {
                    return Ok("not a tenant of this deployment".to_owned());
                }
                let (documents, chunks) = knowledge
                    .load(&tenant_id)
                    .await
                    .map_err(|status| anyhow::anyhow!(status.message().to_owned()))?;
                Ok(format!("{documents} documents, {chunks} chunks"))
            }
        });
    }
    let server = server.start(shutdown).await?;
    tokio::spawn(async move {
        match knowledge.start_up().await {
            Ok(()) => ready.set(true),
            Err(error) => {
                tracing::error!(error = %error.message(), "building the knowledge indexes failed")
            }
        }
    });
    Ok(server)
}

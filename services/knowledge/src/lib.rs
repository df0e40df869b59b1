//! Knowledge service: a hybrid (BM25 + sentence embeddings) index per tenant over its
//! documents, answering with the best passages and their sources.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use kefu_nlp::embed::Embedder;
use kefu_proto::v1::knowledge_service_server::{KnowledgeService, KnowledgeServiceServer};
use kefu_proto::v1::{
    DeleteDocumentRequest, DeleteDocumentResponse, IngestDocumentsRequest, IngestDocumentsResponse, ReindexRequest,
    ReindexResponse, SearchRequest, SearchResponse, Source,
};
use kefu_runtime::{ContentArgs, ReadyFlag, RunningServer, ServerArgs, ServiceSpec, Shutdown};
use kefu_search::{chunk_document, compose_answer, Document, SearchIndex};
use kefu_tenant::Tenants;
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::KNOWLEDGE;
const SERVICE: &str = "kefu-knowledge";
const DEFAULT_TOP_K: usize = 3;
const MAX_TOP_K: usize = 20;
const SNIPPET_CHARS: usize = 280;
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub content: ContentArgs,
}

/// One tenant's documents (the source of truth for reindexing) and their index.
struct TenantKnowledge {
    documents: Mutex<BTreeMap<String, Document>>,
    index: SearchIndex,
}

pub struct Knowledge {
    embedder: Option<Arc<Embedder>>,
    tenants: RwLock<HashMap<String, Arc<TenantKnowledge>>>,
}

fn snippet(text: &str) -> String {
    let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

impl Knowledge {
    pub fn new(embedder: Option<Arc<Embedder>>) -> Self {
        Self { embedder, tenants: RwLock::new(HashMap::new()) }
    }

    fn tenant(&self, tenant_id: &str) -> Result<Arc<TenantKnowledge>, Status> {
        self.tenants
            .read()
            .expect("tenant map lock")
            .get(tenant_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown tenant {tenant_id:?}")))
    }

    fn create_tenant(&self, tenant_id: &str) -> anyhow::Result<Arc<TenantKnowledge>> {
        let knowledge = Arc::new(TenantKnowledge { documents: Mutex::new(BTreeMap::new()), index: SearchIndex::new(self.embedder.clone())? });
        self.tenants.write().expect("tenant map lock").insert(tenant_id.to_owned(), knowledge.clone());
        Ok(knowledge)
    }

    /// Chunks, embeds and indexes documents, replacing earlier versions by id.
    fn ingest(&self, knowledge: &TenantKnowledge, documents: Vec<Document>) -> anyhow::Result<usize> {
        let mut chunks: Vec<_> = documents.iter().flat_map(chunk_document).collect();
        knowledge.index.embed_chunks(&mut chunks)?;
        let count = chunks.len();
        for document in &documents {
            knowledge.index.delete_document(&document.id)?;
        }
        knowledge.index.add_chunks(chunks)?;
        let mut stored = knowledge.documents.lock().expect("documents lock");
        for document in documents {
            stored.insert(document.id.clone(), document);
        }
        Ok(count)
    }

    /// Builds every tenant's index from its bundled articles.
    pub fn load_tenants(&self, tenants: &Tenants) -> anyhow::Result<()> {
        for tenant in tenants.iter() {
            let knowledge = self.create_tenant(&tenant.id)?;
            let documents = tenant
                .articles
                .iter()
                .map(|article| Document { id: article.id.clone(), title: article.title.clone(), text: article.text.clone() })
                .collect();
            let chunks = self.ingest(&knowledge, documents)?;
            tracing::info!(tenant = %tenant.id, documents = tenant.articles.len(), chunks, "knowledge indexed");
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct KnowledgeHandle(Arc<Knowledge>);

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Status::internal(format!("task failed: {error}")))?
        .map_err(|error| Status::internal(format!("{error:#}")))
}

#[tonic::async_trait]
impl KnowledgeService for KnowledgeHandle {
    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let request = request.into_inner();
        if request.query.trim().is_empty() {
            return Err(Status::invalid_argument("query must not be empty"));
        }
        if request.top_k < 0 {
            return Err(Status::invalid_argument("top_k must not be negative"));
        }
        let top_k = if request.top_k == 0 { DEFAULT_TOP_K } else { (request.top_k as usize).min(MAX_TOP_K) };
        let knowledge = self.0.tenant(&request.tenant_id)?;
        let query = request.query.clone();
        let (passages, answer) = blocking(move || {
            let passages = knowledge.index.search(&query, top_k)?;
            let answer = compose_answer(&query, &passages);
            Ok((passages, answer))
        })
        .await?;
        let confident = answer.as_ref().is_some_and(|a| a.confident);
        metrics::counter!("kefu_knowledge_searches_total", "service" => SERVICE, "tenant" => request.tenant_id, "result" => if confident { "hit" } else { "miss" }).increment(1);
        Ok(Response::new(SearchResponse {
            answer: answer.map(|a| a.text).unwrap_or_default(),
            confident,
            sources: passages
                .iter()
                .map(|p| Source { document_id: p.doc_id.clone(), title: p.title.clone(), snippet: snippet(&p.text), score: p.confidence })
                .collect(),
        }))
    }

    async fn ingest_documents(&self, request: Request<IngestDocumentsRequest>) -> Result<Response<IngestDocumentsResponse>, Status> {
        let request = request.into_inner();
        if request.documents.is_empty() {
            return Err(Status::invalid_argument("no documents given"));
        }
        for document in &request.documents {
            if document.document_id.trim().is_empty() || document.text.trim().is_empty() {
                return Err(Status::invalid_argument("every document needs a document_id and text"));
            }
            if document.text.len() > MAX_DOCUMENT_BYTES {
                return Err(Status::invalid_argument(format!("document {:?} is larger than {MAX_DOCUMENT_BYTES} bytes", document.document_id)));
            }
        }
        let knowledge = self.0.tenant(&request.tenant_id)?;
        let documents: Vec<Document> = request
            .documents
            .into_iter()
            .map(|d| Document { title: if d.title.is_empty() { d.document_id.clone() } else { d.title }, id: d.document_id, text: d.text })
            .collect();
        let count = documents.len();
        let service = self.0.clone();
        let chunks = blocking(move || service.ingest(&knowledge, documents)).await?;
        Ok(Response::new(IngestDocumentsResponse { documents: count as i32, chunks: chunks as i32 }))
    }

    async fn delete_document(&self, request: Request<DeleteDocumentRequest>) -> Result<Response<DeleteDocumentResponse>, Status> {
        let request = request.into_inner();
        let knowledge = self.0.tenant(&request.tenant_id)?;
        let removed = knowledge.documents.lock().expect("documents lock").remove(&request.document_id).is_some();
        let id = request.document_id;
        blocking(move || knowledge.index.delete_document(&id)).await?;
        Ok(Response::new(DeleteDocumentResponse { deleted: removed }))
    }

    async fn reindex(&self, request: Request<ReindexRequest>) -> Result<Response<ReindexResponse>, Status> {
        let knowledge = self.0.tenant(&request.into_inner().tenant_id)?;
        let service = self.0.clone();
        let (documents, chunks) = blocking(move || {
            let documents: Vec<Document> = knowledge.documents.lock().expect("documents lock").values().cloned().collect();
            knowledge.index.clear()?;
            let count = documents.len();
            let chunks = service.ingest(&knowledge, documents)?;
            Ok((count, chunks))
        })
        .await?;
        Ok(Response::new(ReindexResponse { documents: documents as i32, chunks: chunks as i32 }))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let tenants = Tenants::load_dir(&config.content.tenants_dir)?;
    let knowledge = Arc::new(Knowledge::new(kefu_nlp::embed::load_optional(&config.content.models_dir)));
    let ready = ReadyFlag::new("knowledge index");
    let server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(KnowledgeServiceServer::new(KnowledgeHandle(knowledge.clone())))
        .probe(Arc::new(ready.clone()))
        .start(shutdown)
        .await?;
    tokio::task::spawn_blocking(move || match knowledge.load_tenants(&tenants) {
        Ok(()) => ready.set(true),
        Err(error) => tracing::error!(error = %format!("{error:#}"), "indexing the tenants' documents failed"),
    });
    Ok(server)
}

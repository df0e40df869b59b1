//! The knowledge service's gRPC handlers: validate, search (through the retrieval
//! cache) or change a tenant's documents and index.
use std::sync::Arc;

use kefu_proto::v1::knowledge_service_server::KnowledgeService;
use kefu_proto::v1::{
    DeleteDocumentRequest, DeleteDocumentResponse, Embedding, IngestDocumentsRequest,
    IngestDocumentsResponse, ListKnowledgeGapsRequest, ListKnowledgeGapsResponse, ReindexRequest,
    ReindexResponse, SearchRequest, SearchResponse, Source,
};
use kefu_search::{compose_answer, Document};
use kefu_storage::fingerprint;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::index::{internal, Knowledge};
use crate::SERVICE;

const DEFAULT_TOP_K: usize = 3;
const MAX_TOP_K: usize = 20;
const SNIPPET_CHARS: usize = 280;
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

fn snippet(text: &str) -> String {
    let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

#[derive(Clone)]
pub struct KnowledgeHandle(pub(crate) Arc<Knowledge>);

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

    async fn list_knowledge_gaps(
        &self,
        request: Request<ListKnowledgeGapsRequest>,
    ) -> Result<Response<ListKnowledgeGapsResponse>, Status> {
        self.0
            .list_gaps(request.into_inner())
            .await
            .map(Response::new)
    }
}

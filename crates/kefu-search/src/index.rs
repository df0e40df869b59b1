//! The hybrid index of one tenant: BM25 over an in-RAM tantivy index and cosine
//! similarity over the chunks' embeddings, fused into one ranking.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};

use anyhow::{anyhow, bail, Context, Result};
use kefu_nlp::embed::{dot, Embedder};
use kefu_nlp::text::{detect_language, is_cjk, Language};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, STRING,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use crate::analysis::{
    analyzer, distinct_terms, grams_analyzer, is_pinyin, GRAMS_TOKENIZER_NAME, TOKENIZER_NAME,
};
use crate::{Chunk, Passage};

/// How the lexical and the dense ranking are combined; `w` is the dense weight for
/// the query's language.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// Weighted reciprocal rank fusion: `(1 - w) / (k + lexical rank) + w / (k + dense rank)`, ranks from 1.
    Rrf { k: f32 },
    /// Score fusion: `(1 - w) * bm25 / max_bm25 + w * normalised cosine`, the cosine
    /// min-max scaled over the dense candidates.
    Score,
}

impl Fusion {
    /// The fused score of every chunk in either ranking, `w` being the dense weight.
    fn fuse(
        self,
        lexical: &[(u64, f32)],
        dense: &[(u64, f32)],
        cosines: &HashMap<u64, f32>,
        w: f32,
    ) -> HashMap<u64, f32> {
        let mut fused: HashMap<u64, f32> = HashMap::new();
        match self {
            Fusion::Rrf { k: rrf_k } => {
                for (ranking, weight) in [(lexical, 1.0 - w), (dense, w)] {
                    for (rank, (key, _)) in ranking.iter().enumerate() {
                        *fused.entry(*key).or_default() += weight / (rrf_k + rank as f32 + 1.0);
                    }
                }
            }
            Fusion::Score => {
                let max_bm25 = lexical.first().map_or(1.0, |x| x.1.max(f32::EPSILON));
                for (key, s) in lexical {
                    *fused.entry(*key).or_default() += (1.0 - w) * s / max_bm25;
                }
                let top = dense.first().map_or(0.0, |x| x.1);
                let floor = dense.last().map_or(0.0, |x| x.1);
                let span = (top - floor).max(f32::EPSILON);
                for (key, _) in dense {
                    fused.entry(*key).or_default();
                }
                for (key, score) in fused.iter_mut() {
                    if let Some(c) = cosines.get(key) {
                        *score += w * ((c - floor) / span).max(0.0);
                    }
                }
            }
        }
        fused
    }
}

/// Retrieval settings. The default is what the evaluation selected (see the crate README).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Rank with BM25.
    pub lexical: bool,
    /// Rank with embeddings (only when the index has an embedder).
    pub dense: bool,
    pub fusion: Fusion,
    /// Weight of the dense ranking for English queries (MiniLM's block of the embedding).
    pub dense_weight_en: f32,
    /// Weight of the dense ranking for Chinese queries (kefu's Chinese encoder).
    pub dense_weight_zh: f32,
    /// Stem English words.
    pub stem: bool,
    /// Index character bigrams of long Chinese words besides the words themselves.
    pub cjk_bigrams: bool,
    /// BM25 weight of Chinese character n-grams (see `analysis::grams_analyzer`)
    /// relative to words; 0 leaves them out.
    pub chinese_grams: f32,
    /// Weight of the pinyin of a Chinese bigram (a homophone typed by mistake) relative
    /// to the characters; 0 leaves pinyin out.
    pub pinyin: f32,
    /// Weight of Chinese n-grams matching the title, the entry's question, relative to
    /// the text: customers paraphrase the question far more closely than the answer.
    pub question_boost: f32,
    /// BM25 weight of a match in the document title relative to the chunk text.
    pub title_boost: f32,
    /// BM25 weight of a match in the chunk's headings relative to the chunk text.
    pub heading_boost: f32,
    /// How many chunks each ranking contributes to the fusion.
    pub candidates: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            lexical: true,
            dense: true,
            fusion: Fusion::Score,
            dense_weight_en: 0.7,
            dense_weight_zh: 0.4,
            stem: true,
            cjk_bigrams: true,
            chinese_grams: 1.0,
            pinyin: 0.1,
            question_boost: 2.0,
            title_boost: 1.0,
            heading_boost: 1.0,
            candidates: 50,
        }
    }
}

impl SearchConfig {
    /// The dense ranking's weight in the fusion: all of it when it ranks alone, none
    /// when it ranks nothing.
    fn dense_weight(
        &self,
        language: Language,
        lexical: &[(u64, f32)],
        dense: &[(u64, f32)],
    ) -> f32 {
        if dense.is_empty() {
            0.0
        } else if lexical.is_empty() {
            1.0
        } else {
            match language {
                Language::En => self.dense_weight_en,
                Language::Zh => self.dense_weight_zh,
            }
        }
    }
}

struct Fields {
    key: Field,
    doc_id: Field,
    title: Field,
    heading: Field,
    body: Field,
    /// Chinese n-grams of the title, and of headings and text.
    title_grams: Field,
    body_grams: Field,
}

/// A chunk as held by the index.
struct Entry {
    chunk: Chunk,
    /// Distinct analyzed terms of title, heading and text.
    terms: HashSet<String>,
    /// Distinct Chinese characters of title, heading and text.
    chars: HashSet<char>,
}

impl Entry {
    fn passage(&self, score: f32, evidence: &Evidence) -> Passage {
        Passage {
            chunk_id: self.chunk.id.clone(),
            doc_id: self.chunk.doc_id.clone(),
            title: self.chunk.title.clone(),
            text: self.chunk.text.clone(),
            score,
            confidence: crate::answer::confidence(evidence),
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    by_doc: HashMap<String, Vec<u64>>,
    /// Number of chunks containing each term.
    df: HashMap<String, u32>,
    /// Number of chunks containing each Chinese character.
    char_df: HashMap<char, u32>,
    /// Keys of the chunks with a vector, row by row, the vectors concatenated in the
    /// same order, and each key's row.
    dense_keys: Vec<u64>,
    dense: Vec<f32>,
    dense_rows: HashMap<u64, usize>,
    next_key: u64,
}

impl State {
    fn insert(&mut self, key: u64, entry: Entry) {
        for t in &entry.terms {
            *self.df.entry(t.clone()).or_default() += 1;
        }
        for c in &entry.chars {
            *self.char_df.entry(*c).or_default() += 1;
        }
        if let Some(v) = &entry.chunk.vector {
            self.dense_rows.insert(key, self.dense_keys.len());
            self.dense_keys.push(key);
            self.dense.extend_from_slice(v);
        }
        self.by_doc
            .entry(entry.chunk.doc_id.clone())
            .or_default()
            .push(key);
        self.entries.insert(key, entry);
    }

    /// Dimension of the stored vectors (None while there are none).
    fn dim(&self) -> Option<usize> {
        (!self.dense_keys.is_empty()).then(|| self.dense.len() / self.dense_keys.len())
    }

    /// Removes a key's vector by moving the last row into its place.
    fn remove_vector(&mut self, key: u64) {
        let (Some(row), Some(dim)) = (self.dense_rows.remove(&key), self.dim()) else {
            return;
        };
        let last = self.dense_keys.len() - 1;
        if row != last {
            let moved = self.dense_keys[last];
            self.dense_keys[row] = moved;
            self.dense
                .copy_within(last * dim..(last + 1) * dim, row * dim);
            self.dense_rows.insert(moved, row);
        }
        self.dense_keys.pop();
        self.dense.truncate(last * dim);
    }

    fn remove_doc(&mut self, doc_id: &str) -> bool {
        let Some(keys) = self.by_doc.remove(doc_id) else {
            return false;
        };
        for key in keys {
            self.remove_vector(key);
            if let Some(entry) = self.entries.remove(&key) {
                for t in &entry.terms {
                    decrement(&mut self.df, t);
                }
                for c in &entry.chars {
                    decrement(&mut self.char_df, c);
                }
            }
        }
        true
    }

    /// Inverse document frequency over the chunks (BM25's form, never negative) of a
    /// term found in `df` chunks.
    fn idf(&self, df: u32) -> f32 {
        let n = self.entries.len() as f32;
        let df = df as f32;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// Cosine similarity of the query to every chunk with a vector (none without a query vector).
    fn cosines(&self, query: Option<&[f32]>) -> HashMap<u64, f32> {
        match query {
            Some(q) if !self.dense_keys.is_empty() => self
                .dense_keys
                .iter()
                .zip(self.dense.chunks_exact(q.len()))
                .map(|(&key, v)| (key, dot(q, v)))
                .collect(),
            _ => HashMap::new(),
        }
    }

    /// The fused chunks still indexed, best first.
    fn ranked(&self, fused: HashMap<u64, f32>, cosines: &HashMap<u64, f32>) -> Vec<(u64, f32)> {
        let mut ranked: Vec<(u64, f32)> = fused
            .into_iter()
            .filter(|(key, _)| self.entries.contains_key(key))
            .collect();
        // ties (chunks found by only one ranking with weight 0) go by cosine
        let cosine_of = |key: &u64| cosines.get(key).copied().unwrap_or(f32::NEG_INFINITY);
        ranked.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(cosine_of(&b.0).total_cmp(&cosine_of(&a.0)))
                .then(a.0.cmp(&b.0))
        });
        ranked
    }

    fn evidence(&self, query: &AnalyzedQuery, entry: &Entry, cosine: Option<f32>) -> Evidence {
        Evidence {
            cosine,
            coverage: weighted_share(
                &query.terms,
                |t| entry.terms.contains(t),
                |t| self.idf(self.df.get(t).copied().unwrap_or(0)),
            ),
            char_coverage: weighted_share(
                &query.chars,
                |c| entry.chars.contains(c),
                |c| self.idf(self.char_df.get(c).copied().unwrap_or(0)),
            ),
            chinese: query.language == Language::Zh,
        }
    }
}

fn decrement<K: std::hash::Hash + Eq + Clone>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// What a passage's confidence was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Cosine similarity of query and chunk embeddings (None without embeddings).
    pub cosine: Option<f32>,
    /// IDF-weighted share of the query's terms found in the chunk, title and headings included.
    pub coverage: f32,
    /// The same over the Chinese characters of the query's terms (0 without any).
    pub char_coverage: f32,
    /// Whether the query is Chinese (the models differ by language).
    pub chinese: bool,
}

/// The search index of one tenant. `Send + Sync`: share it behind an `Arc`; searches
/// run concurrently, changes are serialised.
pub struct SearchIndex {
    embedder: Option<Arc<Embedder>>,
    config: SearchConfig,
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    analyzer: TextAnalyzer,
    grams_analyzer: TextAnalyzer,
    state: RwLock<State>,
}

/// Memory budget of the index writer (tantivy's minimum for one indexing thread).
const WRITER_MEMORY: usize = 15_000_000;
/// Chunks embedded per call to the embedder in `embed_chunks`.
const EMBED_BATCH: usize = 64;

impl SearchIndex {
    /// An empty index. Without an embedder, retrieval is BM25 only.
    pub fn new(embedder: Option<Arc<Embedder>>) -> Result<Self> {
        Self::with_config(embedder, SearchConfig::default())
    }

    /// An empty index with explicit retrieval settings.
    pub fn with_config(embedder: Option<Arc<Embedder>>, config: SearchConfig) -> Result<Self> {
        let mut builder = Schema::builder();
        let indexed_with = |tokenizer| {
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(tokenizer)
                    .set_index_option(IndexRecordOption::WithFreqs),
            )
        };
        let text = indexed_with(TOKENIZER_NAME);
        let grams = indexed_with(GRAMS_TOKENIZER_NAME);
        let fields = Fields {
            key: builder.add_u64_field("key", FAST),
            doc_id: builder.add_text_field("doc_id", STRING),
            title: builder.add_text_field("title", text.clone()),
            heading: builder.add_text_field("heading", text.clone()),
            body: builder.add_text_field("body", text),
            title_grams: builder.add_text_field("title_grams", grams.clone()),
            body_grams: builder.add_text_field("body_grams", grams),
        };
        let index = Index::create_in_ram(builder.build());
        let analyzer = analyzer(config.cjk_bigrams, config.stem);
        let grams_analyzer = grams_analyzer(config.pinyin > 0.0);
        index
            .tokenizers()
            .register(TOKENIZER_NAME, analyzer.clone());
        index
            .tokenizers()
            .register(GRAMS_TOKENIZER_NAME, grams_analyzer.clone());
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .context("creating the index writer")?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .context("creating the index reader")?;
        Ok(Self {
            embedder,
            config,
            fields,
            reader,
            writer: Mutex::new(writer),
            analyzer,
            grams_analyzer,
            state: RwLock::new(State::default()),
        })
    }

    /// The retrieval settings in use.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// True when searches use the dense ranking.
    pub fn is_hybrid(&self) -> bool {
        self.embedder.is_some() && self.config.dense
    }

    /// The text a chunk is embedded from: title and heading give the passage its context.
    fn embedding_text(chunk: &Chunk) -> String {
        let mut s =
            String::with_capacity(chunk.title.len() + chunk.heading.len() + chunk.text.len() + 4);
        for part in [chunk.title.as_str(), chunk.heading.as_str()] {
            if !part.is_empty() {
                s.push_str(part);
                s.push_str(". ");
            }
        }
        s.push_str(&chunk.text);
        s
    }

    /// Fills in the vector of every chunk that has none, in batches. Without an
    /// embedder (or with dense ranking switched off) this leaves the chunks as they are.
    pub fn embed_chunks(&self, chunks: &mut [Chunk]) -> Result<()> {
        let Some(embedder) = self.embedder.as_ref().filter(|_| self.config.dense) else {
            return Ok(());
        };
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|&i| chunks[i].vector.is_none())
            .collect();
        for batch in missing.chunks(EMBED_BATCH) {
            let texts: Vec<String> = batch
                .iter()
                .map(|&i| Self::embedding_text(&chunks[i]))
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder.embed(&refs).context("embedding chunks")?;
            if vectors.len() != batch.len() {
                bail!(
                    "the embedder returned {} vectors for {} texts",
                    vectors.len(),
                    batch.len()
                );
            }
            for (&i, v) in batch.iter().zip(vectors) {
                chunks[i].vector = Some(v);
            }
        }
        Ok(())
    }

    /// Adds chunks, first removing every chunk of the documents they belong to (so a
    /// document is replaced by passing all its new chunks), and commits. Chunks without
    /// a vector are embedded here when the index has an embedder.
    pub fn add_chunks(&self, mut chunks: Vec<Chunk>) -> Result<()> {
        self.embed_chunks(&mut chunks)?;
        let (mut writer, mut state) = self.lock_for_change()?;
        let expected = self
            .embedder
            .as_ref()
            .map(|e| e.dim())
            .or_else(|| state.dim())
            .or_else(|| chunks.iter().find_map(|c| c.vector.as_ref().map(Vec::len)));
        if let Some(dim) = expected {
            if let Some(bad) = chunks
                .iter()
                .find(|c| c.vector.as_ref().is_some_and(|v| v.len() != dim))
            {
                bail!(
                    "chunk {} has a vector of dimension {}, expected {dim}",
                    bad.id,
                    bad.vector.as_ref().map_or(0, Vec::len)
                );
            }
        }
        let doc_ids: HashSet<String> = chunks.iter().map(|c| c.doc_id.clone()).collect();
        for doc_id in &doc_ids {
            writer.delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
        }
        let mut analyzer = self.analyzer.clone();
        let mut new_entries = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let key = state.next_key;
            state.next_key += 1;
            writer.add_document(doc!(
                self.fields.key => key,
                self.fields.doc_id => chunk.doc_id.as_str(),
                self.fields.title => chunk.title.as_str(),
                self.fields.heading => chunk.heading.as_str(),
                self.fields.body => chunk.text.as_str(),
                self.fields.title_grams => chunk.title.as_str(),
                self.fields.body_grams => format!("{}\n{}", chunk.heading, chunk.text),
            ))?;
            let all = format!("{}\n{}\n{}", chunk.title, chunk.heading, chunk.text);
            let terms = distinct_terms(&mut analyzer, &all).into_iter().collect();
            let chars = all.chars().filter(|&c| is_cjk(c)).collect();
            new_entries.push((
                key,
                Entry {
                    chunk,
                    terms,
                    chars,
                },
            ));
        }
        self.commit(&mut writer)?;
        for doc_id in &doc_ids {
            state.remove_doc(doc_id);
        }
        for (key, entry) in new_entries {
            state.insert(key, entry);
        }
        Ok(())
    }

    /// The index writer and the state, locked for a change (always in this order).
    fn lock_for_change(
        &self,
    ) -> Result<(MutexGuard<'_, IndexWriter>, RwLockWriteGuard<'_, State>)> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| anyhow!("index writer lock poisoned"))?;
        let state = self
            .state
            .write()
            .map_err(|_| anyhow!("index state lock poisoned"))?;
        Ok((writer, state))
    }

    /// Commits the writer's changes and shows them to searches.
    fn commit(&self, writer: &mut IndexWriter) -> Result<()> {
        writer.commit().context("committing the index")?;
        self.reader.reload().context("reloading the index reader")?;
        Ok(())
    }

    /// Removes every chunk of a document. Returns whether the document was indexed.
    pub fn delete_document(&self, doc_id: &str) -> Result<bool> {
        let (mut writer, mut state) = self.lock_for_change()?;
        if !state.by_doc.contains_key(doc_id) {
            return Ok(false);
        }
        writer.delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
        self.commit(&mut writer)?;
        state.remove_doc(doc_id);
        Ok(true)
    }

    /// Removes everything.
    pub fn clear(&self) -> Result<()> {
        let (mut writer, mut state) = self.lock_for_change()?;
        writer.delete_all_documents()?;
        self.commit(&mut writer)?;
        let next_key = state.next_key;
        *state = State {
            next_key,
            ..State::default()
        };
        Ok(())
    }

    /// Number of indexed documents.
    pub fn document_count(&self) -> usize {
        self.state.read().map(|s| s.by_doc.len()).unwrap_or(0)
    }

    /// Number of indexed chunks.
    pub fn chunk_count(&self) -> usize {
        self.state.read().map(|s| s.entries.len()).unwrap_or(0)
    }

    /// The `k` best passages for a query, one (the best chunk) per document.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Passage>> {
        self.search_with_query_embedding(query, k, None)
    }

    /// Like [`search`](Self::search), with the query's sentence embedding when the caller
    /// already has it, as `(model id, L2-normalised vector)`: it saves embedding the query
    /// again when it comes from this index's encoder (same model id and dimension, see
    /// [`Embedder::accepts`]); otherwise the query is embedded here as usual.
    pub fn search_with_query_embedding(
        &self,
        query: &str,
        k: usize,
        query_embedding: Option<(&str, &[f32])>,
    ) -> Result<Vec<Passage>> {
        Ok(self
            .search_with(query, k, true, query_embedding)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// Like [`search`](Self::search), with the evidence behind each confidence.
    pub fn search_with_evidence(&self, query: &str, k: usize) -> Result<Vec<(Passage, Evidence)>> {
        self.search_with(query, k, true, None)
    }

    /// The `k` best chunks for a query, several per document allowed.
    pub fn search_chunks(&self, query: &str, k: usize) -> Result<Vec<Passage>> {
        Ok(self
            .search_with(query, k, false, None)?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The query's embedding for dense ranking (the supplied one when this index's encoder
    /// accepts it); None without dense ranking.
    fn query_vector<'a>(
        &self,
        query: &str,
        supplied: Option<(&str, &'a [f32])>,
    ) -> Result<Option<Cow<'a, [f32]>>> {
        match self.embedder.as_ref().filter(|_| self.config.dense) {
            Some(embedder) => Ok(Some(
                embedder
                    .reuse_or_embed(query, supplied)
                    .context("embedding the query")?,
            )),
            None => Ok(None),
        }
    }

    fn search_with(
        &self,
        query: &str,
        k: usize,
        per_document: bool,
        query_embedding: Option<(&str, &[f32])>,
    ) -> Result<Vec<(Passage, Evidence)>> {
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let analyzed = AnalyzedQuery::new(&mut self.analyzer.clone(), query);
        // Embed before taking the lock: it is the slow part.
        let query_vector = self.query_vector(query, query_embedding)?;
        let state = self
            .state
            .read()
            .map_err(|_| anyhow!("index state lock poisoned"))?;
        if state.entries.is_empty() {
            return Ok(Vec::new());
        }
        let lexical = if self.config.lexical {
            self.lexical_ranking(&analyzed.terms, &self.query_grams(query))?
        } else {
            Vec::new()
        };
        let cosines = state.cosines(query_vector.as_deref());
        let dense = best_first(&cosines, self.config.candidates);
        let w = self
            .config
            .dense_weight(analyzed.language, &lexical, &dense);
        let fused = self.config.fusion.fuse(&lexical, &dense, &cosines, w);
        let mut seen_docs: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(k);
        for (key, score) in state.ranked(fused, &cosines) {
            let entry = &state.entries[&key];
            if per_document && !seen_docs.insert(entry.chunk.doc_id.as_str()) {
                continue;
            }
            let evidence = state.evidence(&analyzed, entry, cosines.get(&key).copied());
            out.push((entry.passage(score, &evidence), evidence));
            if out.len() == k {
                break;
            }
        }
        Ok(out)
    }

    /// The query's Chinese n-grams for BM25 (none when their weight is 0).
    fn query_grams(&self, query: &str) -> Vec<String> {
        if self.config.chinese_grams > 0.0 {
            distinct_terms(&mut self.grams_analyzer.clone(), query)
        } else {
            Vec::new()
        }
    }

    /// BM25 ranking of chunk keys for the analyzed query terms and Chinese n-grams, each
    /// field scored on its own and the scores summed with the configured weights.
    fn lexical_ranking(&self, terms: &[String], grams: &[String]) -> Result<Vec<(u64, f32)>> {
        let c = &self.config;
        let word_fields = [
            (self.fields.body, 1.0),
            (self.fields.title, c.title_boost),
            (self.fields.heading, c.heading_boost),
        ];
        let gram_fields = [
            (self.fields.body_grams, c.chinese_grams),
            (self.fields.title_grams, c.chinese_grams * c.question_boost),
        ];
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (units, fields) in [(terms, &word_fields[..]), (grams, &gram_fields[..])] {
            for unit in units {
                let weight = if is_pinyin(unit) { c.pinyin } else { 1.0 };
                for &(field, boost) in fields {
                    let boost = boost * weight;
                    if boost <= 0.0 {
                        continue;
                    }
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(field, unit),
                        IndexRecordOption::WithFreqs,
                    ));
                    clauses.push((
                        Occur::Should,
                        if boost == 1.0 {
                            q
                        } else {
                            Box::new(BoostQuery::new(q, boost))
                        },
                    ));
                }
            }
        }
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(self.config.candidates),
        )?;
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|r| r.fast_fields().u64("key"))
            .collect::<tantivy::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let column = &columns[address.segment_ord as usize];
            if let Some(key) = column.first(address.doc_id) {
                out.push((key, score));
            }
        }
        Ok(out)
    }
}

/// Share of the query's information found in a chunk: the IDF-weighted fraction of
/// query units (terms or characters) that the chunk contains.
fn weighted_share<T>(units: &[T], found: impl Fn(&T) -> bool, idf: impl Fn(&T) -> f32) -> f32 {
    let mut total = 0.0;
    let mut hit = 0.0;
    for u in units {
        let w = idf(u);
        total += w;
        if found(u) {
            hit += w;
        }
    }
    if total > 0.0 {
        hit / total
    } else {
        0.0
    }
}

/// The query as the index reads it.
struct AnalyzedQuery {
    /// Distinct analyzed terms.
    terms: Vec<String>,
    /// Distinct Chinese characters of the terms.
    chars: Vec<char>,
    language: Language,
}

impl AnalyzedQuery {
    fn new(analyzer: &mut TextAnalyzer, query: &str) -> Self {
        let terms = distinct_terms(analyzer, query);
        let mut chars: Vec<char> = terms
            .iter()
            .flat_map(|t| t.chars())
            .filter(|&c| is_cjk(c))
            .collect();
        chars.sort_unstable();
        chars.dedup();
        Self {
            terms,
            chars,
            language: detect_language(query),
        }
    }
}

/// The `n` best chunks by cosine, best first (ties by key).
fn best_first(cosines: &HashMap<u64, f32>, n: usize) -> Vec<(u64, f32)> {
    let mut ranking: Vec<(u64, f32)> = cosines.iter().map(|(&k, &c)| (k, c)).collect();
    ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranking.truncate(n);
    ranking
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(doc_id: &str, n: usize, vector: Option<Vec<f32>>) -> Entry {
        Entry {
            chunk: Chunk {
                id: format!("{doc_id}#{n}"),
                doc_id: doc_id.into(),
                title: String::new(),
                heading: String::new(),
                text: String::new(),
                vector,
            },
            terms: [format!("t{n}"), "shared".to_string()]
                .into_iter()
                .collect(),
            chars: HashSet::new(),
        }
    }

    #[test]
    fn removing_a_document_keeps_vectors_and_counts_consistent() {
        let mut state = State::default();
        state.insert(0, entry("a", 0, Some(vec![1.0, 0.0])));
        state.insert(1, entry("b", 1, Some(vec![0.0, 1.0])));
        state.insert(2, entry("b", 2, None));
        state.insert(3, entry("c", 3, Some(vec![0.5, 0.5])));
        assert_eq!(state.dim(), Some(2));
        assert_eq!(state.df["shared"], 4);
        assert!(state.remove_doc("b"));
        assert!(!state.remove_doc("b"));
        assert_eq!(state.df["shared"], 2);
        assert!(!state.df.contains_key("t1"));
        assert_eq!(state.dense_keys.len(), 2);
        for (row, key) in state.dense_keys.iter().enumerate() {
            assert_eq!(state.dense_rows[key], row);
            let stored = state.entries[key]
                .chunk
                .vector
                .as_deref()
                .unwrap_or_default();
            assert_eq!(&state.dense[row * 2..row * 2 + 2], stored);
        }
        state.remove_doc("a");
        state.remove_doc("c");
        assert!(state.dense.is_empty() && state.dense_rows.is_empty() && state.df.is_empty());
        assert_eq!(state.dim(), None);
    }

    #[test]
    fn the_index_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SearchIndex>();
    }

    #[test]
    fn vectors_of_another_dimension_are_refused() {
        let index = SearchIndex::new(None).expect("index");
        let chunk = |id: &str, v: Vec<f32>| Chunk {
            id: format!("{id}#0"),
            doc_id: id.into(),
            title: "T".into(),
            heading: String::new(),
            text: "some text".into(),
            vector: Some(v),
        };
        index
            .add_chunks(vec![chunk("a", vec![1.0, 0.0, 0.0])])
            .expect("first vector sets the dimension");
        assert!(index.add_chunks(vec![chunk("b", vec![1.0, 0.0])]).is_err());
        assert_eq!(index.document_count(), 1);
    }
}

//! Knowledge gaps: the questions the bot could not answer, grouped by meaning with the
//! encoders the router uses (a question joins the group whose centroid is closest, when
//! close enough, else starts one), each group checked against the tenant's documents:
//! the article that comes closest, and whether the documents now answer its questions
//! (then it is covered, until a new question of it goes unanswered). Grouping runs in
//! the background and before each listing, one replica per tenant at a time.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kefu_nlp::embed::dot;
use kefu_proto::timestamp_from_millis;
use kefu_proto::v1::{KnowledgeGap, Language, ListKnowledgeGapsRequest, ListKnowledgeGapsResponse};
use kefu_search::compose_answer;
use kefu_storage::gaps::{GapQuestion, GapRecord, PendingQuestion};
use kefu_storage::now_millis;
use kefu_storage::reports::DAY_MS;
use tonic::Status;

use crate::index::{internal, Knowledge, TenantIndex};

/// The cosine similarity to a group's centroid from which a question is of that group.
/// With both encoders, questions on one topic asked differently score 0.58 to 0.73 and
/// questions on other topics below 0.32 (on a hand-written set); LCQMC's paraphrase pairs
/// all score above 0.5.
pub(crate) const GROUP_SIMILARITY: f32 = 0.5;
/// How long one replica may group a tenant's questions before another may take over.
const LEASE_MS: i64 = 60_000;
/// Questions grouped per run; the rest wait for the next.
const BATCH: usize = 256;
/// Examples shown, and searched to tell whether the documents answer a group.
const EXAMPLES: i64 = 3;
const TREND_WINDOW_MS: i64 = 7 * DAY_MS;
const DEFAULT_LIMIT: i32 = 50;
const MAX_LIMIT: i32 = 200;
const TITLE_CHARS: usize = 80;

/// The group of `language` whose centroid is closest to `vector`, with its similarity,
/// among groups of the same encoder.
pub(crate) fn closest_group(
    groups: &[GapRecord],
    model: &str,
    language: i32,
    vector: &[f32],
) -> Option<(usize, f32)> {
    groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.language == language && g.vector_model == model)
        .filter(|(_, g)| g.centroid.len() == vector.len())
        .map(|(i, g)| (i, dot(&g.centroid, vector)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = dot(&vector, &vector).sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// A question joins a group: the centroid moves to the members' mean; a group covered
/// before the question was asked is open again, since the question went unanswered.
pub(crate) fn join(group: &mut GapRecord, vector: &[f32], asked_at: i64) {
    let members = group.questions as f32;
    let sum = group
        .centroid
        .iter()
        .zip(vector)
        .map(|(c, v)| c * members + v)
        .collect();
    group.centroid = normalized(sum);
    group.questions += 1;
    group.first_asked = group.first_asked.min(asked_at);
    group.last_asked = group.last_asked.max(asked_at);
    if group.covered_at.is_some_and(|covered| covered <= asked_at) {
        group.covered_at = None;
        group.covered_by_document_id.clear();
    }
}

/// A title for the missing article: the group's most typical question, on one line.
pub(crate) fn title_of(question: &str) -> String {
    let line = question.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut title: String = line.chars().take(TITLE_CHARS).collect();
    if title.len() < line.len() {
        title.push('…');
    }
    let mut chars = title.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => title,
    }
}

/// What the tenant's documents say about a group's questions.
struct Check {
    closest: Option<(String, String, f32)>,
    /// The document that answers most of them, when most are answered.
    answered_by: Option<String>,
}

/// Searches the group's typical question for the closest article, and its examples for
/// answers: the documents cover the group when at least half of them are answered.
fn check(index: &TenantIndex, title: &str, examples: &[String]) -> anyhow::Result<Check> {
    let closest = index
        .index
        .search(title, 1)?
        .into_iter()
        .next()
        .map(|p| (p.doc_id, p.title, p.confidence));
    let mut answers: HashMap<String, usize> = HashMap::new();
    for example in examples {
        let passages = index.index.search(example, 3)?;
        if let Some(answer) = compose_answer(example, &passages).filter(|a| a.confident) {
            if let Some(source) = answer.sources.first() {
                *answers.entry(source.doc_id.clone()).or_default() += 1;
            }
        }
    }
    let answered: usize = answers.values().sum();
    let answered_by = (!examples.is_empty() && 2 * answered >= examples.len())
        .then(|| {
            answers
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(doc, _)| doc)
        })
        .flatten();
    Ok(Check {
        closest,
        answered_by,
    })
}

impl Knowledge {
    /// Groups the tenant's new unanswered questions and checks the groups against its
    /// documents; returns how many questions still wait. Another replica grouping the
    /// tenant now is left to it.
    pub(crate) async fn refresh_gaps(&self, tenant_id: &str) -> Result<i64, Status> {
        let index = self.index(tenant_id)?;
        let Some(embedder) = self.embedder.clone() else {
            // Without the encoders nothing can be grouped: the questions wait.
            return Ok(self.gaps.pending(tenant_id, 0).await?.1);
        };
        if !self.gaps.claim(tenant_id, LEASE_MS).await? {
            return Ok(self.gaps.pending(tenant_id, 0).await?.1);
        }
        let refreshed = self.group_and_check(tenant_id, &index, embedder).await;
        if let Err(error) = self.gaps.release(tenant_id).await {
            tracing::warn!(tenant = %tenant_id, %error, "releasing the grouping lease failed; it runs out by itself");
        }
        refreshed
    }

    /// Groups every tenant's new questions; a tenant whose index is not built yet waits.
    pub(crate) async fn refresh_all_gaps(&self) {
        for tenant in self.known_tenants.iter() {
            match self.refresh_gaps(&tenant.id).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::Unavailable => {}
                Err(status) => {
                    tracing::warn!(tenant = %tenant.id, error = %status.message(), "grouping unanswered questions failed")
                }
            }
        }
    }

    async fn group_and_check(
        &self,
        tenant_id: &str,
        index: &Arc<TenantIndex>,
        embedder: Arc<kefu_nlp::embed::Embedder>,
    ) -> Result<i64, Status> {
        let (pending, waiting) = self.gaps.pending(tenant_id, BATCH).await?;
        let mut groups = self.gaps.groups(tenant_id).await?;
        let model = embedder.model_id().to_owned();
        let texts: Vec<String> = pending.iter().map(|q| q.text.clone()).collect();
        let vectors = tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&texts)
        })
        .await
        .map_err(internal)?
        .map_err(|error| internal(format!("embedding questions: {error:#}")))?;
        let mut changed = HashSet::new();
        let mut joined = Vec::with_capacity(pending.len());
        for (question, vector) in pending.iter().zip(vectors) {
            let language = Language::from(kefu_nlp::text::detect_language(&question.text)) as i32;
            let (at, similarity) = match closest_group(&groups, &model, language, &vector) {
                Some((at, similarity)) if similarity >= GROUP_SIMILARITY => {
                    join(&mut groups[at], &vector, question.asked_at);
                    // a question unanswered with these documents: no check needed for them
                    groups[at].checked_generation = index.generation.clone();
                    (at, similarity)
                }
                _ => {
                    groups.push(new_group(question, language, &model, vector.clone()));
                    (groups.len() - 1, 1.0)
                }
            };
            changed.insert(at);
            joined.push(GapQuestion {
                customer_id: question.customer_id.clone(),
                message_id: question.message_id.clone(),
                gap_id: groups[at].gap_id.clone(),
                text: question.text.clone(),
                vector,
                similarity: f64::from(similarity),
                asked_at: question.asked_at,
            });
        }
        let changed_groups: Vec<GapRecord> = changed.iter().map(|i| groups[*i].clone()).collect();
        self.gaps.save(tenant_id, &changed_groups, &joined).await?;
        if !joined.is_empty() {
            tracing::info!(tenant = %tenant_id, questions = joined.len(), groups = changed.len(), "unanswered questions grouped");
        }
        self.check_groups(tenant_id, index, groups, &changed)
            .await?;
        Ok(waiting - joined.len() as i64)
    }

    /// Finds the closest article and coverage of the groups that changed or were last
    /// checked against other documents.
    async fn check_groups(
        &self,
        tenant_id: &str,
        index: &Arc<TenantIndex>,
        groups: Vec<GapRecord>,
        changed: &HashSet<usize>,
    ) -> Result<(), Status> {
        let mut due = Vec::new();
        for (at, group) in groups.into_iter().enumerate() {
            let stale = group.checked_generation != index.generation;
            if stale || changed.contains(&at) {
                let examples = self
                    .gaps
                    .examples(tenant_id, &group.gap_id, EXAMPLES)
                    .await?;
                due.push((group, examples, stale));
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let searched = index.clone();
        let checked = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(mut group, examples, stale)| {
                    if let Some(typical) = examples.first() {
                        group.suggested_title = title_of(typical);
                    }
                    let found = check(&searched, &group.suggested_title, &examples)?;
                    if let Some((id, title, confidence)) = found.closest {
                        group.closest_document_id = id;
                        group.closest_document_title = title;
                        group.closeness = f64::from(confidence);
                    }
                    // Only other documents can answer what these left unanswered.
                    if stale {
                        match found.answered_by {
                            Some(document) if group.covered_at.is_none() => {
                                group.covered_at = Some(now_millis());
                                group.covered_by_document_id = document;
                            }
                            Some(_) => {}
                            None => {
                                group.covered_at = None;
                                group.covered_by_document_id.clear();
                            }
                        }
                    }
                    group.checked_generation = searched.generation.clone();
                    Ok(group)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .map_err(internal)?
        .map_err(|error| internal(format!("checking knowledge gaps: {error:#}")))?;
        self.gaps.save(tenant_id, &checked, &[]).await?;
        Ok(())
    }

    pub(crate) async fn list_gaps(
        &self,
        request: ListKnowledgeGapsRequest,
    ) -> Result<ListKnowledgeGapsResponse, Status> {
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if (1..=MAX_LIMIT).contains(&n) => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit must be between 0 and {MAX_LIMIT}, not {n}"
                )))
            }
        };
        let language = Language::try_from(request.language).map_err(|_| {
            Status::invalid_argument(format!("unknown language {}", request.language))
        })?;
        let tenant_id = request.tenant_id.as_str();
        let pending = self.refresh_gaps(tenant_id).await?;
        let now = now_millis();
        let trends: HashMap<String, _> = self
            .gaps
            .trends(tenant_id, now, TREND_WINDOW_MS)
            .await?
            .into_iter()
            .collect();
        let mut gaps = Vec::new();
        for group in self.gaps.groups(tenant_id).await? {
            if gaps.len() >= limit as usize {
                break;
            }
            let wanted_language =
                language == Language::Unspecified || group.language == language as i32;
            if !wanted_language || (group.covered_at.is_some() && !request.include_covered) {
                continue;
            }
            let trend = trends.get(&group.gap_id).copied().unwrap_or_default();
            gaps.push(KnowledgeGap {
                examples: self
                    .gaps
                    .examples(tenant_id, &group.gap_id, EXAMPLES)
                    .await?,
                gap_id: group.gap_id,
                language: group.language,
                questions: group.questions,
                last_7_days: trend.recent,
                previous_7_days: trend.before,
                suggested_title: group.suggested_title,
                closest_document_id: group.closest_document_id,
                closest_document_title: group.closest_document_title,
                closeness: group.closeness as f32,
                first_asked: Some(timestamp_from_millis(group.first_asked)),
                last_asked: Some(timestamp_from_millis(group.last_asked)),
                covered_at: group.covered_at.map(timestamp_from_millis),
                covered_by_document_id: group.covered_by_document_id,
            });
        }
        Ok(ListKnowledgeGapsResponse { gaps, pending })
    }
}

fn new_group(
    question: &PendingQuestion,
    language: i32,
    model: &str,
    vector: Vec<f32>,
) -> GapRecord {
    GapRecord {
        gap_id: uuid::Uuid::now_v7().to_string(),
        language,
        centroid: vector,
        vector_model: model.to_owned(),
        questions: 1,
        suggested_title: title_of(&question.text),
        first_asked: question.asked_at,
        last_asked: question.asked_at,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(language: i32, centroid: Vec<f32>) -> GapRecord {
        GapRecord {
            gap_id: "g".into(),
            language,
            centroid,
            vector_model: "m".into(),
            questions: 1,
            first_asked: 10,
            last_asked: 10,
            ..Default::default()
        }
    }

    #[test]
    fn a_question_goes_to_the_closest_group_of_its_language_and_encoder() {
        let groups = vec![
            group(1, vec![1.0, 0.0]),
            group(1, vec![0.0, 1.0]),
            group(2, vec![0.8, 0.6]),
            GapRecord {
                vector_model: "older".into(),
                ..group(1, vec![0.6, 0.8])
            },
        ];
        let (at, similarity) = closest_group(&groups, "m", 1, &[0.6, 0.8]).unwrap();
        assert_eq!(at, 1);
        assert!((similarity - 0.8).abs() < 1e-6);
        assert_eq!(closest_group(&groups, "m", 2, &[0.6, 0.8]).unwrap().0, 2);
        assert!(closest_group(&groups, "m", 1, &[1.0, 0.0, 0.0]).is_none());
    }

    #[test]
    fn joining_moves_the_centroid_and_reopens_a_covered_group() {
        let mut g = GapRecord {
            covered_at: Some(20),
            covered_by_document_id: "faq".into(),
            ..group(1, vec![1.0, 0.0])
        };
        join(&mut g, &[0.0, 1.0], 15);
        assert_eq!(g.questions, 2);
        assert!((g.centroid[0] - g.centroid[1]).abs() < 1e-6);
        assert!((dot(&g.centroid, &g.centroid) - 1.0).abs() < 1e-5);
        assert_eq!(g.covered_at, Some(20), "asked before it was covered");
        join(&mut g, &[0.0, 1.0], 30);
        assert_eq!(
            (g.covered_at, g.covered_by_document_id.as_str()),
            (None, "")
        );
        assert_eq!((g.first_asked, g.last_asked), (10, 30));
    }

    #[test]
    fn titles_are_one_short_line() {
        assert_eq!(
            title_of("  can i pay\n with  paypal? "),
            "Can i pay with paypal?"
        );
        let long = "x".repeat(200);
        assert_eq!(title_of(&long).chars().count(), TITLE_CHARS + 1);
        assert_eq!(title_of("可以用支付宝付款吗"), "可以用支付宝付款吗");
    }
}

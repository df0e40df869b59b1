//! Sentiment service: five-level label and polarity score of a message, English and
//! Chinese, and the probability that the customer needs a person, from the bundled
//! trained models. Escalation cues are the tenant's policy and the router's business.
use std::sync::Arc;

use kefu_nlp::embed::Embedder;
use kefu_nlp::handoff::HandOffModel;
use kefu_nlp::sentiment::{SentimentAnalysis, SentimentLevel, SentimentModel};
use kefu_proto::v1::sentiment_service_server::{SentimentService, SentimentServiceServer};
use kefu_proto::v1::{
    AnalyzeRequest, AnalyzeResponse, Embedding, Language, Sentiment, SentimentLabel,
};
use kefu_runtime::{ModelArgs, RunningServer, ServerArgs, ServiceSpec, Shutdown};
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::SENTIMENT;
const SERVICE: &str = "kefu-sentiment";
/// Longer texts are cut: sentiment is decided well before this and cost stays bounded.
const MAX_TEXT_BYTES: usize = 16 * 1024;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// The bundled models, with the sentence encoder when it is installed (without it the
/// sentiment model's lexical half answers alone, which generalises less well across
/// domains, and the hand-off model, which reads embeddings only, is silent).
#[derive(Clone)]
pub struct Analyzer {
    model: &'static SentimentModel,
    /// Kept only when it was trained on the installed encoder's embeddings.
    hand_off: Option<&'static HandOffModel>,
    embedder: Option<Arc<Embedder>>,
}

/// What the service reads in a message.
struct Reading {
    sentiment: SentimentAnalysis,
    /// The probability that the customer needs a person, when the encoder is installed.
    needs_person: Option<f32>,
}

impl Analyzer {
    pub fn new(embedder: Option<Arc<Embedder>>) -> Self {
        let hand_off = Some(HandOffModel::bundled()).filter(|m| {
            embedder
                .as_ref()
                .is_some_and(|e| m.encoder() == e.model_id())
        });
        Self {
            model: SentimentModel::bundled(),
            hand_off,
            embedder,
        }
    }

    /// A `supplied` embedding of the text (e.g. the router's) is used when it comes from
    /// the same encoder; otherwise the text is embedded here, in a batch with other
    /// requests. The rest (sparse features, two linear layers, cue words) is brief.
    async fn read(&self, text: &str, supplied: Option<&Embedding>) -> Reading {
        let lexical = || Reading {
            sentiment: self.model.analyze(text, None),
            needs_person: None,
        };
        let Some(embedder) = &self.embedder else {
            return lexical();
        };
        let supplied = supplied.map(|e| (e.model.as_str(), e.values.as_slice()));
        match embedder.reuse_or_embed_batched(text, supplied).await {
            Ok(embedding) => {
                let sentiment = self.model.analyze(text, Some(&embedding));
                let needs_person = self
                    .hand_off
                    .and_then(|m| m.probability(text, &embedding, &sentiment));
                Reading {
                    sentiment,
                    needs_person,
                }
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "embedding failed; lexical sentiment only");
                lexical()
            }
        }
    }
}

pub fn label_of(level: SentimentLevel) -> SentimentLabel {
    match level {
        SentimentLevel::VeryNegative => SentimentLabel::VeryNegative,
        SentimentLevel::Negative => SentimentLabel::Negative,
        SentimentLevel::Neutral => SentimentLabel::Neutral,
        SentimentLevel::Positive => SentimentLabel::Positive,
        SentimentLevel::VeryPositive => SentimentLabel::VeryPositive,
    }
}

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[tonic::async_trait]
impl SentimentService for Analyzer {
    async fn analyze(
        &self,
        request: Request<AnalyzeRequest>,
    ) -> Result<Response<AnalyzeResponse>, Status> {
        let AnalyzeRequest { text, embedding } = request.into_inner();
        if text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        let Reading {
            sentiment: analysis,
            needs_person,
        } = self
            .read(
                truncate_at_char_boundary(&text, MAX_TEXT_BYTES),
                embedding.as_ref(),
            )
            .await;
        let label = label_of(analysis.level);
        metrics::counter!("kefu_sentiment_labels_total", "service" => SERVICE, "label" => kefu_proto::enum_label(label.as_str_name(), "SENTIMENT_LABEL_")).increment(1);
        Ok(Response::new(AnalyzeResponse {
            sentiment: Some(Sentiment {
                label: label as i32,
                score: analysis.score.clamp(-1.0, 1.0),
            }),
            language: Language::from(analysis.language) as i32,
            needs_person,
        }))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    kefu_runtime::Server::new(SPEC, config.server)
        .add_service(SentimentServiceServer::new(Analyzer::new(
            kefu_nlp::embed::load_optional(&config.models.models_dir),
        )))
        .start(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_nlp::embed::MODEL_NAME;

    fn models_dir() -> std::path::PathBuf {
        std::env::var_os("KEFU_MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
            })
    }

    /// The encoder; None (test skipped) only when it is missing and CI is unset.
    fn test_embedder() -> Option<Arc<Embedder>> {
        let dir = models_dir();
        if !dir.join(MODEL_NAME).join("model.safetensors").is_file()
            && std::env::var_os("CI").is_none()
        {
            eprintln!(
                "skipping: no model in {} (run `make models`)",
                dir.display()
            );
            return None;
        }
        Some(kefu_nlp::embed::load_optional(&dir).expect("loading the embedding model"))
    }

    async fn analyze(
        analyzer: &Analyzer,
        text: &str,
        embedding: Option<Embedding>,
    ) -> AnalyzeResponse {
        analyzer
            .analyze(Request::new(AnalyzeRequest {
                text: text.into(),
                embedding,
            }))
            .await
            .unwrap()
            .into_inner()
    }

    #[test]
    fn truncates_on_a_character_boundary() {
        let text = "服务太差".repeat(3);
        let cut = truncate_at_char_boundary(&text, 4);
        assert_eq!(cut, "服");
    }

    #[tokio::test]
    async fn rejects_blank_text_and_labels_clear_cases() {
        let analyzer = Analyzer::new(kefu_nlp::embed::load_optional(&models_dir()));
        let error = analyzer
            .analyze(Request::new(AnalyzeRequest {
                text: "  ".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let reply = analyze(&analyzer, "你们的服务太差了，我要投诉", None).await;
        let sentiment = reply.sentiment.unwrap();
        assert!(
            sentiment.label == SentimentLabel::Negative as i32
                || sentiment.label == SentimentLabel::VeryNegative as i32
        );
        assert!(sentiment.score < 0.0);
        assert_eq!(reply.language, Language::Zh as i32);
    }

    /// The learned hand-off reading comes with the sentiment: high for a danger described
    /// without alarm words, low for a price question, absent without the encoder.
    #[tokio::test]
    async fn reads_whether_the_customer_needs_a_person() {
        let Some(embedder) = test_embedder() else {
            return;
        };
        let analyzer = Analyzer::new(Some(embedder));
        let needs_person = |text: &'static str| {
            let analyzer = analyzer.clone();
            async move { analyze(&analyzer, text, None).await.needs_person.unwrap() }
        };
        for calm_danger in [
            "The plug of the tablet charger has gone black and a bit melted at the pins",
            "插线板摸着很烫，还有点塑料烧焦的味道",
        ] {
            let p = needs_person(calm_danger).await;
            assert!(p >= 0.7, "{calm_danger}: {p}");
        }
        for question in ["How much is the Pro plan per month?", "专业版一个月多少钱"] {
            let p = needs_person(question).await;
            assert!(p < 0.3, "{question}: {p}");
        }
        let without_encoder = analyze(&Analyzer::new(None), "插线板很烫", None).await;
        assert_eq!(without_encoder.needs_person, None);
    }

    /// A supplied embedding stands in for the service's own only when it is from the same
    /// encoder: the router's embedding saves a second forward pass, anything else is ignored.
    #[tokio::test]
    async fn uses_a_supplied_embedding_only_from_the_same_encoder() {
        let Some(embedder) = test_embedder() else {
            return;
        };
        let analyzer = Analyzer::new(Some(embedder.clone()));
        let text = "My parcel arrived on Tuesday.";
        let embedding_of = |text: &str, model: &str| Embedding {
            model: model.into(),
            values: embedder.embed(&[text]).unwrap().remove(0),
        };
        let own = analyze(&analyzer, text, None).await;
        let own_score = own.sentiment.unwrap().score;

        // The text's own embedding, supplied: the same answer as embedding it here.
        let supplied = analyze(
            &analyzer,
            text,
            Some(embedding_of(text, embedder.model_id())),
        )
        .await;
        assert_eq!(supplied, own);

        // A furious message's embedding under the text: a supplied embedding is used.
        let furious = "This is the worst service I have ever had, I am disgusted and furious!";
        let used = analyze(
            &analyzer,
            text,
            Some(embedding_of(furious, embedder.model_id())),
        )
        .await;
        let used_score = used.sentiment.unwrap().score;
        assert!(
            used_score < own_score - 0.1,
            "with the furious embedding {used_score}, own {own_score}"
        );

        // The same vector said to come from another encoder, or cut to another size, or not
        // normalised: ignored, the text is embedded here.
        for foreign in [
            embedding_of(furious, "paraphrase-multilingual-MiniLM-L12-v2"),
            embedding_of(furious, MODEL_NAME),
            Embedding {
                values: embedding_of(furious, embedder.model_id()).values[..256].to_vec(),
                ..embedding_of(furious, embedder.model_id())
            },
            Embedding {
                values: vec![0.0; embedder.dim()],
                ..embedding_of(furious, embedder.model_id())
            },
        ] {
            assert_eq!(analyze(&analyzer, text, Some(foreign)).await, own);
        }
    }
}

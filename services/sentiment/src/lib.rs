//! Sentiment service: five-level label, polarity score and escalation signals of a
//! message, English and Chinese, from the bundled trained model.
use kefu_nlp::sentiment::{EscalationSignal as Signal, SentimentLevel, SentimentModel};
use kefu_nlp::text::Language as Lang;
use kefu_proto::v1::sentiment_service_server::{SentimentService, SentimentServiceServer};
use kefu_proto::v1::{AnalyzeRequest, AnalyzeResponse, EscalationSignal, Language, Sentiment, SentimentLabel};
use kefu_runtime::{RunningServer, ServerArgs, ServiceSpec, Shutdown};
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::SENTIMENT;
const SERVICE: &str = "kefu-sentiment";
/// Longer texts are cut: sentiment is decided well before this and cost stays bounded.
const MAX_TEXT_BYTES: usize = 16 * 1024;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
}

pub struct Analyzer {
    model: &'static SentimentModel,
}

impl Analyzer {
    pub fn new() -> Self {
        Self { model: SentimentModel::bundled() }
    }
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
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

pub fn language_of(language: Lang) -> Language {
    match language {
        Lang::En => Language::En,
        Lang::Zh => Language::Zh,
    }
}

fn signal_of(signal: &Signal) -> EscalationSignal {
    match signal {
        Signal::Anger => EscalationSignal::Anger,
        Signal::ChurnThreat => EscalationSignal::ChurnThreat,
        Signal::Complaint => EscalationSignal::Complaint,
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
    async fn analyze(&self, request: Request<AnalyzeRequest>) -> Result<Response<AnalyzeResponse>, Status> {
        let text = request.into_inner().text;
        if text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        let analysis = self.model.analyze(truncate_at_char_boundary(&text, MAX_TEXT_BYTES));
        let label = label_of(analysis.level);
        metrics::counter!("kefu_sentiment_labels_total", "service" => SERVICE, "label" => kefu_proto::enum_label(label.as_str_name(), "SENTIMENT_LABEL_")).increment(1);
        Ok(Response::new(AnalyzeResponse {
            sentiment: Some(Sentiment { label: label as i32, score: analysis.score.clamp(-1.0, 1.0) }),
            language: language_of(analysis.language) as i32,
            signals: analysis.signals.iter().map(|s| signal_of(s) as i32).collect(),
            escalate: analysis.escalate,
        }))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    kefu_runtime::Server::new(SPEC, config.server)
        .add_service(SentimentServiceServer::new(Analyzer::new()))
        .start(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_a_character_boundary() {
        let text = "服务太差".repeat(3);
        let cut = truncate_at_char_boundary(&text, 4);
        assert_eq!(cut, "服");
    }

    #[tokio::test]
    async fn rejects_blank_text_and_labels_clear_cases() {
        let analyzer = Analyzer::new();
        let error = analyzer.analyze(Request::new(AnalyzeRequest { text: "  ".into() })).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let reply = analyzer
            .analyze(Request::new(AnalyzeRequest { text: "你们的服务太差了，我要投诉".into() }))
            .await
            .unwrap()
            .into_inner();
        let sentiment = reply.sentiment.unwrap();
        assert!(sentiment.label == SentimentLabel::Negative as i32 || sentiment.label == SentimentLabel::VeryNegative as i32);
        assert!(sentiment.score < 0.0);
        assert_eq!(reply.language, Language::Zh as i32);
    }
}

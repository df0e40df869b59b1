//! `kefu bench reports`: loads a database of its own with a million turns of support
//! conversations (and their hand-off tickets and ratings) and times the support report
//! over them, as GetSupportReport computes it: the same queries, the same summing.
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use kefu_orchestrator::reports::report;
use kefu_storage::reports::{ReportScope, DAY_MS};
use kefu_storage::{now_millis, Database, SqlReports};

use crate::bench::percentile;

#[derive(Parser, Clone, Debug)]
pub struct ReportBenchArgs {
    /// A PostgreSQL server's URL with a database to connect to first; the benchmark
    /// creates (and afterwards drops) a database of its own beside it.
    #[arg(long, default_value = "postgres://127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// Turns to load: customer messages with the bot's replies, four per conversation.
    #[arg(long, default_value_t = 1_000_000)]
    pub turns: i64,
    /// The turns are spread over this many days, ending now; the report covers them all.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Reports computed per scope (the first one, cold, included).
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Keep the database afterwards, to look at the plans.
    #[arg(long)]
    pub keep: bool,
}

const TENANT: &str = "bench";
const TURNS_PER_CONVERSATION: i64 = 4;
const DATABASE: &str = "kefu_report_bench";

/// Conversations of 4 turns from 50,000 customers over three channels and two
/// languages: every 10th handed off (its ticket answered within minutes, a fifth of them
/// VIP), every 7th with a question the bot missed, half the tickets rated.
const LOAD_TURNS: &str = "
INSERT INTO session_turns (tenant_id, session_id, seq, message_id, customer_id, text, reply,
    intent, sentiment, escalated, ticket_id, response, created_at, channel, language, unanswered)
SELECT $1, 's' || (g / 4), (g % 4) + 1, 'm' || g, 'c' || ((g / 4) % 50000),
    'a question of the customer', 'the bot''s reply', 'billing', 3,
    CASE WHEN g % 4 = 3 AND (g / 4) % 10 = 0 THEN 1 ELSE 0 END,
    CASE WHEN g % 4 = 3 AND (g / 4) % 10 = 0 THEN 't' || (g / 4) ELSE '' END,
    '\\x'::bytea, $2 + (g / 4) * $3 + (g % 4) * 30000,
    1 + (g / 4) % 3, 1 + (g / 4) % 2,
    CASE WHEN g % 4 = 1 AND (g / 4) % 7 = 0 THEN 'miss' ELSE '' END
FROM generate_series(0, $4 - 1) AS g";

/// Each conversation's row, as the turns' inserts keep it.
const LOAD_CONVERSATIONS: &str = "
INSERT INTO conversations (tenant_id, session_id, customer_id, started_at, last_at, channel,
    language, turns, handed_off, unanswered)
SELECT tenant_id, session_id, MIN(customer_id), MIN(created_at), MAX(created_at), MIN(channel),
    MIN(language), COUNT(*), MAX(escalated), SUM(CASE WHEN unanswered <> '' THEN 1 ELSE 0 END)
FROM session_turns WHERE tenant_id = $1 GROUP BY tenant_id, session_id";

const LOAD_TICKETS: &str = "
INSERT INTO tickets (tenant_id, ticket_id, customer_id, session_id, subject, status, priority,
    intent, channel, vip_tier, escalation_reason, created_at, updated_at, sla_due_at,
    first_response_at, resolved_at)
SELECT tenant_id, ticket_id, customer_id, session_id, 'billing (web)', 4, 2, 'billing', channel,
    CASE WHEN seq % 5 = 0 THEN 3 ELSE 1 END,
    CASE (length(session_id) + ascii(right(session_id, 1))) % 3 WHEN 0 THEN 'human_request' WHEN 1 THEN 'complaint' ELSE 'no_answer' END,
    created_at, created_at, created_at + 3600000,
    created_at + 5000 + (ascii(right(session_id, 1)) * 997) % 300000,
    created_at + 600000 + (ascii(right(session_id, 1)) * 7919) % 7200000
FROM (SELECT tenant_id, ticket_id, customer_id, session_id, channel, created_at,
             row_number() OVER (ORDER BY session_id) AS seq
      FROM session_turns WHERE tenant_id = $1 AND ticket_id <> '') AS handed";

const LOAD_RATINGS: &str = "
INSERT INTO conversation_ratings (tenant_id, ticket_id, customer_id, score, at)
SELECT tenant_id, ticket_id, customer_id, 1 + ascii(right(ticket_id, 1)) % 5, resolved_at
FROM tickets WHERE tenant_id = $1 AND ascii(right(ticket_id, 1)) % 2 = 0";

async fn admin(url: &str, statement: &str) -> anyhow::Result<()> {
    let db = Database::connect_without_migrating(url).await?;
    sqlx::query(statement).execute(db.pool()).await?;
    Ok(())
}

/// The URL of the benchmark's own database on the server of `url`.
fn own_database(url: &str) -> anyhow::Result<String> {
    let (server, _) = url
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .context("the database URL names no database (postgres://host:port/database)")?;
    Ok(format!("{server}/{DATABASE}"))
}

pub async fn run(args: ReportBenchArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.database_url.starts_with("postgres"),
        "the report benchmark runs on PostgreSQL (a postgres:// URL)"
    );
    anyhow::ensure!(
        args.turns > 0 && args.days > 0 && args.repeat > 0,
        "--turns, --days and --repeat must be positive"
    );
    let url = own_database(&args.database_url)?;
    admin(
        &args.database_url,
        &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
    )
    .await?;
    admin(&args.database_url, &format!("CREATE DATABASE {DATABASE}")).await?;
    let db = Database::connect(&url).await?;
    let now = now_millis();
    let from = now - args.days * DAY_MS;
    let conversations = args.turns / TURNS_PER_CONVERSATION;
    let spacing = (args.days * DAY_MS / conversations.max(1)).max(1);
    let loading = Instant::now();
    eprintln!(
        "loading {} turns ({conversations} conversations over {} days)…",
        args.turns, args.days
    );
    sqlx::query(LOAD_TURNS)
        .bind(TENANT)
        .bind(from)
        .bind(spacing)
        .bind(args.turns)
        .execute(db.pool())
        .await
        .context("loading turns")?;
    sqlx::query(LOAD_CONVERSATIONS)
        .bind(TENANT)
        .execute(db.pool())
        .await
        .context("loading conversations")?;
    let tickets = sqlx::query(LOAD_TICKETS)
        .bind(TENANT)
        .execute(db.pool())
        .await
        .context("loading tickets")?
        .rows_affected();
    let ratings = sqlx::query(LOAD_RATINGS)
        .bind(TENANT)
        .execute(db.pool())
        .await
        .context("loading ratings")?
        .rows_affected();
    sqlx::query("ANALYZE").execute(db.pool()).await?;
    eprintln!(
        "loaded in {:.1} s: {tickets} tickets, {ratings} ratings",
        loading.elapsed().as_secs_f64()
    );

    let reports = SqlReports::new(db.clone());
    let whole = ReportScope {
        tenant_id: TENANT.into(),
        from_ms: from,
        to_ms: now + DAY_MS,
        channel: None,
        language: None,
        as_of_ms: now,
    };
    let scopes = [
        (format!("all {} days", args.days), whole.clone()),
        (
            "last 7 days".to_owned(),
            ReportScope {
                from_ms: now - 7 * DAY_MS,
                ..whole.clone()
            },
        ),
        (
            format!("all {} days, one channel and language", args.days),
            ReportScope {
                channel: Some(2),
                language: Some(2),
                ..whole.clone()
            },
        ),
    ];
    let mut lines = vec![format!(
        "report over {} turns, {tickets} tickets, {ratings} ratings on PostgreSQL ({} runs each):",
        args.turns, args.repeat
    )];
    for (name, scope) in scopes {
        let mut times = Vec::with_capacity(args.repeat);
        let mut figures = None;
        for _ in 0..args.repeat {
            let started = Instant::now();
            let rows = reports.rows(&scope).await?;
            figures = Some(report(&scope, &rows));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let figures = figures.expect("at least one run");
        lines.push(format!(
            "  {name}: {} conversations, {:.1}% resolved by the bot: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            figures.conversations,
            100.0 * figures.resolved_by_bot_share,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().expect("a run"),
        ));
    }
    db.pool().close().await;
    if !args.keep {
        admin(
            &args.database_url,
            &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"),
        )
        .await?;
    }
    Ok(lines.join("\n"))
}

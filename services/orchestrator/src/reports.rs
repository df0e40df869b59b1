//! Support reports for team leads: the request's period checked, the stored rows
//! (`kefu_storage::reports`, where each figure is defined) summed per day, per channel and
//! language, and the hand-off times ranked into percentiles. Pure, tested alone.
use std::collections::BTreeMap;

use kefu_proto::v1::{
    Channel, ConversationCounts, DurationStats, GetSupportReportRequest, GetSupportReportResponse,
    HandoffReason, Language,
};
use kefu_proto::Timestamp;
use kefu_storage::reports::{ConversationCell, HandoffTimes, ReportRows, ReportScope, DAY_MS};
use tonic::Status;

/// The longest period a report covers.
pub const MAX_PERIOD_DAYS: i64 = 366;
/// A VIP customer's first response is due within this (the service target).
pub const VIP_FIRST_RESPONSE_TARGET_MS: i64 = 30_000;

fn millis(timestamp: Option<&Timestamp>, name: &str) -> Result<i64, Status> {
    let timestamp =
        timestamp.ok_or_else(|| Status::invalid_argument(format!("{name} is required")))?;
    timestamp
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(timestamp.nanos) / 1_000_000))
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| Status::invalid_argument(format!("{name} is out of range")))
}

/// The share of conversations the bot should resolve, and the satisfaction to stay above.
pub const RESOLVED_BY_BOT_TARGET: f64 = 0.8;
pub const SATISFACTION_TARGET: f64 = 4.5;

/// The scope a request asks for, reported at `now_ms`, or INVALID_ARGUMENT naming what is
/// wrong with it.
pub fn scope_of(request: &GetSupportReportRequest, now_ms: i64) -> Result<ReportScope, Status> {
    let from_ms = millis(request.from.as_ref(), "from")?;
    let to_ms = millis(request.to.as_ref(), "to")?;
    if to_ms <= from_ms {
        return Err(Status::invalid_argument(
            "the period is empty or reversed: its end must come after its start",
        ));
    }
    if to_ms - from_ms > MAX_PERIOD_DAYS * DAY_MS {
        return Err(Status::invalid_argument(format!(
            "the period is longer than {MAX_PERIOD_DAYS} days; ask for a shorter one"
        )));
    }
    let channel = Channel::try_from(request.channel)
        .map_err(|_| Status::invalid_argument(format!("unknown channel {}", request.channel)))?;
    let language = Language::try_from(request.language)
        .map_err(|_| Status::invalid_argument(format!("unknown language {}", request.language)))?;
    Ok(ReportScope {
        tenant_id: request.tenant_id.clone(),
        from_ms,
        to_ms,
        channel: (channel != Channel::Unspecified).then_some(channel as i32),
        language: (language != Language::Unspecified).then_some(language as i32),
        as_of_ms: now_ms,
    })
}

/// The `q` quantile (0..=1) of sorted values, interpolated between neighbours.
fn quantile(sorted: &[i64], q: f64) -> f64 {
    match sorted {
        [] => 0.0,
        [only] => *only as f64,
        _ => {
            let position = q * (sorted.len() - 1) as f64;
            let (low, high) = (position.floor() as usize, position.ceil() as usize);
            let weight = position - low as f64;
            sorted[low] as f64 * (1.0 - weight) + sorted[high] as f64 * weight
        }
    }
}

fn duration_stats(mut millis: Vec<i64>, target_ms: Option<i64>) -> DurationStats {
    millis.sort_unstable();
    let seconds = |q| quantile(&millis, q) / 1000.0;
    DurationStats {
        count: millis.len() as i64,
        p50_seconds: seconds(0.5),
        p90_seconds: seconds(0.9),
        within_target: target_ms.map_or(0, |target| {
            millis.iter().filter(|ms| **ms <= target).count() as i64
        }),
        target_seconds: target_ms.map_or(0.0, |target| target as f64 / 1000.0),
    }
}

fn times(handoffs: &[HandoffTimes], vip: bool, pick: fn(&HandoffTimes) -> Option<i64>) -> Vec<i64> {
    handoffs
        .iter()
        .filter(|h| h.vip == vip)
        .filter_map(pick)
        .map(|ms| ms.max(0))
        .collect()
}

fn day_label(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn add(total: &mut ConversationCounts, cell: &ConversationCell) {
    total.conversations += cell.conversations;
    total.resolved_by_bot += cell.resolved_by_bot;
    total.handed_off += cell.handed_off;
    total.awaiting_return_window += cell.awaiting;
}

/// The report from the rows of a scope: every day of the period in order (empty ones
/// too), the channel and language breakdown, totals, percentiles and satisfaction.
pub fn report(scope: &ReportScope, rows: &ReportRows) -> GetSupportReportResponse {
    let first_day = scope.from_ms.div_euclid(DAY_MS);
    let last_day = (scope.to_ms - 1).div_euclid(DAY_MS);
    let mut daily: BTreeMap<i64, ConversationCounts> = (first_day..=last_day)
        .map(|day| {
            let counts = ConversationCounts {
                day: day_label(day),
                ..Default::default()
            };
            (day, counts)
        })
        .collect();
    let mut breakdown: BTreeMap<(i32, i32), ConversationCounts> = BTreeMap::new();
    let mut total = ConversationCounts::default();
    for cell in &rows.conversations {
        add(daily.entry(cell.day).or_default(), cell);
        let slot = breakdown
            .entry((cell.channel, cell.language))
            .or_insert_with(|| ConversationCounts {
                channel: cell.channel,
                language: cell.language,
                ..Default::default()
            });
        add(slot, cell);
        add(&mut total, cell);
    }
    let mut satisfaction_counts = vec![0i64; 5];
    for (score, count) in &rows.ratings {
        if let Some(slot) = usize::try_from(*score - 1)
            .ok()
            .and_then(|i| satisfaction_counts.get_mut(i))
        {
            *slot += count;
        }
    }
    let ratings: i64 = satisfaction_counts.iter().sum();
    let score_sum: i64 = satisfaction_counts
        .iter()
        .zip(1..)
        .map(|(count, score)| count * score)
        .sum();
    let first_response = |h: &HandoffTimes| h.first_response_ms;
    let resolution = |h: &HandoffTimes| h.resolution_ms;
    GetSupportReportResponse {
        conversations: total.conversations,
        resolved_by_bot: total.resolved_by_bot,
        resolved_by_bot_share: share(
            total.resolved_by_bot,
            total.conversations - total.awaiting_return_window,
        ),
        awaiting_return_window: total.awaiting_return_window,
        resolved_by_bot_target: RESOLVED_BY_BOT_TARGET,
        satisfaction_target: SATISFACTION_TARGET,
        handed_off: total.handed_off,
        daily: daily.into_values().collect(),
        breakdown: breakdown.into_values().collect(),
        handoffs_by_reason: rows
            .handoff_reasons
            .iter()
            .map(|(reason, tickets)| HandoffReason {
                reason: reason.clone(),
                tickets: *tickets,
            })
            .collect(),
        first_response: Some(duration_stats(
            times(&rows.handoffs, false, first_response),
            None,
        )),
        first_response_vip: Some(duration_stats(
            times(&rows.handoffs, true, first_response),
            Some(VIP_FIRST_RESPONSE_TARGET_MS),
        )),
        resolution: Some(duration_stats(
            times(&rows.handoffs, false, resolution),
            None,
        )),
        resolution_vip: Some(duration_stats(
            times(&rows.handoffs, true, resolution),
            None,
        )),
        satisfaction_average: share(score_sum, ratings),
        satisfaction_counts,
        ratings,
    }
}

fn share(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn request(from: i64, to: i64) -> GetSupportReportRequest {
        GetSupportReportRequest {
            tenant_id: "demo".into(),
            from: at(from),
            to: at(to),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_reversed_empty_missing_and_overlong_periods() {
        let day = DAY_MS / 1000;
        for (bad, expected) in [
            (
                request(day, 0),
                "reversed: its end must come after its start",
            ),
            (request(day, day), "reversed"),
            (request(0, 367 * day), "longer than 366 days"),
            (
                GetSupportReportRequest {
                    to: None,
                    ..request(0, day)
                },
                "to is required",
            ),
            (
                GetSupportReportRequest {
                    channel: 99,
                    ..request(0, day)
                },
                "unknown channel",
            ),
        ] {
            let status = scope_of(&bad, 0).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(expected), "{}", status.message());
        }
        let scope = scope_of(&request(0, 366 * day), 0).unwrap();
        assert_eq!((scope.channel, scope.language), (None, None));
    }

    #[test]
    fn every_day_of_the_period_is_listed_and_cells_add_up() {
        // 2025-12-01T12:00Z to 2025-12-04T00:00Z: three days.
        let from = 1_764_590_400_000;
        let scope = ReportScope {
            tenant_id: "demo".into(),
            from_ms: from,
            to_ms: 1_764_806_400_000,
            channel: None,
            language: None,
            as_of_ms: 0,
        };
        let day = from / DAY_MS;
        let cell = |day, channel, conversations, resolved_by_bot, handed_off| ConversationCell {
            day,
            channel,
            language: Language::En as i32,
            conversations,
            resolved_by_bot,
            handed_off,
            awaiting: 0,
        };
        let rows = ReportRows {
            conversations: vec![
                cell(day, 1, 4, 3, 1),
                cell(day + 2, 1, 2, 1, 0),
                cell(day + 2, 2, 1, 0, 1),
            ],
            ratings: vec![(5, 3), (2, 1)],
            ..Default::default()
        };
        let report = report(&scope, &rows);
        let days: Vec<(&str, i64)> = report
            .daily
            .iter()
            .map(|d| (d.day.as_str(), d.conversations))
            .collect();
        assert_eq!(
            days,
            [("2025-12-01", 4), ("2025-12-02", 0), ("2025-12-03", 3)]
        );
        assert_eq!(
            (
                report.conversations,
                report.resolved_by_bot,
                report.handed_off
            ),
            (7, 4, 2)
        );
        assert!((report.resolved_by_bot_share - 4.0 / 7.0).abs() < 1e-9);
        assert_eq!(report.breakdown.len(), 2);
        assert_eq!(report.breakdown[0].conversations, 6);
        assert_eq!(report.satisfaction_counts, [0, 1, 0, 0, 3]);
        assert_eq!(report.ratings, 4);
        assert!((report.satisfaction_average - 17.0 / 4.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_interpolate_and_vip_counts_against_thirty_seconds() {
        let handoff = |vip, first_response_ms| HandoffTimes {
            vip,
            first_response_ms,
            resolution_ms: None,
        };
        let rows = ReportRows {
            handoffs: vec![
                handoff(true, Some(10_000)),
                handoff(true, Some(20_000)),
                handoff(true, Some(40_000)),
                handoff(true, None),
                handoff(false, Some(100_000)),
            ],
            ..Default::default()
        };
        let scope = ReportScope {
            tenant_id: "demo".into(),
            from_ms: 0,
            to_ms: DAY_MS,
            channel: None,
            language: None,
            as_of_ms: DAY_MS,
        };
        let report = report(&scope, &rows);
        let vip = report.first_response_vip.unwrap();
        assert_eq!(
            (vip.count, vip.within_target, vip.target_seconds),
            (3, 2, 30.0)
        );
        assert!((vip.p50_seconds - 20.0).abs() < 1e-9);
        assert!((vip.p90_seconds - 36.0).abs() < 1e-9, "{}", vip.p90_seconds);
        let others = report.first_response.unwrap();
        assert_eq!((others.count, others.p50_seconds), (1, 100.0));
        assert_eq!(report.resolution.unwrap().count, 0);
    }
}

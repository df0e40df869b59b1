//! The ticket rules, without gRPC: which status may follow which, how long each
//! priority may take, and when the SLA policy raises a ticket.
use std::time::Duration;

use kefu_proto::v1::{Priority, TicketStatus};

/// Time allowed to resolve a ticket of each priority; the defaults are the SLA of the
/// specification, shorter values make the SLA policy testable.
#[derive(clap::Args, Clone, Debug)]
pub struct SlaArgs {
    #[arg(long, env = "KEFU_SLA_URGENT_SECS", default_value_t = 3600)]
    pub sla_urgent_secs: u64,
    #[arg(long, env = "KEFU_SLA_HIGH_SECS", default_value_t = 4 * 3600)]
    pub sla_high_secs: u64,
    #[arg(long, env = "KEFU_SLA_MEDIUM_SECS", default_value_t = 24 * 3600)]
    pub sla_medium_secs: u64,
    #[arg(long, env = "KEFU_SLA_LOW_SECS", default_value_t = 72 * 3600)]
    pub sla_low_secs: u64,
    /// How often the SLA policy looks for tickets close to their deadline.
    #[arg(long, env = "KEFU_SLA_CHECK_INTERVAL_MS", default_value_t = 5000)]
    pub sla_check_interval_ms: u64,
}

impl Default for SlaArgs {
    fn default() -> Self {
        Self {
            sla_urgent_secs: 3600,
            sla_high_secs: 4 * 3600,
            sla_medium_secs: 24 * 3600,
            sla_low_secs: 72 * 3600,
            sla_check_interval_ms: 5000,
        }
    }
}

impl SlaArgs {
    pub fn sla(&self, priority: Priority) -> Duration {
        Duration::from_secs(match priority {
            Priority::Urgent => self.sla_urgent_secs,
            Priority::High => self.sla_high_secs,
            Priority::Medium | Priority::Unspecified => self.sla_medium_secs,
            Priority::Low => self.sla_low_secs,
        })
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.sla_check_interval_ms.max(100))
    }
}

/// The lifecycle: which status may follow which. Reopening is resolved/closed -> open.
pub fn can_transition(from: TicketStatus, to: TicketStatus) -> bool {
    use TicketStatus::*;
    matches!(
        (from, to),
        (Open, InProgress | Pending | Resolved | Closed)
            | (InProgress, Open | Pending | Resolved | Closed)
            | (Pending, InProgress | Resolved | Closed)
            | (Resolved, Closed | Open)
            | (Closed, Open)
    )
}

/// Whether a ticket in this status is still waiting for or being worked by a human.
pub fn is_unresolved(status: TicketStatus) -> bool {
    matches!(
        status,
        TicketStatus::Open | TicketStatus::InProgress | TicketStatus::Pending
    )
}

/// One priority step up (urgent stays urgent).
pub fn one_step_up(priority: Priority) -> Priority {
    match priority {
        Priority::Unspecified | Priority::Low => Priority::Medium,
        Priority::Medium => Priority::High,
        Priority::High | Priority::Urgent => Priority::Urgent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_only_valid_moves() {
        use TicketStatus::*;
        assert!(can_transition(Open, InProgress));
        assert!(can_transition(Resolved, Open), "reopen");
        assert!(can_transition(Closed, Open), "reopen");
        assert!(!can_transition(Closed, Resolved));
        assert!(!can_transition(Open, Open));
        assert!(!can_transition(Pending, Open));
        assert!(!can_transition(Unspecified, Open));
    }

    #[test]
    fn higher_priority_gets_a_shorter_sla() {
        let sla = SlaArgs::default();
        assert!(sla.sla(Priority::Urgent) < sla.sla(Priority::High));
        assert!(sla.sla(Priority::High) < sla.sla(Priority::Medium));
        assert!(sla.sla(Priority::Medium) < sla.sla(Priority::Low));
    }

    #[test]
    fn raising_climbs_one_step_and_stops_at_urgent() {
        assert_eq!(one_step_up(Priority::Low), Priority::Medium);
        assert_eq!(one_step_up(Priority::Medium), Priority::High);
        assert_eq!(one_step_up(Priority::High), Priority::Urgent);
        assert_eq!(one_step_up(Priority::Urgent), Priority::Urgent);
    }
}

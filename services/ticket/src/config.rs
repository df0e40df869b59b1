//! The ticket service's settings: where it listens, where tickets are stored, and the
//! SLA of each priority.
use std::time::Duration;

use kefu_proto::v1::Priority;
use kefu_runtime::{DataArgs, ServerArgs};

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub sla: SlaArgs,
}

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

    /// The deadline of a ticket of this priority opened at `opened_at` (milliseconds).
    pub fn due_at(&self, priority: Priority, opened_at: i64) -> i64 {
        opened_at + self.sla(priority).as_millis() as i64
    }

    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.sla_check_interval_ms.max(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_gets_a_shorter_sla() {
        let sla = SlaArgs::default();
        assert!(sla.sla(Priority::Urgent) < sla.sla(Priority::High));
        assert!(sla.sla(Priority::High) < sla.sla(Priority::Medium));
        assert!(sla.sla(Priority::Medium) < sla.sla(Priority::Low));
        assert_eq!(sla.due_at(Priority::Urgent, 1_000), 1_000 + 3_600_000);
    }
}

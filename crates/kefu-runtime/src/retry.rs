//! When a failed outbox row is tried again: the one schedule of the ticket outbox and
//! the channel messages. Pure, so it is tested alone.

/// Longest wait between attempts at a row its receiver refused.
pub const LONGEST_BACKOFF_MS: i64 = 5 * 60 * 1000;
/// A receiver that cannot be reached is tried at least this often, so that the rows
/// follow soon after it is back.
pub const LONGEST_WAIT_FOR_RECEIVER_MS: i64 = 5_000;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts at a refused row before it goes to the dead letter.
    pub max_attempts: i32,
    /// Wait before the second attempt; it doubles with each attempt.
    pub first_backoff_ms: i64,
}

impl RetryPolicy {
    pub fn new(max_attempts: i32, first_backoff_ms: i64) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            first_backoff_ms: first_backoff_ms.max(1),
        }
    }

    /// The time of the next attempt after `attempts` failed ones, or None for the dead
    /// letter. An unreachable receiver (`transient`) is waited out however long it takes,
    /// tried every five seconds at least (the row is not wrong, the receiver is away); a
    /// refusal is tried `max_attempts` times, with waits up to five minutes.
    pub fn retry_at(&self, attempts: i32, transient: bool, now: i64) -> Option<i64> {
        if !transient && attempts >= self.max_attempts {
            return None;
        }
        let doublings = attempts.clamp(1, 20) - 1;
        let longest = if transient {
            LONGEST_WAIT_FOR_RECEIVER_MS
        } else {
            LONGEST_BACKOFF_MS
        };
        let backoff = self
            .first_backoff_ms
            .saturating_mul(1 << doublings)
            .min(longest);
        Some(now + backoff)
    }
}

/// The service could not be reached or had no room: worth waiting out, not an answer.
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        first_backoff_ms: 1000,
    };

    #[test]
    fn backoff_doubles_up_to_its_longest_wait() {
        let waits: Vec<i64> = (1..=3)
            .map(|attempts| POLICY.retry_at(attempts, false, 0).unwrap())
            .collect();
        assert_eq!(waits, [1000, 2000, 4000]);
        let patient = RetryPolicy {
            max_attempts: 100,
            ..POLICY
        };
        assert_eq!(patient.retry_at(30, false, 0), Some(LONGEST_BACKOFF_MS));
        assert_eq!(
            POLICY.retry_at(30, true, 0),
            Some(LONGEST_WAIT_FOR_RECEIVER_MS)
        );
    }

    #[test]
    fn a_refused_row_goes_to_the_dead_letter_after_its_attempts() {
        assert!(POLICY.retry_at(3, false, 0).is_some());
        assert_eq!(POLICY.retry_at(4, false, 0), None);
    }

    #[test]
    fn an_unreachable_receiver_is_waited_out() {
        assert!(POLICY.retry_at(1000, true, 0).is_some());
    }
}

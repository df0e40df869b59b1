//! The kefu.v1 contracts: messages, clients and servers generated from `proto/kefu/v1`.

pub mod v1 {
    tonic::include_proto!("kefu.v1");

    /// Encoded `FileDescriptorSet` of every kefu.v1 file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kefu_descriptor.bin"));

    impl Route {
        /// Whether an intent of this route goes to a person: always for `Human`; for
        /// `HumanIfNegative` when the message reads negative or as needing a person.
        pub fn hands_off(self, negative: bool) -> bool {
            match self {
                Route::Human => true,
                Route::HumanIfNegative => negative,
                Route::Answer | Route::Ticket | Route::Unspecified => false,
            }
        }

        /// Whether the route can hand off at all, so its intent's reason is worth naming.
        pub fn may_hand_off(self) -> bool {
            self.hands_off(true)
        }
    }
}

pub use prost_types::Timestamp;

/// A protobuf timestamp from Unix milliseconds, the storage format of every table.
pub fn timestamp_from_millis(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The short lower-case name of an enum value, for metric labels and summaries:
/// `enum_label("PRIORITY_HIGH", "PRIORITY_")` is `high`.
pub fn enum_label(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds_and_labels_lose_their_prefix() {
        let ts = timestamp_from_millis(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        let before_epoch = timestamp_from_millis(-1);
        assert_eq!(
            (before_epoch.seconds, before_epoch.nanos),
            (-1, 999_000_000)
        );
        assert_eq!(enum_label("PRIORITY_HIGH", "PRIORITY_"), "high");
    }
}

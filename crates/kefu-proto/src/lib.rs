//! The kefu.v1 contracts: messages, clients and servers generated from `proto/kefu/v1`.

pub mod v1 {
    tonic::include_proto!("kefu.v1");

    /// Encoded `FileDescriptorSet` of every kefu.v1 file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kefu_descriptor.bin"));
}

pub use prost_types::Timestamp;

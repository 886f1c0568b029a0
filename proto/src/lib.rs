//! Generated protocol types for sluice (`sluice.v1`) and the descriptor set
//! served by gRPC reflection.

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// Encoded `FileDescriptorSet` of every sluice proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

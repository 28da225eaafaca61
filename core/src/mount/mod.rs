//! Node-side filesystem work: the mount table, formatting, mounting,
//! growing filesystems and usage statistics.
//!
//! (Being written: see the node service.)

/// Mount, format and filesystem operations, behind a trait so the gRPC
/// tests can use a fake while the node tests use the real thing.
pub trait Mounter: Send + Sync {}

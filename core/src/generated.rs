//! Code generated from `proto/csi.proto` by tonic-prost-build.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// CSI v1 messages, clients and servers.
pub mod csi {
    tonic::include_proto!("csi.v1");
}

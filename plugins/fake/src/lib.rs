//! The fake provider of `omnidisk-provider-api` (kind `fake`, module
//! `testing`) exported through the stable provider ABI.
//!
//! The driver links the same `FACTORY` in when built with its `fake`
//! feature, so the conformance suite and the dylib overhead benchmark can
//! compare one provider through both paths: any difference they see comes
//! from the boundary, not from the provider.

omnidisk_provider_api::export_provider!(omnidisk_provider_api::testing::FACTORY);

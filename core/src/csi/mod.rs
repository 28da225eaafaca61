//! The CSI services, one module each, plus conversions and validation.

pub mod controller;
pub mod convert;
pub mod identity;
pub mod node;
pub mod validate;

//! The one error type a provider returns, classified by kind.
//!
//! The core maps each kind to a gRPC code per RPC (in the core's `error`
//! module, the only place that does so). Kinds carry stable numbers because
//! they cross the dylib ABI.

use std::error::Error as StdError;
use std::fmt;

/// What kind of failure a provider reports. The numbers are part of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names an unsupported option.
    InvalidArgument = 1,
    /// The volume, snapshot or node does not exist.
    NotFound = 2,
    /// An object with that name exists with incompatible properties.
    AlreadyExists = 3,
    /// The object is in a state that forbids the call (e.g. attached).
    FailedPrecondition = 4,
    /// Out of space, quota or attachment slots.
    ResourceExhausted = 5,
    /// The requested size is outside what the backend supports.
    OutOfRange = 6,
    /// A conflicting operation is in progress; retrying later can succeed.
    Aborted = 7,
    /// The backend cannot be reached right now; retrying can succeed.
    Unavailable = 8,
    /// The call or a wait ran out of time.
    DeadlineExceeded = 9,
    /// The provider does not implement this call.
    Unimplemented = 10,
    /// Anything else: a bug or an unexpected backend answer.
    Internal = 11,
}

impl ErrorKind {
    /// Every kind, in ABI order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::ResourceExhausted,
        ErrorKind::OutOfRange,
        ErrorKind::Aborted,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Unimplemented,
        ErrorKind::Internal,
    ];

    /// The kind for an ABI number; unknown numbers (a newer provider) are `Internal`.
    pub fn from_u32(value: u32) -> ErrorKind {
        Self::ALL
            .into_iter()
            .find(|k| *k as u32 == value)
            .unwrap_or(ErrorKind::Internal)
    }

    /// A short lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Unimplemented => "unimplemented",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified provider failure. `message` says what failed in the
/// provider's words; `source` keeps the underlying cause.
#[derive(Debug)]
pub struct ProviderError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// Result of a provider call.
pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

impl ProviderError {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The provider's message, without the cause chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by every cause, joined by `: `.
    pub fn full_message(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn StdError + 'static)> = self.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = cause.source();
        }
        out
    }

    /// Shorthand for [`ErrorKind::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// Shorthand for [`ErrorKind::AlreadyExists`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    /// Shorthand for [`ErrorKind::FailedPrecondition`].
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }
    /// Shorthand for [`ErrorKind::ResourceExhausted`].
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceExhausted, message)
    }
    /// Shorthand for [`ErrorKind::OutOfRange`].
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, message)
    }
    /// Shorthand for [`ErrorKind::Unimplemented`].
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unimplemented, message)
    }
    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ProviderError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_abi_numbers() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_u32(kind as u32), kind);
        }
        assert_eq!(ErrorKind::from_u32(0), ErrorKind::Internal);
        assert_eq!(ErrorKind::from_u32(999), ErrorKind::Internal);
    }

    #[test]
    fn full_message_carries_the_cause_chain() {
        let io = std::io::Error::other("disk on fire");
        let err = ProviderError::internal("lvcreate failed").with_source(io);
        assert_eq!(err.full_message(), "lvcreate failed: disk on fire");
        assert_eq!(err.to_string(), "lvcreate failed");
    }
}

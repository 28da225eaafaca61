//! The driver's error type and the one place where errors become gRPC codes.
//!
//! Handlers return `Result<_, CoreError>`; the service wrappers convert with
//! `Status::from`. Per-RPC special cases the CSI spec asks for (deleting
//! something absent is success, and so on) are decided in the handlers by
//! matching on the error, never by building a `Status` there.

use omnidisk_provider_api::{ErrorKind, ProviderError};
use tonic::{Code, Status};

use crate::ids::IdError;

/// Everything a CSI call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A required field is missing or a value is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// StorageClass `type` names no configured instance.
    #[error("unknown provider instance {name}; configured instances: {known}")]
    UnknownInstance {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// An ID did not parse where the object must exist.
    #[error("{what} {id} does not exist: {source}")]
    MalformedId {
        /// "volume" or "snapshot".
        what: &'static str,
        /// The ID as given, escaped and cut (see `validate::shown`).
        id: String,
        /// Why it did not parse.
        #[source]
        source: IdError,
    },
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists with other properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object's state forbids the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another operation holds the volume.
    #[error("an operation on {0} is already in progress")]
    Busy(String),
    /// The call is not supported by the instance or the driver.
    #[error("{0}")]
    Unimplemented(String),
    /// Sizes outside what can be provided.
    #[error("{0}")]
    OutOfRange(String),
    /// A mount, format or filesystem operation on the node failed.
    #[error("{message}")]
    Node {
        /// What was attempted, with the paths involved.
        message: String,
        /// The underlying failure.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A provider reported a failure while doing `op`.
    #[error("{instance}: {op}: {source}")]
    Provider {
        /// The instance that failed.
        instance: String,
        /// The storage operation, e.g. "create volume".
        op: &'static str,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// A bug or an unexpected condition.
    #[error("{0}")]
    Internal(String),
}

/// Result of a handler.
pub type CoreResult<T> = Result<T, CoreError>;

impl CoreError {
    /// An `InvalidArgument` naming a required field that is missing.
    pub fn missing(field: &str) -> Self {
        CoreError::InvalidArgument(format!("{field} is required"))
    }

    /// A node-side failure with its cause.
    pub fn node(message: impl Into<String>, source: std::io::Error) -> Self {
        CoreError::Node {
            message: message.into(),
            source: Some(source),
        }
    }

    /// The provider error kind, if this came from a provider.
    pub fn provider_kind(&self) -> Option<ErrorKind> {
        match self {
            CoreError::Provider { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// True when the object does not exist (from whichever layer said so).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CoreError::NotFound(_) | CoreError::MalformedId { .. })
            || self.provider_kind() == Some(ErrorKind::NotFound)
    }

    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            CoreError::InvalidArgument(_) | CoreError::UnknownInstance { .. } => {
                Code::InvalidArgument
            }
            CoreError::MalformedId { .. } | CoreError::NotFound(_) => Code::NotFound,
            CoreError::AlreadyExists(_) => Code::AlreadyExists,
            CoreError::FailedPrecondition(_) => Code::FailedPrecondition,
            CoreError::Busy(_) => Code::Aborted,
            CoreError::Unimplemented(_) => Code::Unimplemented,
            CoreError::OutOfRange(_) => Code::OutOfRange,
            CoreError::Node { .. } | CoreError::Internal(_) => Code::Internal,
            CoreError::Provider { source, .. } => match source.kind() {
                ErrorKind::InvalidArgument => Code::InvalidArgument,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::AlreadyExists => Code::AlreadyExists,
                ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                ErrorKind::ResourceExhausted => Code::ResourceExhausted,
                ErrorKind::OutOfRange => Code::OutOfRange,
                ErrorKind::Aborted => Code::Aborted,
                ErrorKind::Unavailable => Code::Unavailable,
                ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
                ErrorKind::Unimplemented => Code::Unimplemented,
                _ => Code::Internal,
            },
        }
    }

    /// The message with its whole cause chain.
    pub fn full_message(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
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
}

impl From<CoreError> for Status {
    fn from(err: CoreError) -> Self {
        Status::new(err.code(), err.full_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_kinds_map_to_their_codes() {
        let cases = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::OutOfRange, Code::OutOfRange),
            (ErrorKind::Aborted, Code::Aborted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
            (ErrorKind::Unimplemented, Code::Unimplemented),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in cases {
            let err = CoreError::Provider {
                instance: "lvm".into(),
                op: "create volume",
                source: ProviderError::new(kind, "boom"),
            };
            assert_eq!(err.code(), code, "{kind}");
            let status = Status::from(err);
            assert_eq!(status.message(), "lvm: create volume: boom");
        }
    }

    #[test]
    fn status_message_carries_the_cause_chain() {
        let err = CoreError::node(
            "mounting /dev/x on /mnt",
            std::io::Error::from_raw_os_error(libc::EBUSY),
        );
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("mounting /dev/x on /mnt: "));
        assert!(
            status.message().to_lowercase().contains("busy"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn malformed_ids_are_not_found_and_unknown_instances_invalid() {
        let err = CoreError::MalformedId {
            what: "volume",
            id: "x".into(),
            source: IdError::UnknownFormat("x".into()),
        };
        assert_eq!(err.code(), Code::NotFound);
        assert!(err.is_not_found());
        let err = CoreError::UnknownInstance {
            name: "nope".into(),
            known: "lvm, ebs".into(),
        };
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("lvm, ebs"));
    }
}

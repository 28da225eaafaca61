//! Classification of EC2 failures into provider error kinds.
//!
//! The one place that knows what an EC2 error code means for the caller.
//! The core then maps kinds to gRPC codes, so nothing here knows about
//! gRPC. Kinds that make the sidecars retry at once (`Unavailable`,
//! `Aborted`, `DeadlineExceeded`) are used only where a retry can help.

use std::fmt::Display;

use omnidisk_provider_api::{ErrorKind, ProviderError};

use crate::client::ClientError;

/// Codes EC2 uses when it throttles a caller.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
    "SlowDown",
];

/// Codes for server-side trouble that a later attempt may not see.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// The error kind for an EC2 error code.
pub fn kind_for_code(code: &str) -> ErrorKind {
    if THROTTLING.contains(&code) || TRANSIENT.contains(&code) {
        return ErrorKind::Unavailable;
    }
    if code.starts_with("HTTP5") {
        return ErrorKind::Unavailable;
    }
    match code {
        "InvalidVolume.NotFound"
        | "InvalidSnapshot.NotFound"
        | "InvalidInstanceID.NotFound"
        | "InvalidAttachment.NotFound" => ErrorKind::NotFound,
        "VolumeInUse" | "InvalidVolume.ZoneMismatch" | "IncorrectInstanceState" => {
            ErrorKind::FailedPrecondition
        }
        // A volume or modification in a passing state: retrying later helps.
        "IncorrectState" | "IncorrectModificationState" | "InvalidSnapshot.InUse" => {
            ErrorKind::Aborted
        }
        "IdempotentParameterMismatch" => ErrorKind::AlreadyExists,
        "AttachmentLimitExceeded"
        | "VolumeLimitExceeded"
        | "MaxIOPSLimitExceeded"
        | "SnapshotLimitExceeded"
        | "ResourceLimitExceeded"
        | "InsufficientVolumeCapacity"
        | "VolumeModificationRateExceeded"
        | "InsufficientFreeAddressesInSubnet" => ErrorKind::ResourceExhausted,
        "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidParameter"
        | "InvalidParameterDependency"
        | "MissingParameter"
        | "UnknownParameter"
        | "InvalidZone.NotFound"
        | "InvalidVolumeType"
        | "UnsupportedOperation"
        | "InvalidKMSKey.Id"
        | "InvalidKmsKey.Id"
        | "KMSKeyNotAccessibleFault"
        | "InvalidSnapshot.Malformed"
        | "InvalidVolumeID.Malformed"
        | "InvalidInstanceID.Malformed" => ErrorKind::InvalidArgument,
        // Credentials or permissions: fixing the configuration is the cure.
        "UnauthorizedOperation"
        | "AuthFailure"
        | "Blocked"
        | "OptInRequired"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "AccessDenied"
        | "AccessDeniedException"
        | "ExpiredToken"
        | "PendingVerification" => ErrorKind::FailedPrecondition,
        _ => ErrorKind::Internal,
    }
}

/// True when EC2 throttled the request.
pub fn is_throttling(err: &ClientError) -> bool {
    err.code().is_some_and(|c| THROTTLING.contains(&c))
}

/// True when another attempt of the same request may succeed: throttling,
/// server errors and requests that never reached EC2. Timeouts are not
/// retried here: the caller's deadline decides.
pub fn is_retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Service { code, .. } => kind_for_code(code) == ErrorKind::Unavailable,
        ClientError::Transport { .. } => true,
        ClientError::Timeout { .. } | ClientError::Malformed { .. } => false,
    }
}

/// The error kind of a client failure.
pub fn kind_of(err: &ClientError) -> ErrorKind {
    match err {
        ClientError::Service { code, .. } => kind_for_code(code),
        ClientError::Timeout { .. } => ErrorKind::DeadlineExceeded,
        ClientError::Transport { .. } => ErrorKind::Unavailable,
        ClientError::Malformed { .. } => ErrorKind::Internal,
    }
}

/// Turns a client failure into a provider error: `context` says what the
/// provider was doing, the client error stays as the cause.
pub fn provider_error(context: impl Display, err: ClientError) -> ProviderError {
    ProviderError::new(kind_of(&err), context.to_string()).with_source(err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn service(code: &str) -> ClientError {
        ClientError::Service {
            operation: "CreateVolume",
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn codes_map_to_kinds() {
        let table = [
            ("InvalidVolume.NotFound", ErrorKind::NotFound),
            ("InvalidSnapshot.NotFound", ErrorKind::NotFound),
            ("InvalidInstanceID.NotFound", ErrorKind::NotFound),
            ("InvalidAttachment.NotFound", ErrorKind::NotFound),
            ("VolumeInUse", ErrorKind::FailedPrecondition),
            ("InvalidVolume.ZoneMismatch", ErrorKind::FailedPrecondition),
            ("IncorrectState", ErrorKind::Aborted),
            ("IncorrectModificationState", ErrorKind::Aborted),
            ("IdempotentParameterMismatch", ErrorKind::AlreadyExists),
            ("AttachmentLimitExceeded", ErrorKind::ResourceExhausted),
            ("VolumeLimitExceeded", ErrorKind::ResourceExhausted),
            ("MaxIOPSLimitExceeded", ErrorKind::ResourceExhausted),
            ("SnapshotLimitExceeded", ErrorKind::ResourceExhausted),
            (
                "VolumeModificationRateExceeded",
                ErrorKind::ResourceExhausted,
            ),
            ("InvalidParameterValue", ErrorKind::InvalidArgument),
            ("InvalidParameterCombination", ErrorKind::InvalidArgument),
            ("InvalidParameterDependency", ErrorKind::InvalidArgument),
            ("InvalidZone.NotFound", ErrorKind::InvalidArgument),
            ("UnauthorizedOperation", ErrorKind::FailedPrecondition),
            ("AuthFailure", ErrorKind::FailedPrecondition),
            ("RequestLimitExceeded", ErrorKind::Unavailable),
            ("Throttling", ErrorKind::Unavailable),
            ("InternalError", ErrorKind::Unavailable),
            ("ServiceUnavailable", ErrorKind::Unavailable),
            ("HTTP500", ErrorKind::Unavailable),
            ("HTTP503", ErrorKind::Unavailable),
            ("HTTP404", ErrorKind::Internal),
            ("SomethingNew", ErrorKind::Internal),
        ];
        for (code, kind) in table {
            assert_eq!(kind_for_code(code), kind, "{code}");
            assert_eq!(kind_of(&service(code)), kind, "{code}");
        }
    }

    #[test]
    fn throttling_and_retry_classes() {
        assert!(is_throttling(&service("RequestLimitExceeded")));
        assert!(!is_throttling(&service("InternalError")));
        assert!(is_retryable(&service("InternalError")));
        assert!(is_retryable(&service("RequestLimitExceeded")));
        assert!(!is_retryable(&service("VolumeInUse")));
        let timeout = ClientError::Timeout {
            operation: "AttachVolume",
            timeout: Duration::from_secs(1),
        };
        assert!(!is_retryable(&timeout));
        assert_eq!(kind_of(&timeout), ErrorKind::DeadlineExceeded);
        let transport = ClientError::Transport {
            operation: "AttachVolume",
            source: Arc::new(std::io::Error::other("connection refused")),
        };
        assert!(is_retryable(&transport));
        assert_eq!(kind_of(&transport), ErrorKind::Unavailable);
    }

    #[test]
    fn provider_errors_keep_context_and_cause() {
        let err = provider_error("deleting volume vol-12345678", service("VolumeInUse"));
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let full = err.full_message();
        assert!(full.starts_with("deleting volume vol-12345678: "), "{full}");
        assert!(full.contains("VolumeInUse"), "{full}");
    }
}

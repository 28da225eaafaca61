//! What went wrong talking to ECS, and how each failure is classified into
//! the provider-api [`ErrorKind`] the core maps to gRPC codes.

use std::time::Duration;

use omnidisk_provider_api::{ErrorKind, ProviderError};

/// An error answer from the ECS OpenAPI (`Code`, `Message`, `RequestId`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ECS {action} failed with {code} (HTTP {status}, request {request_id}): {message}")]
pub struct ServiceError {
    /// The action that was called.
    pub action: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// The service's error code, e.g. `InvalidDiskId.NotFound`.
    pub code: String,
    /// The service's message.
    pub message: String,
    /// The request ID, for support cases.
    pub request_id: String,
    /// The back-off the service asked for (`x-acs-retry-after`, milliseconds).
    pub retry_after: Option<Duration>,
}

/// Why an ECS call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The service answered with an error code.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The request did not complete within the API timeout.
    #[error("ECS {action} did not answer within {timeout:?}")]
    Timeout {
        /// The action that was called.
        action: String,
        /// The configured API timeout.
        timeout: Duration,
    },
    /// The request could not be sent or its answer not read. Build it with
    /// [`ApiError::transport`], which drops the request URL from the HTTP
    /// client's error: with RPC signing that URL carries the AccessKeyId,
    /// the STS token and the signature.
    #[error("ECS {action} to {endpoint} could not be sent")]
    Transport {
        /// The action that was called.
        action: String,
        /// Scheme, host and port of the endpoint (never the query).
        endpoint: String,
        /// What the HTTP client said, without the URL.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the JSON this client expects.
    #[error("ECS {action} answered with an unexpected body")]
    Decode {
        /// The action that was called.
        action: String,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be signed.
    #[error("cannot sign the ECS {action} request")]
    Sign {
        /// The action that was called.
        action: String,
        /// What the signer said.
        #[source]
        source: crate::sign::SignError,
    },
    /// No usable credentials.
    #[error("no usable Alibaba Cloud credentials")]
    Credentials(#[source] crate::credentials::CredentialsError),
    /// The request could not be built (a bad endpoint URL, say).
    #[error("cannot build the ECS {action} request: {reason}")]
    Request {
        /// The action that was called.
        action: String,
        /// Why.
        reason: String,
    },
}

/// Scheme, host and port of `url`: what an error may show of an endpoint.
pub fn endpoint_origin(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?"));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out
}

impl ApiError {
    /// A transport failure of `action` against `endpoint`, with the request
    /// URL (and so every signed query parameter) removed from `source`.
    pub fn transport(action: &str, endpoint: &reqwest::Url, source: reqwest::Error) -> Self {
        ApiError::Transport {
            action: action.to_owned(),
            endpoint: endpoint_origin(endpoint),
            source: source.without_url(),
        }
    }

    /// The service's error code, if the service answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Service(e) => Some(&e.code),
            _ => None,
        }
    }

    /// True when the service answered with exactly `code` or a sub-code of it
    /// (`IncorrectDiskStatus` matches `IncorrectDiskStatus.Initializing`).
    pub fn is(&self, code: &str) -> bool {
        self.code().is_some_and(|c| code_matches(c, code))
    }

    /// The error kind for the core.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Service(e) => classify(&e.code, e.status),
            ApiError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            ApiError::Transport { .. } => ErrorKind::Unavailable,
            ApiError::Credentials(_) => ErrorKind::FailedPrecondition,
            ApiError::Decode { .. } | ApiError::Sign { .. } | ApiError::Request { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// True when the service refused without acting (so any call may be
    /// repeated, written or not).
    pub fn is_throttling(&self) -> bool {
        match self {
            ApiError::Service(e) => {
                e.code.starts_with("Throttling") || e.code == "SignatureNonceUsed"
            }
            _ => false,
        }
    }

    /// True when the outcome is unknown or a transient server fault: a
    /// repeat can help, but only a read or a call with a ClientToken may be
    /// repeated safely.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Service(e) => {
                matches!(
                    e.code.as_str(),
                    "InternalError" | "UnknownError" | "ServiceUnavailable"
                ) || e.status >= 500
            }
            ApiError::Transport { .. } | ApiError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The back-off the service asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Service(e) => e.retry_after,
            _ => None,
        }
    }

    /// Converts into the provider error, saying what was being done.
    pub fn into_provider(self, doing: impl Into<String>) -> ProviderError {
        ProviderError::new(self.kind(), doing).with_source(self)
    }
}

fn code_matches(actual: &str, wanted: &str) -> bool {
    actual == wanted
        || actual
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Classifies an ECS error code (and its HTTP status, for codes this table
/// does not know) into an [`ErrorKind`]. Retryable kinds (`Aborted`,
/// `Unavailable`) are used only where a repeat can succeed, since the CSI
/// sidecars retry those forever.
pub fn classify(code: &str, status: u16) -> ErrorKind {
    const TABLE: &[(&str, ErrorKind)] = &[
        // Transient: the service was busy or failed internally.
        ("Throttling", ErrorKind::Unavailable),
        ("InternalError", ErrorKind::Unavailable),
        ("UnknownError", ErrorKind::Unavailable),
        ("ServiceUnavailable", ErrorKind::Unavailable),
        ("SignatureNonceUsed", ErrorKind::Unavailable),
        // Another operation holds the disk or instance; it will finish.
        ("InvalidOperation.Conflict", ErrorKind::Aborted),
        ("IncorrectDiskStatus.Initializing", ErrorKind::Aborted),
        ("IncorrectDiskStatus.CreatingSnapshot", ErrorKind::Aborted),
        ("IncorrectDiskStatus.Transferring", ErrorKind::Aborted),
        ("InvalidStatus.DiskNotReady", ErrorKind::Aborted),
        ("InvalidSnapshot.NotReady", ErrorKind::Aborted),
        ("InvalidSnapshotId.NotReady", ErrorKind::Aborted),
        // The state forbids the call until someone changes it.
        ("IncorrectDiskStatus", ErrorKind::FailedPrecondition),
        ("DiskError", ErrorKind::FailedPrecondition),
        ("IncorrectInstanceStatus", ErrorKind::FailedPrecondition),
        ("InstanceLockedForSecurity", ErrorKind::FailedPrecondition),
        ("DiskInArrears", ErrorKind::FailedPrecondition),
        ("InstanceExpiredOrInArrears", ErrorKind::FailedPrecondition),
        ("ResourcesNotInSameZone", ErrorKind::FailedPrecondition),
        ("InvalidDevice.InUse", ErrorKind::FailedPrecondition),
        ("InvalidDisk.InUse", ErrorKind::FailedPrecondition),
        ("DiskNotPortable", ErrorKind::FailedPrecondition),
        ("DependencyViolation", ErrorKind::FailedPrecondition),
        ("DiskTypeViolation", ErrorKind::FailedPrecondition),
        (
            "InvalidOperation.InstanceTypeNotSupport",
            ErrorKind::FailedPrecondition,
        ),
        (
            "OperationDenied.PerformanceLevelNotMatch",
            ErrorKind::FailedPrecondition,
        ),
        ("DiskInCoolingPeriod", ErrorKind::FailedPrecondition),
        (
            "ModifyingDiskCategoryLimitExceed",
            ErrorKind::FailedPrecondition,
        ),
        // Out of slots or quota.
        ("InstanceDiskLimitExceeded", ErrorKind::ResourceExhausted),
        // The fake ECS's code for a multi-attach disk on too many instances
        // (the provider counts attachments first, so ECS's own code, not
        // documented, is not relied on).
        (
            "InvalidOperation.MultiAttachLimitExceeded",
            ErrorKind::ResourceExhausted,
        ),
        ("QuotaExceed", ErrorKind::ResourceExhausted),
        ("OperationDenied.NoStock", ErrorKind::ResourceExhausted),
        // Sizes.
        ("InvalidDiskSize", ErrorKind::OutOfRange),
        ("InvalidProvisionedIops.LimitExceed", ErrorKind::OutOfRange),
        // Idempotency: the same token was used for a different request.
        ("IdempotentParameterMismatch", ErrorKind::AlreadyExists),
        // Absent things.
        ("InvalidDisk.AlreadyDetached", ErrorKind::NotFound),
        ("Disk.NotFound", ErrorKind::NotFound),
        // Bad requests.
        ("InvalidDataDiskCategory", ErrorKind::InvalidArgument),
        ("InvalidDiskCategory", ErrorKind::InvalidArgument),
        ("InvalidParameter", ErrorKind::InvalidArgument),
        ("MissingParameter", ErrorKind::InvalidArgument),
        // Credentials and permissions: nothing a retry can fix.
        ("SignatureDoesNotMatch", ErrorKind::FailedPrecondition),
        ("InvalidAccessKeyId", ErrorKind::FailedPrecondition),
        ("InvalidSecurityToken", ErrorKind::FailedPrecondition),
        ("InvalidTimeStamp", ErrorKind::FailedPrecondition),
        ("Forbidden", ErrorKind::FailedPrecondition),
    ];
    // The most specific entry wins: `IncorrectDiskStatus.Initializing` is
    // checked before `IncorrectDiskStatus` because the table lists it first.
    if let Some((_, kind)) = TABLE.iter().find(|(c, _)| code_matches(code, c)) {
        return *kind;
    }
    if code.ends_with(".NotFound") {
        return ErrorKind::NotFound;
    }
    match status {
        500.. => ErrorKind::Unavailable,
        404 => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: &[(&str, u16, ErrorKind)] = &[
            ("Throttling", 400, ErrorKind::Unavailable),
            ("Throttling.User", 400, ErrorKind::Unavailable),
            ("Throttling.Api", 400, ErrorKind::Unavailable),
            ("InternalError", 500, ErrorKind::Unavailable),
            ("ServiceUnavailable", 503, ErrorKind::Unavailable),
            ("InvalidOperation.Conflict", 403, ErrorKind::Aborted),
            ("IncorrectDiskStatus.Initializing", 403, ErrorKind::Aborted),
            ("IncorrectDiskStatus", 403, ErrorKind::FailedPrecondition),
            (
                "IncorrectDiskStatus.NeverAttached",
                403,
                ErrorKind::FailedPrecondition,
            ),
            ("InvalidDiskId.NotFound", 404, ErrorKind::NotFound),
            ("InvalidInstanceId.NotFound", 404, ErrorKind::NotFound),
            ("InvalidSnapshotId.NotFound", 404, ErrorKind::NotFound),
            ("Disk.NotFound", 404, ErrorKind::NotFound),
            (
                "InstanceDiskLimitExceeded",
                403,
                ErrorKind::ResourceExhausted,
            ),
            ("QuotaExceed.Snapshot", 403, ErrorKind::ResourceExhausted),
            ("InvalidDiskSize.NotSupported", 403, ErrorKind::OutOfRange),
            ("InvalidDiskSize.TooSmall", 403, ErrorKind::OutOfRange),
            ("IdempotentParameterMismatch", 400, ErrorKind::AlreadyExists),
            (
                "InvalidDataDiskCategory.NotSupported",
                403,
                ErrorKind::InvalidArgument,
            ),
            ("InvalidParameter", 400, ErrorKind::InvalidArgument),
            ("MissingParameter", 400, ErrorKind::InvalidArgument),
            ("SignatureDoesNotMatch", 403, ErrorKind::FailedPrecondition),
            (
                "InvalidAccessKeyId.NotFound",
                404,
                ErrorKind::FailedPrecondition,
            ),
            (
                "InvalidTimeStamp.Expired",
                400,
                ErrorKind::FailedPrecondition,
            ),
            ("SignatureNonceUsed", 400, ErrorKind::Unavailable),
            ("ResourcesNotInSameZone", 403, ErrorKind::FailedPrecondition),
            ("SomethingNew", 503, ErrorKind::Unavailable),
            ("SomethingNew", 400, ErrorKind::Internal),
            ("Something.NotFound", 400, ErrorKind::NotFound),
        ];
        for (code, status, kind) in cases {
            assert_eq!(classify(code, *status), *kind, "{code} [{status}]");
        }
    }

    #[test]
    fn prefix_matching_respects_dots() {
        assert!(code_matches("Throttling.User", "Throttling"));
        assert!(code_matches("Throttling", "Throttling"));
        assert!(!code_matches("ThrottlingX", "Throttling"));
        // A longer code does not match a shorter prefix word.
        assert_eq!(classify("QuotaExceeded", 400), ErrorKind::Internal);
    }

    fn service(code: &str, status: u16) -> ApiError {
        ApiError::Service(ServiceError {
            action: "AttachDisk".into(),
            status,
            code: code.into(),
            message: "m".into(),
            request_id: "r".into(),
            retry_after: Some(Duration::from_millis(250)),
        })
    }

    #[test]
    fn retry_classes() {
        assert!(service("Throttling.User", 400).is_throttling());
        assert!(!service("Throttling.User", 400).is_transient());
        assert!(service("InternalError", 500).is_transient());
        assert!(!service("InvalidDiskId.NotFound", 404).is_transient());
        assert!(service("IncorrectDiskStatus.Initializing", 403).is("IncorrectDiskStatus"));
        assert!(!service("IncorrectDiskStatusX", 403).is("IncorrectDiskStatus"));
        assert_eq!(
            service("Throttling", 400).retry_after(),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn provider_error_keeps_the_service_answer() {
        let err = service("InvalidOperation.Conflict", 403).into_provider("attaching d-1");
        assert_eq!(err.kind(), ErrorKind::Aborted);
        let full = err.full_message();
        assert!(full.starts_with("attaching d-1: "), "{full}");
        assert!(full.contains("InvalidOperation.Conflict"), "{full}");
    }
}

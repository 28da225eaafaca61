//! The narrow EC2 interface the provider needs, in storage verbs.
//!
//! [`Ec2Api`] is everything the provider asks of EC2. Its data types are
//! plain structs of this crate: no aws-sdk type leaves this module, so the
//! provider logic and its fake ([`fake`], tests only) never see the SDK. The
//! real implementation, [`SdkEc2`], is a thin translation over aws-sdk-ec2.
//! Timeouts, retries and throttling are handled a layer above (`retry`), so
//! the SDK's own retry loop is switched off: one policy, and one that tests
//! can drive through the fake.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as sdk;

use crate::ids::{InstanceId, SnapshotId, VolumeId};
use crate::settings::{Credentials, Settings};

#[cfg(test)]
pub(crate) mod fake;

/// Lifecycle state of an EBS volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    /// Being created.
    Creating,
    /// Ready and unattached.
    Available,
    /// Attached to at least one instance.
    InUse,
    /// Being deleted.
    Deleting,
    /// Deleted (still visible for a while).
    Deleted,
    /// Creation failed (for example an unusable KMS key).
    Error,
    /// A state this provider does not know.
    Other(String),
}

impl DiskState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "available" => Self::Available,
            "in-use" => Self::InUse,
            "deleting" => Self::Deleting,
            "deleted" => Self::Deleted,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// State of one attachment of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachState {
    /// Being attached.
    Attaching,
    /// Attached.
    Attached,
    /// Being detached.
    Detaching,
    /// Detached (EC2 reports this briefly before dropping the attachment).
    Detached,
    /// Anything else (`busy`).
    Other(String),
}

impl AttachState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "attaching" => Self::Attaching,
            "attached" => Self::Attached,
            "detaching" => Self::Detaching,
            "detached" => Self::Detached,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// One attachment of a volume to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAttachment {
    /// The instance.
    pub instance_id: String,
    /// The device name given at attach time (`/dev/xvdba`).
    pub device: String,
    /// Its state.
    pub state: AttachState,
}

/// An EBS volume as the provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The volume ID.
    pub id: VolumeId,
    /// Availability zone.
    pub zone: String,
    /// Size in GiB.
    pub size_gib: i64,
    /// Volume type (`gp3`, `io2`, ...).
    pub volume_type: String,
    /// Provisioned IOPS, if any.
    pub iops: Option<i32>,
    /// Provisioned throughput in MiB/s, if any.
    pub throughput: Option<i32>,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// The KMS key, when encrypted with a specific key.
    pub kms_key_id: Option<String>,
    /// The snapshot it was created from.
    pub snapshot_id: Option<String>,
    /// The volume this one was copied from (CopyVolumes), if any.
    pub source_volume_id: Option<String>,
    /// EBS Multi-Attach is enabled.
    pub multi_attach: bool,
    /// Lifecycle state.
    pub state: DiskState,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Current attachments.
    pub attachments: Vec<DiskAttachment>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateDiskInput {
    /// Availability zone.
    pub zone: String,
    /// Size in GiB.
    pub size_gib: i64,
    /// Volume type.
    pub volume_type: String,
    /// Provisioned IOPS.
    pub iops: Option<i32>,
    /// Provisioned throughput, MiB/s.
    pub throughput: Option<i32>,
    /// Encrypt at rest.
    pub encrypted: bool,
    /// KMS key for encryption.
    pub kms_key_id: Option<String>,
    /// Restore from this snapshot.
    pub snapshot_id: Option<SnapshotId>,
    /// Initialization rate in MiB/s when restoring from a snapshot.
    pub initialization_rate: Option<i32>,
    /// Tags set at creation.
    pub tags: BTreeMap<String, String>,
    /// EC2's idempotency token.
    /// EBS Multi-Attach (io1/io2).
    pub multi_attach: bool,
    pub client_token: String,
}

/// Changes to apply with ModifyVolume; `None` leaves a property alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModifyDiskInput {
    /// New size in GiB.
    pub size_gib: Option<i64>,
    /// New type.
    pub volume_type: Option<String>,
    /// New IOPS.
    pub iops: Option<i32>,
    /// New throughput.
    pub throughput: Option<i32>,
}

/// State of a volume modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModificationState {
    /// Still changing; the new size is not usable yet.
    Modifying,
    /// The new size and performance apply; EBS is still optimizing.
    Optimizing,
    /// Done.
    Completed,
    /// Failed.
    Failed,
    /// Unknown to this provider.
    Other(String),
}

impl ModificationState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "modifying" => Self::Modifying,
            "optimizing" => Self::Optimizing,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// The latest modification of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modification {
    /// The volume.
    pub volume_id: String,
    /// Its state.
    pub state: ModificationState,
    /// Target size in GiB.
    pub target_size_gib: Option<i64>,
    /// Why it failed, when it did.
    pub status_message: Option<String>,
}

/// An instance, reduced to what attaching needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Instance ID.
    pub id: String,
    /// Availability zone.
    pub zone: String,
    /// Instance type (`m5.large`).
    pub instance_type: String,
    /// Lifecycle state name (`running`).
    pub state: String,
    /// Device names in use by its block device mappings.
    pub device_names: Vec<String>,
}

/// State of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapState {
    /// Being taken.
    Pending,
    /// Usable.
    Completed,
    /// Failed.
    Error,
    /// Unknown to this provider.
    Other(String),
}

impl SnapState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// An EBS snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// Snapshot ID.
    pub id: SnapshotId,
    /// The volume it was taken from.
    pub volume_id: String,
    /// Size of the source volume in GiB.
    pub size_gib: i64,
    /// State.
    pub state: SnapState,
    /// Start time, seconds since the epoch.
    pub start_seconds: i64,
    /// Start time, nanoseconds.
    pub start_nanos: i32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// Which volumes to describe. Conditions are ANDed; values within one are ORed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskQuery {
    /// Only these IDs (as a filter, so absent IDs are simply missing).
    pub ids: Vec<VolumeId>,
    /// Only volumes whose tag `.0` has one of the values `.1`.
    pub tag_values: Option<(String, Vec<String>)>,
    /// Only volumes with these tag keys and values (each must match).
    pub tags: Vec<(String, String)>,
    /// Only volumes that carry this tag key.
    pub tag_key: Option<String>,
}

/// Which snapshots to describe (own snapshots only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapQuery {
    /// Only these IDs.
    pub ids: Vec<SnapshotId>,
    /// Only snapshots of these volumes.
    pub volume_ids: Vec<VolumeId>,
    /// Only snapshots whose tag `.0` has one of the values `.1`.
    pub tag_values: Option<(String, Vec<String>)>,
    /// Only snapshots that carry this tag key.
    pub tag_key: Option<String>,
}

/// Paging of a describe call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// EC2's MaxResults (EC2 accepts 5 to 1000 with filters; `None` = all).
    pub max_results: Option<i32>,
    /// EC2's NextToken.
    pub next_token: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// EC2's token for the next page.
    pub next_token: Option<String>,
}

/// Why an EC2 call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// EC2 answered with an error code.
    #[error("EC2 {operation} failed: {code}: {message}")]
    Service {
        /// The API operation.
        operation: &'static str,
        /// EC2's error code (`InvalidVolume.NotFound`, ...).
        code: String,
        /// EC2's message.
        message: String,
    },
    /// No answer in time.
    #[error("EC2 {operation} did not answer within {timeout:?}")]
    Timeout {
        /// The API operation.
        operation: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The request could not be sent or the answer not read.
    #[error("EC2 {operation} could not be completed")]
    Transport {
        /// The API operation.
        operation: &'static str,
        /// The SDK's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// EC2 answered with something unusable (a required field missing).
    #[error("EC2 {operation} returned an unusable answer: {detail}")]
    Malformed {
        /// The API operation.
        operation: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ClientError {
    /// The EC2 error code, when EC2 sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The operation that failed.
    pub fn operation(&self) -> &'static str {
        match self {
            ClientError::Service { operation, .. }
            | ClientError::Timeout { operation, .. }
            | ClientError::Transport { operation, .. }
            | ClientError::Malformed { operation, .. } => operation,
        }
    }
}

/// Result of an EC2 call.
pub type ClientResult<T> = Result<T, ClientError>;

/// The EC2 operations the provider uses, in storage verbs.
#[async_trait]
pub trait Ec2Api: Send + Sync + 'static {
    /// CreateVolume.
    async fn create_disk(&self, input: CreateDiskInput) -> ClientResult<Disk>;
    /// CopyVolumes of one source volume: a new volume in the source's zone
    /// with `input`'s size, type, performance, encryption, tags and
    /// ClientToken (`input.zone`, `snapshot_id` and `initialization_rate`
    /// are not sent).
    async fn copy_disk(&self, source: &VolumeId, input: CreateDiskInput) -> ClientResult<Disk>;
    /// DeleteVolume.
    async fn delete_disk(&self, id: &VolumeId) -> ClientResult<()>;
    /// DescribeVolumes.
    async fn describe_disks(&self, query: DiskQuery, page: PageRequest)
    -> ClientResult<Page<Disk>>;
    /// AttachVolume; returns the attachment state EC2 reports.
    async fn attach_disk(
        &self,
        id: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> ClientResult<AttachState>;
    /// DetachVolume (always with the instance: moto fails without it).
    async fn detach_disk(&self, id: &VolumeId, instance: &InstanceId) -> ClientResult<()>;
    /// ModifyVolume.
    async fn modify_disk(&self, id: &VolumeId, input: ModifyDiskInput) -> ClientResult<()>;
    /// DescribeVolumesModifications.
    async fn describe_modifications(&self, ids: &[VolumeId]) -> ClientResult<Vec<Modification>>;
    /// CreateTags on one volume (adds or overwrites the given tags).
    async fn tag_disk(&self, id: &VolumeId, tags: BTreeMap<String, String>) -> ClientResult<()>;
    /// DescribeInstances for one instance; `None` when it does not exist.
    async fn describe_instance(&self, id: &InstanceId) -> ClientResult<Option<Instance>>;
    /// CreateSnapshot.
    async fn create_snapshot(
        &self,
        volume: &VolumeId,
        tags: BTreeMap<String, String>,
    ) -> ClientResult<Snap>;
    /// DeleteSnapshot.
    async fn delete_snapshot(&self, id: &SnapshotId) -> ClientResult<()>;
    /// DescribeSnapshots (owner self).
    async fn describe_snapshots(
        &self,
        query: SnapQuery,
        page: PageRequest,
    ) -> ClientResult<Page<Snap>>;
}

/// Counts EC2 calls by operation, for metrics and for the batching budget.
#[derive(Debug, Default)]
pub struct CallCounter {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl CallCounter {
    /// Records one call of `operation`.
    pub fn record(&self, operation: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(operation).or_default() += 1;
    }

    /// Calls per operation so far.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why no EC2 client could be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Neither the settings nor the environment name a region.
    #[error("no AWS region: set `region` in the instance settings or AWS_REGION")]
    NoRegion,
    /// The configured credential source yields nothing.
    #[error("no AWS credentials provider could be configured")]
    NoCredentialsProvider,
    /// The credential source failed to produce credentials.
    #[error("the configured AWS credentials ({source_name}) are unusable")]
    Credentials {
        /// Which source was configured.
        source_name: &'static str,
        /// The cause.
        #[source]
        source: aws_credential_types::provider::error::CredentialsError,
    },
    /// The credential source did not answer in time.
    #[error("the configured AWS credentials ({source_name}) did not resolve within {timeout:?}")]
    CredentialsTimeout {
        /// Which source was configured.
        source_name: &'static str,
        /// The timeout.
        timeout: Duration,
    },
}

/// Builds an EC2 client from instance settings and checks that the
/// credential source works, so a broken one fails at start-up.
pub async fn connect(settings: &Settings) -> Result<SdkEc2, ConnectError> {
    use aws_sdk_ec2::config::ProvideCredentials;

    let api_timeout = settings.api_timeout();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(api_timeout)
                .connect_timeout(api_timeout.min(Duration::from_secs(10)))
                .build(),
        )
        // Retries live in `retry`, where throttling is shared across calls.
        .retry_config(aws_config::retry::RetryConfig::disabled());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let source_name = match &settings.credentials {
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            loader = loader.credentials_provider(aws_sdk_ec2::config::Credentials::new(
                access_key_id.expose(),
                secret_access_key.expose(),
                session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "omnidisk-settings",
            ));
            "static keys"
        }
        Credentials::Profile { name } => {
            loader = loader.profile_name(name);
            "profile"
        }
        Credentials::Default => "default chain",
    };
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(ConnectError::NoRegion);
    }
    let provider = config
        .credentials_provider()
        .ok_or(ConnectError::NoCredentialsProvider)?;
    match tokio::time::timeout(api_timeout, provider.provide_credentials()).await {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => {
            return Err(ConnectError::Credentials {
                source_name,
                source,
            });
        }
        Err(_) => {
            return Err(ConnectError::CredentialsTimeout {
                source_name,
                timeout: api_timeout,
            });
        }
    }
    Ok(SdkEc2::new(aws_sdk_ec2::Client::new(&config)))
}

/// [`Ec2Api`] over aws-sdk-ec2.
#[derive(Debug, Clone)]
pub struct SdkEc2 {
    client: aws_sdk_ec2::Client,
    calls: Arc<CallCounter>,
}

fn sdk_error<E>(
    operation: &'static str,
    timeout: Duration,
    err: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> ClientError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let service = ctx.err();
            ClientError::Service {
                operation,
                code: service
                    .code()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP{status}")),
                message: service.message().unwrap_or_default().to_owned(),
            }
        }
        SdkError::TimeoutError(_) => ClientError::Timeout { operation, timeout },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            ClientError::Timeout { operation, timeout }
        }
        other => ClientError::Transport {
            operation,
            source: Arc::new(other),
        },
    }
}

fn tags_of(tags: &[sdk::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<sdk::Tag> {
    tags.iter()
        .map(|(k, v)| sdk::Tag::builder().key(k).value(v).build())
        .collect()
}

fn filter(name: &str, values: impl IntoIterator<Item = String>) -> sdk::Filter {
    sdk::Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

fn disk_from_sdk(operation: &'static str, v: &sdk::Volume) -> ClientResult<Disk> {
    let malformed = |detail: &str| ClientError::Malformed {
        operation,
        detail: detail.to_owned(),
    };
    let id = v
        .volume_id()
        .ok_or_else(|| malformed("a volume without an ID"))?;
    let id = VolumeId::new(id).map_err(|e| malformed(&e.to_string()))?;
    Ok(Disk {
        id,
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gib: i64::from(v.size().unwrap_or_default()),
        volume_type: v
            .volume_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        iops: v.iops(),
        throughput: v.throughput(),
        encrypted: v.encrypted().unwrap_or(false),
        kms_key_id: v.kms_key_id().map(str::to_owned),
        snapshot_id: v.snapshot_id().filter(|s| !s.is_empty()).map(str::to_owned),
        source_volume_id: v
            .source_volume_id()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        multi_attach: v.multi_attach_enabled().unwrap_or(false),
        state: DiskState::parse(v.state().map(|s| s.as_str()).unwrap_or("")),
        tags: tags_of(v.tags()),
        attachments: v
            .attachments()
            .iter()
            .map(|a| DiskAttachment {
                instance_id: a.instance_id().unwrap_or_default().to_owned(),
                device: a.device().unwrap_or_default().to_owned(),
                state: AttachState::parse(a.state().map(|s| s.as_str()).unwrap_or("")),
            })
            .collect(),
    })
}

fn snap_from_sdk(
    operation: &'static str,
    id: Option<&str>,
    volume_id: Option<&str>,
    size: Option<i32>,
    state: Option<&sdk::SnapshotState>,
    start: Option<&aws_sdk_ec2::primitives::DateTime>,
    tags: &[sdk::Tag],
) -> ClientResult<Snap> {
    let id = id.ok_or_else(|| ClientError::Malformed {
        operation,
        detail: "a snapshot without an ID".into(),
    })?;
    let id = SnapshotId::new(id).map_err(|e| ClientError::Malformed {
        operation,
        detail: e.to_string(),
    })?;
    Ok(Snap {
        id,
        volume_id: volume_id.unwrap_or_default().to_owned(),
        size_gib: i64::from(size.unwrap_or_default()),
        state: SnapState::parse(state.map(|s| s.as_str()).unwrap_or("")),
        start_seconds: start.map(|t| t.secs()).unwrap_or_default(),
        start_nanos: start
            .map(|t| i32::try_from(t.subsec_nanos()).unwrap_or_default())
            .unwrap_or_default(),
        tags: tags_of(tags),
    })
}

fn to_i32(operation: &'static str, what: &str, value: i64) -> ClientResult<i32> {
    i32::try_from(value).map_err(|_| ClientError::Malformed {
        operation,
        detail: format!("{what} {value} does not fit EC2's 32-bit field"),
    })
}

impl SdkEc2 {
    /// Wraps an SDK client built from loaded configuration.
    pub fn new(client: aws_sdk_ec2::Client) -> Self {
        Self {
            client,
            calls: Arc::default(),
        }
    }

    /// Calls made so far, by operation.
    pub fn calls(&self) -> Arc<CallCounter> {
        Arc::clone(&self.calls)
    }

    fn timeout(&self) -> Duration {
        self.client
            .config()
            .timeout_config()
            .and_then(|t| t.operation_timeout())
            .unwrap_or(Duration::from_secs(30))
    }
}

#[async_trait]
impl Ec2Api for SdkEc2 {
    async fn create_disk(&self, input: CreateDiskInput) -> ClientResult<Disk> {
        const OP: &str = "CreateVolume";
        self.calls.record(OP);
        let mut req = self
            .client
            .create_volume()
            .availability_zone(&input.zone)
            .size(to_i32(OP, "size", input.size_gib)?)
            .volume_type(sdk::VolumeType::from(input.volume_type.as_str()))
            .encrypted(input.encrypted)
            .set_iops(input.iops)
            .set_throughput(input.throughput)
            .set_kms_key_id(input.kms_key_id.clone())
            .set_snapshot_id(input.snapshot_id.as_ref().map(|s| s.as_str().to_owned()))
            .set_volume_initialization_rate(input.initialization_rate)
            .set_multi_attach_enabled(input.multi_attach.then_some(true))
            .client_token(&input.client_token);
        if !input.tags.is_empty() {
            req = req.tag_specifications(
                sdk::TagSpecification::builder()
                    .resource_type(sdk::ResourceType::Volume)
                    .set_tags(Some(sdk_tags(&input.tags)))
                    .build(),
            );
        }
        let out = req
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        let id = out.volume_id().ok_or_else(|| ClientError::Malformed {
            operation: OP,
            detail: "no volume ID".into(),
        })?;
        let id = VolumeId::new(id).map_err(|e| ClientError::Malformed {
            operation: OP,
            detail: e.to_string(),
        })?;
        Ok(Disk {
            id,
            zone: out.availability_zone().unwrap_or(&input.zone).to_owned(),
            size_gib: out.size().map(i64::from).unwrap_or(input.size_gib),
            volume_type: out
                .volume_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_else(|| input.volume_type.clone()),
            iops: out.iops(),
            throughput: out.throughput(),
            encrypted: out.encrypted().unwrap_or(input.encrypted),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            snapshot_id: out
                .snapshot_id()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            source_volume_id: None,
            multi_attach: out.multi_attach_enabled().unwrap_or(input.multi_attach),
            state: DiskState::parse(out.state().map(|s| s.as_str()).unwrap_or("creating")),
            tags: tags_of(out.tags()),
            attachments: Vec::new(),
        })
    }

    async fn copy_disk(&self, source: &VolumeId, input: CreateDiskInput) -> ClientResult<Disk> {
        const OP: &str = "CopyVolumes";
        self.calls.record(OP);
        let mut req = self
            .client
            .copy_volumes()
            .source_volume_id(source.as_str())
            .size(to_i32(OP, "size", input.size_gib)?)
            .volume_type(sdk::VolumeType::from(input.volume_type.as_str()))
            .set_iops(input.iops)
            .set_throughput(input.throughput)
            .set_kms_key_id(input.kms_key_id.clone())
            .set_multi_attach_enabled(input.multi_attach.then_some(true))
            .client_token(&input.client_token);
        if input.encrypted {
            req = req.encrypted(true);
        }
        if !input.tags.is_empty() {
            req = req.tag_specifications(
                sdk::TagSpecification::builder()
                    .resource_type(sdk::ResourceType::Volume)
                    .set_tags(Some(sdk_tags(&input.tags)))
                    .build(),
            );
        }
        let out = req
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        let volume = out
            .volumes()
            .first()
            .ok_or_else(|| ClientError::Malformed {
                operation: OP,
                detail: "no volume in the answer".into(),
            })?;
        let mut disk = disk_from_sdk(OP, volume)?;
        if disk.state == DiskState::Other(String::new()) {
            disk.state = DiskState::Creating;
        }
        if disk.source_volume_id.is_none() {
            disk.source_volume_id = Some(source.as_str().to_owned());
        }
        Ok(disk)
    }

    async fn delete_disk(&self, id: &VolumeId) -> ClientResult<()> {
        const OP: &str = "DeleteVolume";
        self.calls.record(OP);
        self.client
            .delete_volume()
            .volume_id(id.as_str())
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(())
    }

    async fn describe_disks(
        &self,
        query: DiskQuery,
        page: PageRequest,
    ) -> ClientResult<Page<Disk>> {
        const OP: &str = "DescribeVolumes";
        self.calls.record(OP);
        let mut filters = Vec::new();
        if !query.ids.is_empty() {
            filters.push(filter(
                "volume-id",
                query.ids.iter().map(|i| i.as_str().to_owned()),
            ));
        }
        if let Some((key, values)) = query.tag_values {
            filters.push(filter(&format!("tag:{key}"), values));
        }
        for (key, value) in query.tags {
            filters.push(filter(&format!("tag:{key}"), [value]));
        }
        if let Some(key) = query.tag_key {
            filters.push(filter("tag-key", [key]));
        }
        let out = self
            .client
            .describe_volumes()
            .set_filters(Some(filters))
            .set_max_results(page.max_results)
            .set_next_token(page.next_token)
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        let items = out
            .volumes()
            .iter()
            .map(|v| disk_from_sdk(OP, v))
            .collect::<ClientResult<Vec<_>>>()?;
        Ok(Page {
            items,
            next_token: out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }

    async fn attach_disk(
        &self,
        id: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> ClientResult<AttachState> {
        const OP: &str = "AttachVolume";
        self.calls.record(OP);
        let out = self
            .client
            .attach_volume()
            .volume_id(id.as_str())
            .instance_id(instance.as_str())
            .device(device)
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(AttachState::parse(
            out.state().map(|s| s.as_str()).unwrap_or("attaching"),
        ))
    }

    async fn detach_disk(&self, id: &VolumeId, instance: &InstanceId) -> ClientResult<()> {
        const OP: &str = "DetachVolume";
        self.calls.record(OP);
        self.client
            .detach_volume()
            .volume_id(id.as_str())
            .instance_id(instance.as_str())
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(())
    }

    async fn modify_disk(&self, id: &VolumeId, input: ModifyDiskInput) -> ClientResult<()> {
        const OP: &str = "ModifyVolume";
        self.calls.record(OP);
        let size = input.size_gib.map(|s| to_i32(OP, "size", s)).transpose()?;
        self.client
            .modify_volume()
            .volume_id(id.as_str())
            .set_size(size)
            .set_volume_type(input.volume_type.as_deref().map(sdk::VolumeType::from))
            .set_iops(input.iops)
            .set_throughput(input.throughput)
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(())
    }

    async fn describe_modifications(&self, ids: &[VolumeId]) -> ClientResult<Vec<Modification>> {
        const OP: &str = "DescribeVolumesModifications";
        self.calls.record(OP);
        let out = self
            .client
            .describe_volumes_modifications()
            .set_volume_ids(Some(ids.iter().map(|i| i.as_str().to_owned()).collect()))
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(out
            .volumes_modifications()
            .iter()
            .map(|m| Modification {
                volume_id: m.volume_id().unwrap_or_default().to_owned(),
                state: ModificationState::parse(
                    m.modification_state().map(|s| s.as_str()).unwrap_or(""),
                ),
                target_size_gib: m.target_size().map(i64::from),
                status_message: m.status_message().map(str::to_owned),
            })
            .collect())
    }

    async fn describe_instance(&self, id: &InstanceId) -> ClientResult<Option<Instance>> {
        const OP: &str = "DescribeInstances";
        self.calls.record(OP);
        let out = match self
            .client
            .describe_instances()
            .instance_ids(id.as_str())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = sdk_error(OP, self.timeout(), e);
                if err.code() == Some("InvalidInstanceID.NotFound") {
                    return Ok(None);
                }
                return Err(err);
            }
        };
        let found = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id.as_str()));
        Ok(found.map(|i| Instance {
            id: id.as_str().to_owned(),
            zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_owned(),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            device_names: i
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.device_name().map(str::to_owned))
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        volume: &VolumeId,
        tags: BTreeMap<String, String>,
    ) -> ClientResult<Snap> {
        const OP: &str = "CreateSnapshot";
        self.calls.record(OP);
        let out = self
            .client
            .create_snapshot()
            .volume_id(volume.as_str())
            .description("created by omnidisk")
            .tag_specifications(
                sdk::TagSpecification::builder()
                    .resource_type(sdk::ResourceType::Snapshot)
                    .set_tags(Some(sdk_tags(&tags)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        snap_from_sdk(
            OP,
            out.snapshot_id(),
            out.volume_id(),
            out.volume_size(),
            out.state(),
            out.start_time(),
            out.tags(),
        )
    }

    async fn tag_disk(&self, id: &VolumeId, tags: BTreeMap<String, String>) -> ClientResult<()> {
        const OP: &str = "CreateTags";
        self.calls.record(OP);
        self.client
            .create_tags()
            .resources(id.as_str())
            .set_tags(Some(sdk_tags(&tags)))
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(())
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> ClientResult<()> {
        const OP: &str = "DeleteSnapshot";
        self.calls.record(OP);
        self.client
            .delete_snapshot()
            .snapshot_id(id.as_str())
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        Ok(())
    }

    async fn describe_snapshots(
        &self,
        query: SnapQuery,
        page: PageRequest,
    ) -> ClientResult<Page<Snap>> {
        const OP: &str = "DescribeSnapshots";
        self.calls.record(OP);
        let mut filters = Vec::new();
        if !query.ids.is_empty() {
            filters.push(filter(
                "snapshot-id",
                query.ids.iter().map(|i| i.as_str().to_owned()),
            ));
        }
        if !query.volume_ids.is_empty() {
            filters.push(filter(
                "volume-id",
                query.volume_ids.iter().map(|i| i.as_str().to_owned()),
            ));
        }
        if let Some((key, values)) = query.tag_values {
            filters.push(filter(&format!("tag:{key}"), values));
        }
        if let Some(key) = query.tag_key {
            filters.push(filter("tag-key", [key]));
        }
        let out = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters))
            .set_max_results(page.max_results)
            .set_next_token(page.next_token)
            .send()
            .await
            .map_err(|e| sdk_error(OP, self.timeout(), e))?;
        let items = out
            .snapshots()
            .iter()
            .map(|s| {
                snap_from_sdk(
                    OP,
                    s.snapshot_id(),
                    s.volume_id(),
                    s.volume_size(),
                    s.state(),
                    s.start_time(),
                    s.tags(),
                )
            })
            .collect::<ClientResult<Vec<_>>>()?;
        Ok(Page {
            items,
            next_token: out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        })
    }
}

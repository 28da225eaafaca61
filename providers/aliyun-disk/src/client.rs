//! The ECS OpenAPI client: a narrow [`EcsApi`] trait in storage verbs, and
//! its HTTP implementation on reqwest that signs, times out, and repeats
//! throttled or failed calls where that is safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::credentials::CredentialSource;
use crate::errors::{ApiError, ServiceError};
use crate::sign::{self, SignatureVersion, V3Input};

/// The ECS API version this client speaks.
pub const API_VERSION: &str = "2014-05-26";
/// Most disk IDs one DescribeDisks call accepts.
pub const MAX_IDS_PER_DESCRIBE: usize = 100;

/// One tag.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Tag {
    /// Key.
    #[serde(rename = "TagKey")]
    pub key: String,
    /// Value.
    #[serde(rename = "TagValue", default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct TagList {
    #[serde(rename = "Tag", default)]
    tag: Vec<Tag>,
}

/// One attachment of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The instance the disk is attached to.
    #[serde(rename = "InstanceId", default)]
    pub instance_id: String,
    /// The device name ECS reports (a hint, not to be trusted on the node).
    #[serde(rename = "Device", default)]
    pub device: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct AttachmentList {
    #[serde(rename = "Attachment", default)]
    attachment: Vec<Attachment>,
}

/// A disk as DescribeDisks reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Disk {
    /// `d-...`.
    #[serde(rename = "DiskId")]
    pub disk_id: String,
    /// The disk's name.
    #[serde(rename = "DiskName", default)]
    pub disk_name: String,
    /// `Creating`, `Available`, `Attaching`, `In_use`, `Detaching`, ...
    #[serde(rename = "Status")]
    pub status: String,
    /// The category, e.g. `cloud_essd`.
    #[serde(rename = "Category", default)]
    pub category: String,
    /// Size in GiB.
    #[serde(rename = "Size", default)]
    pub size_gib: i64,
    /// The zone.
    #[serde(rename = "ZoneId", default)]
    pub zone_id: String,
    /// The instance it is attached to (empty when not).
    #[serde(rename = "InstanceId", default)]
    pub instance_id: String,
    /// The device name ECS reports.
    #[serde(rename = "Device", default)]
    pub device: String,
    /// Serial number the guest sees.
    #[serde(rename = "SerialNumber", default)]
    pub serial_number: String,
    /// ESSD performance level.
    #[serde(rename = "PerformanceLevel", default)]
    pub performance_level: String,
    /// Provisioned IOPS (cloud_auto).
    #[serde(rename = "ProvisionedIops", default)]
    pub provisioned_iops: i64,
    /// Bursting (cloud_auto).
    #[serde(rename = "BurstingEnabled", default)]
    pub bursting_enabled: bool,
    /// Encryption.
    #[serde(rename = "Encrypted", default)]
    pub encrypted: bool,
    /// The snapshot it was created from.
    #[serde(rename = "SourceSnapshotId", default)]
    pub source_snapshot_id: String,
    /// `Enabled` for a multi-attach disk.
    #[serde(rename = "MultiAttach", default)]
    pub multi_attach: String,
    #[serde(rename = "Tags", default)]
    tags: TagList,
    #[serde(rename = "Attachments", default)]
    attachments: AttachmentList,
}

impl Disk {
    /// The disk's tags.
    pub fn tags(&self) -> &[Tag] {
        &self.tags.tag
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .tag
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }

    /// True for a disk created with `MultiAttach=Enabled`.
    pub fn is_multi_attach(&self) -> bool {
        self.multi_attach.eq_ignore_ascii_case("Enabled")
    }

    /// The instances the disk is attached to (from `Attachments`, else `InstanceId`).
    pub fn attached_instances(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .attachments
            .attachment
            .iter()
            .map(|a| a.instance_id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        if out.is_empty() && !self.instance_id.is_empty() {
            out.push(self.instance_id.clone());
        }
        out
    }
}

/// A snapshot as DescribeSnapshots reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// `s-...`.
    #[serde(rename = "SnapshotId")]
    pub snapshot_id: String,
    /// Its name.
    #[serde(rename = "SnapshotName", default)]
    pub snapshot_name: String,
    /// `progressing`, `accomplished`, `failed`.
    #[serde(rename = "Status")]
    pub status: String,
    /// The disk it was taken from.
    #[serde(rename = "SourceDiskId", default)]
    pub source_disk_id: String,
    /// Size of that disk in GiB (a string in the API).
    #[serde(rename = "SourceDiskSize", default)]
    pub source_disk_size: String,
    /// `YYYY-MM-DDThh:mm:ssZ` or `YYYY-MM-DDThh:mmZ`.
    #[serde(rename = "CreationTime", default)]
    pub creation_time: String,
    /// True once it can be used to create disks.
    #[serde(rename = "Available", default)]
    pub available: bool,
    #[serde(rename = "Tags", default)]
    tags: TagList,
}

impl Snapshot {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .tag
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }

    /// The source disk size in GiB, 0 when unknown.
    pub fn source_size_gib(&self) -> i64 {
        self.source_disk_size.trim().parse().unwrap_or(0)
    }

    /// Creation time as seconds since the epoch, 0 when unknown.
    pub fn creation_seconds(&self) -> i64 {
        let raw = self.creation_time.trim_end_matches('Z');
        let with_seconds = if raw.len() == 16 {
            format!("{raw}:00")
        } else {
            raw.to_owned()
        };
        humantime::parse_rfc3339_weak(&with_seconds)
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Filters of a DescribeDisks call.
#[derive(Debug, Clone, Default)]
pub struct DiskQuery {
    /// At most [`MAX_IDS_PER_DESCRIBE`] IDs.
    pub disk_ids: Vec<String>,
    /// Only disks carrying these tags.
    pub tags: Vec<(String, String)>,
    /// Only disks attached to this instance.
    pub instance_id: Option<String>,
    /// 10..=500.
    pub max_results: Option<u32>,
    /// The token of the previous page.
    pub next_token: Option<String>,
}

/// A page of disks.
#[derive(Debug, Clone, Default)]
pub struct DiskPage {
    /// The disks.
    pub disks: Vec<Disk>,
    /// Token of the next page, empty at the end.
    pub next_token: String,
}

/// The arguments of CreateDisk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateDiskArgs {
    /// Zone.
    pub zone_id: String,
    /// Disk category.
    pub category: String,
    /// Size in GiB.
    pub size_gib: i64,
    /// Name.
    pub disk_name: String,
    /// Description.
    pub description: String,
    /// Restore from this snapshot.
    pub snapshot_id: Option<String>,
    /// ESSD level.
    pub performance_level: Option<String>,
    /// cloud_auto provisioned IOPS.
    pub provisioned_iops: Option<i64>,
    /// cloud_auto bursting.
    pub bursting_enabled: Option<bool>,
    /// Encrypt.
    pub encrypted: bool,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Resource group.
    pub resource_group_id: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Idempotency token.
    pub client_token: String,
    /// `MultiAttach=Enabled`.
    pub multi_attach: bool,
}

/// The arguments of ModifyDiskSpec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModifySpecArgs {
    /// The disk.
    pub disk_id: String,
    /// New category.
    pub category: Option<String>,
    /// New ESSD level.
    pub performance_level: Option<String>,
    /// New provisioned IOPS.
    pub provisioned_iops: Option<i64>,
}

/// The arguments of CreateSnapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSnapshotArgs {
    /// The source disk.
    pub disk_id: String,
    /// Name.
    pub snapshot_name: String,
    /// Resource group.
    pub resource_group_id: Option<String>,
    /// Retention in days.
    pub retention_days: Option<i64>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Idempotency token.
    pub client_token: String,
}

/// Filters of a DescribeSnapshots call.
#[derive(Debug, Clone, Default)]
pub struct SnapshotQuery {
    /// IDs (at most 100).
    pub snapshot_ids: Vec<String>,
    /// Snapshots of this disk.
    pub disk_id: Option<String>,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// 10..=100.
    pub max_results: Option<u32>,
    /// Token of the previous page.
    pub next_token: Option<String>,
}

/// A page of snapshots.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPage {
    /// The snapshots.
    pub snapshots: Vec<Snapshot>,
    /// Token of the next page, empty at the end.
    pub next_token: String,
}

/// The ECS calls the provider makes, in storage verbs. Tests can put a fake
/// behind it; the real one is [`HttpEcsClient`].
#[async_trait]
pub trait EcsApi: Send + Sync + 'static {
    /// CreateDisk; returns the disk ID.
    async fn create_disk(&self, args: &CreateDiskArgs) -> Result<String, ApiError>;
    /// DeleteDisk.
    async fn delete_disk(&self, disk_id: &str) -> Result<(), ApiError>;
    /// AttachDisk.
    async fn attach_disk(&self, disk_id: &str, instance_id: &str) -> Result<(), ApiError>;
    /// DetachDisk.
    async fn detach_disk(&self, disk_id: &str, instance_id: &str) -> Result<(), ApiError>;
    /// DescribeDisks.
    async fn describe_disks(&self, query: &DiskQuery) -> Result<DiskPage, ApiError>;
    /// ResizeDisk, online.
    async fn resize_disk(
        &self,
        disk_id: &str,
        new_size_gib: i64,
        client_token: &str,
    ) -> Result<(), ApiError>;
    /// ModifyDiskSpec.
    async fn modify_disk_spec(&self, args: &ModifySpecArgs) -> Result<(), ApiError>;
    /// CreateSnapshot; returns the snapshot ID.
    async fn create_snapshot(&self, args: &CreateSnapshotArgs) -> Result<String, ApiError>;
    /// DeleteSnapshot.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ApiError>;
    /// DescribeSnapshots.
    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, ApiError>;
}

/// Whether a call may be repeated after an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// A read, or a write carrying a ClientToken.
    Safe,
    /// A write without a ClientToken: repeated only after throttling, which
    /// the service answers before acting.
    OnlyIfThrottled,
}

/// The HTTP client.
pub struct HttpEcsClient {
    instance: String,
    /// Built by the first request: an idle driver holds no TLS state.
    http: std::sync::OnceLock<reqwest::Client>,
    endpoint: reqwest::Url,
    region: String,
    credentials: Arc<CredentialSource>,
    signature: SignatureVersion,
    timeout: Duration,
    max_retries: u32,
    calls: AtomicU64,
}

impl std::fmt::Debug for HttpEcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEcsClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// How the client is built.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The provider instance (names it in backend call reports).
    pub instance: String,
    /// Endpoint URL.
    pub endpoint: String,
    /// Region ID sent as `RegionId`.
    pub region: String,
    /// Signature algorithm.
    pub signature: SignatureVersion,
    /// Timeout of one HTTP exchange.
    pub timeout: Duration,
    /// Repeats after throttling or transient failures.
    pub max_retries: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "RequestId", default)]
    request_id: String,
}

#[derive(Deserialize)]
struct CreateDiskResponse {
    #[serde(rename = "DiskId")]
    disk_id: String,
}

#[derive(Deserialize)]
struct CreateSnapshotResponse {
    #[serde(rename = "SnapshotId")]
    snapshot_id: String,
}

#[derive(Deserialize)]
struct Empty {}

#[derive(Deserialize)]
struct DiskList {
    #[serde(rename = "Disk", default)]
    disk: Vec<Disk>,
}

#[derive(Deserialize)]
struct DescribeDisksResponse {
    #[serde(rename = "Disks")]
    disks: Option<DiskList>,
    #[serde(rename = "NextToken", default)]
    next_token: String,
}

#[derive(Deserialize)]
struct SnapshotList {
    #[serde(rename = "Snapshot", default)]
    snapshot: Vec<Snapshot>,
}

#[derive(Deserialize)]
struct DescribeSnapshotsResponse {
    #[serde(rename = "Snapshots")]
    snapshots: Option<SnapshotList>,
    #[serde(rename = "NextToken", default)]
    next_token: String,
}

fn json_array(ids: &[String]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

fn push_tags(params: &mut BTreeMap<String, String>, tags: &[(String, String)]) {
    for (i, (k, v)) in tags.iter().enumerate() {
        params.insert(format!("Tag.{}.Key", i + 1), k.clone());
        params.insert(format!("Tag.{}.Value", i + 1), v.clone());
    }
}

/// ECS answers `SignatureDoesNotMatch` with its string to sign, which holds
/// every signed parameter (the AccessKeyId and, with RPC signing, the STS
/// token): the message keeps only what comes before it.
fn withhold_string_to_sign(message: &str) -> String {
    match message.to_ascii_lowercase().find("string to sign") {
        Some(at) => format!(
            "{} (the string to sign it quoted is withheld: it contains credentials)",
            message[..at].trim_end()
        ),
        None => message.to_owned(),
    }
}

/// A fresh nonce: unique per request, as the replay check demands.
fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Now as `YYYY-MM-DDThh:mm:ssZ`.
pub fn timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now).to_string()
}

impl HttpEcsClient {
    /// Builds a client.
    pub fn new(config: ClientConfig, credentials: Arc<CredentialSource>) -> Result<Self, ApiError> {
        let endpoint = reqwest::Url::parse(&config.endpoint).map_err(|e| ApiError::Request {
            action: "(any)".into(),
            reason: format!("endpoint {:?} is not a URL: {e}", config.endpoint),
        })?;
        Ok(Self {
            instance: config.instance.clone(),
            http: std::sync::OnceLock::new(),
            endpoint,
            region: config.region,
            credentials,
            signature: config.signature,
            timeout: config.timeout,
            max_retries: config.max_retries,
            calls: AtomicU64::new(0),
        })
    }

    /// The HTTP client, built on first use (two racing first calls may
    /// both build one; the first stored is kept).
    fn http(&self) -> Result<&reqwest::Client, ApiError> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|source| ApiError::transport("(client)", &self.endpoint, source))?;
        Ok(self.http.get_or_init(|| http))
    }

    /// How many HTTP requests this client has sent.
    pub fn calls_sent(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Builds the signed request for `action` with `params`.
    async fn build(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<reqwest::Request, ApiError> {
        let creds = self
            .credentials
            .current()
            .await
            .map_err(ApiError::Credentials)?;
        let now = SystemTime::now();
        let mut query = params.clone();
        let mut url = self.endpoint.clone();
        let sign_err = |source| ApiError::Sign {
            action: action.to_owned(),
            source,
        };
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        match self.signature {
            SignatureVersion::Rpc => {
                query.insert("Action".into(), action.into());
                query.insert("Version".into(), API_VERSION.into());
                query.insert("Format".into(), "JSON".into());
                query.insert("AccessKeyId".into(), creds.access_key_id.clone());
                query.insert("SignatureMethod".into(), "HMAC-SHA1".into());
                query.insert("SignatureVersion".into(), "1.0".into());
                query.insert("SignatureNonce".into(), nonce());
                query.insert("Timestamp".into(), timestamp(now));
                if let Some(token) = &creds.security_token {
                    query.insert("SecurityToken".into(), token.expose().to_owned());
                }
                let signature =
                    sign::rpc_signature(creds.access_key_secret.expose(), "POST", &query)
                        .map_err(sign_err)?;
                query.insert("Signature".into(), signature);
                url.set_query(Some(&sign::canonical_query(&query)));
            }
            SignatureVersion::V3 => {
                let host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => {
                        return Err(ApiError::Request {
                            action: action.to_owned(),
                            reason: "the endpoint has no host".into(),
                        });
                    }
                };
                headers.insert("host".into(), host);
                headers.insert("x-acs-action".into(), action.into());
                headers.insert("x-acs-version".into(), API_VERSION.into());
                headers.insert("x-acs-date".into(), timestamp(now));
                headers.insert("x-acs-signature-nonce".into(), nonce());
                headers.insert(
                    "x-acs-content-sha256".into(),
                    sign::EMPTY_BODY_SHA256.into(),
                );
                if let Some(token) = &creds.security_token {
                    headers.insert("x-acs-security-token".into(), token.expose().to_owned());
                }
                let input = V3Input {
                    method: "POST",
                    path: "/",
                    query: &query,
                    signed_headers: &headers,
                    body_sha256: sign::EMPTY_BODY_SHA256,
                };
                let authorization = input
                    .authorization(&creds.access_key_id, creds.access_key_secret.expose())
                    .map_err(sign_err)?;
                if !query.is_empty() {
                    url.set_query(Some(&sign::canonical_query(&query)));
                }
                headers.insert("authorization".into(), authorization);
            }
        }
        let mut builder = self.http()?.post(url);
        for (k, v) in &headers {
            if k != "host" {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
        builder
            .build()
            .map_err(|source| ApiError::transport(action, &self.endpoint, source))
    }

    async fn send_once<T: DeserializeOwned>(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<T, ApiError> {
        let request = self.build(action, params).await?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let response = self.http()?.execute(request).await.map_err(|source| {
            if source.is_timeout() {
                ApiError::Timeout {
                    action: action.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                ApiError::transport(action, &self.endpoint, source)
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("x-acs-retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let body = response.bytes().await.map_err(|source| {
            if source.is_timeout() {
                ApiError::Timeout {
                    action: action.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                ApiError::transport(action, &self.endpoint, source)
            }
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
                action: action.to_owned(),
                source,
            });
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let (code, message, request_id) = match parsed {
            Some(e) if !e.code.is_empty() => {
                (e.code, withhold_string_to_sign(&e.message), e.request_id)
            }
            _ => (
                format!("HTTP{status}"),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
                String::new(),
            ),
        };
        Err(ApiError::Service(ServiceError {
            action: action.to_owned(),
            status,
            code,
            message,
            request_id,
            retry_after,
        }))
    }

    /// Sends `action`, repeating after throttling (honouring the service's
    /// `x-acs-retry-after`) and, when `repeat` is safe, after transient
    /// failures, with exponential back-off.
    async fn call<T: DeserializeOwned>(
        &self,
        action: &str,
        params: BTreeMap<String, String>,
        repeat: Repeat,
    ) -> Result<T, ApiError> {
        let mut attempt: u32 = 0;
        loop {
            let started = std::time::Instant::now();
            let result = self.send_once(action, &params).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) if e.is_throttling() => "throttled",
                Err(_) => "error",
            };
            omnidisk_provider_api::observe::api_call(
                &self.instance,
                action,
                outcome,
                started.elapsed(),
            );
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let may_repeat = err.is_throttling() || (repeat == Repeat::Safe && err.is_transient());
            if !may_repeat || attempt >= self.max_retries {
                return Err(err);
            }
            let backoff = err.retry_after().unwrap_or_else(|| {
                // 100 ms doubling to 6.4 s, with jitter so that many waiters
                // do not return in step.
                let base = 100u64 << attempt.min(6);
                let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % (base / 2 + 1);
                Duration::from_millis(base + jitter)
            });
            tracing::debug!(action, attempt, ?backoff, error = %err, "repeating ECS call");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    fn base_params(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("RegionId".to_owned(), self.region.clone());
        p
    }
}

#[async_trait]
impl EcsApi for HttpEcsClient {
    async fn create_disk(&self, args: &CreateDiskArgs) -> Result<String, ApiError> {
        let mut p = self.base_params();
        p.insert("ZoneId".into(), args.zone_id.clone());
        p.insert("DiskCategory".into(), args.category.clone());
        p.insert("Size".into(), args.size_gib.to_string());
        if !args.disk_name.is_empty() {
            p.insert("DiskName".into(), args.disk_name.clone());
        }
        if !args.description.is_empty() {
            p.insert("Description".into(), args.description.clone());
        }
        if let Some(s) = &args.snapshot_id {
            p.insert("SnapshotId".into(), s.clone());
        }
        if let Some(v) = &args.performance_level {
            p.insert("PerformanceLevel".into(), v.clone());
        }
        if let Some(v) = args.provisioned_iops {
            p.insert("ProvisionedIops".into(), v.to_string());
        }
        if let Some(v) = args.bursting_enabled {
            p.insert("BurstingEnabled".into(), v.to_string());
        }
        if args.encrypted {
            p.insert("Encrypted".into(), "true".into());
        }
        if let Some(v) = &args.kms_key_id {
            p.insert("KMSKeyId".into(), v.clone());
        }
        if let Some(v) = &args.resource_group_id {
            p.insert("ResourceGroupId".into(), v.clone());
        }
        if args.multi_attach {
            p.insert("MultiAttach".into(), "Enabled".into());
        }
        push_tags(&mut p, &args.tags);
        p.insert("ClientToken".into(), args.client_token.clone());
        let r: CreateDiskResponse = self.call("CreateDisk", p, Repeat::Safe).await?;
        Ok(r.disk_id)
    }

    async fn delete_disk(&self, disk_id: &str) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), disk_id.to_owned());
        let _: Empty = self.call("DeleteDisk", p, Repeat::OnlyIfThrottled).await?;
        Ok(())
    }

    async fn attach_disk(&self, disk_id: &str, instance_id: &str) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), disk_id.to_owned());
        p.insert("InstanceId".to_owned(), instance_id.to_owned());
        p.insert("DeleteWithInstance".to_owned(), "false".to_owned());
        let _: Empty = self.call("AttachDisk", p, Repeat::OnlyIfThrottled).await?;
        Ok(())
    }

    async fn detach_disk(&self, disk_id: &str, instance_id: &str) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), disk_id.to_owned());
        p.insert("InstanceId".to_owned(), instance_id.to_owned());
        let _: Empty = self.call("DetachDisk", p, Repeat::OnlyIfThrottled).await?;
        Ok(())
    }

    async fn describe_disks(&self, query: &DiskQuery) -> Result<DiskPage, ApiError> {
        let mut p = self.base_params();
        if !query.disk_ids.is_empty() {
            p.insert("DiskIds".into(), json_array(&query.disk_ids));
        }
        if let Some(i) = &query.instance_id {
            p.insert("InstanceId".into(), i.clone());
        }
        push_tags(&mut p, &query.tags);
        if let Some(m) = query.max_results {
            p.insert("MaxResults".into(), m.to_string());
        }
        if let Some(t) = query.next_token.as_ref().filter(|t| !t.is_empty()) {
            p.insert("NextToken".into(), t.clone());
        }
        let r: DescribeDisksResponse = self.call("DescribeDisks", p, Repeat::Safe).await?;
        Ok(DiskPage {
            disks: r.disks.map(|d| d.disk).unwrap_or_default(),
            next_token: r.next_token,
        })
    }

    async fn resize_disk(
        &self,
        disk_id: &str,
        new_size_gib: i64,
        client_token: &str,
    ) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), disk_id.to_owned());
        p.insert("NewSize".to_owned(), new_size_gib.to_string());
        p.insert("Type".to_owned(), "online".to_owned());
        p.insert("ClientToken".to_owned(), client_token.to_owned());
        let _: Empty = self.call("ResizeDisk", p, Repeat::Safe).await?;
        Ok(())
    }

    async fn modify_disk_spec(&self, args: &ModifySpecArgs) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), args.disk_id.clone());
        if let Some(v) = &args.category {
            p.insert("DiskCategory".into(), v.clone());
        }
        if let Some(v) = &args.performance_level {
            p.insert("PerformanceLevel".into(), v.clone());
        }
        if let Some(v) = args.provisioned_iops {
            p.insert("ProvisionedIops".into(), v.to_string());
        }
        let _: Empty = self
            .call("ModifyDiskSpec", p, Repeat::OnlyIfThrottled)
            .await?;
        Ok(())
    }

    async fn create_snapshot(&self, args: &CreateSnapshotArgs) -> Result<String, ApiError> {
        let mut p = BTreeMap::new();
        p.insert("DiskId".to_owned(), args.disk_id.clone());
        if !args.snapshot_name.is_empty() {
            p.insert("SnapshotName".into(), args.snapshot_name.clone());
        }
        if let Some(v) = &args.resource_group_id {
            p.insert("ResourceGroupId".into(), v.clone());
        }
        if let Some(v) = args.retention_days {
            p.insert("RetentionDays".into(), v.to_string());
        }
        push_tags(&mut p, &args.tags);
        p.insert("ClientToken".into(), args.client_token.clone());
        let r: CreateSnapshotResponse = self.call("CreateSnapshot", p, Repeat::Safe).await?;
        Ok(r.snapshot_id)
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), ApiError> {
        let mut p = BTreeMap::new();
        p.insert("SnapshotId".to_owned(), snapshot_id.to_owned());
        let _: Empty = self
            .call("DeleteSnapshot", p, Repeat::OnlyIfThrottled)
            .await?;
        Ok(())
    }

    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, ApiError> {
        let mut p = self.base_params();
        if !query.snapshot_ids.is_empty() {
            p.insert("SnapshotIds".into(), json_array(&query.snapshot_ids));
        }
        if let Some(d) = &query.disk_id {
            p.insert("DiskId".into(), d.clone());
        }
        push_tags(&mut p, &query.tags);
        if let Some(m) = query.max_results {
            p.insert("MaxResults".into(), m.to_string());
        }
        if let Some(t) = query.next_token.as_ref().filter(|t| !t.is_empty()) {
            p.insert("NextToken".into(), t.clone());
        }
        let r: DescribeSnapshotsResponse = self.call("DescribeSnapshots", p, Repeat::Safe).await?;
        Ok(SnapshotPage {
            snapshots: r.snapshots.map(|s| s.snapshot).unwrap_or_default(),
            next_token: r.next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_456_231_584);
        assert_eq!(timestamp(t), "2016-02-23T12:46:24Z");
    }

    #[test]
    fn quoted_strings_to_sign_are_withheld() {
        let m = withhold_string_to_sign(
            "Specified signature is not matched with our calculation. server string to sign is:POST&%2F&AccessKeyId%3DLTAIcanary",
        );
        assert!(!m.contains("LTAIcanary"), "{m}");
        assert!(m.starts_with("Specified signature is not matched"), "{m}");
        assert_eq!(withhold_string_to_sign("plain"), "plain");
    }

    #[test]
    fn id_lists_are_json_arrays() {
        assert_eq!(
            json_array(&["d-a".to_owned(), "d-b".to_owned()]),
            r#"["d-a","d-b"]"#
        );
    }

    #[test]
    fn describe_answers_parse() {
        let body = r#"{"RequestId":"r","TotalCount":1,"NextToken":"t2","Disks":{"Disk":[
            {"DiskId":"d-1","Status":"In_use","Category":"cloud_essd","Size":40,"ZoneId":"z",
             "InstanceId":"i-1","SerialNumber":"1","Tags":{"Tag":[{"TagKey":"k","TagValue":"v"}]},
             "Attachments":{"Attachment":[{"InstanceId":"i-1","Device":"/dev/xvdb"}]}}]}}"#;
        let r: DescribeDisksResponse = serde_json::from_str(body).unwrap();
        let disks = r.disks.unwrap().disk;
        assert_eq!(disks[0].tag("k"), Some("v"));
        assert_eq!(disks[0].attached_instances(), vec!["i-1".to_owned()]);
        assert_eq!(r.next_token, "t2");
    }

    #[test]
    fn snapshot_times_parse_with_or_without_seconds() {
        let mut s: Snapshot = serde_json::from_str(
            r#"{"SnapshotId":"s-1","Status":"accomplished","CreationTime":"2024-01-02T03:04Z","SourceDiskSize":"40"}"#,
        )
        .unwrap();
        assert_eq!(s.creation_seconds(), 1_704_164_640);
        assert_eq!(s.source_size_gib(), 40);
        s.creation_time = "2024-01-02T03:04:05Z".into();
        assert_eq!(s.creation_seconds(), 1_704_164_645);
    }
}

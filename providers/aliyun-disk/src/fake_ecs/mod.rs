//! A fake ECS endpoint for tests (feature `fake-ecs`): an HTTP server on
//! 127.0.0.1 that authenticates every request like the service (both
//! signature algorithms, nonce replay, 15-minute clock window, STS tokens),
//! and models disks and snapshots with timed state changes, ClientToken
//! idempotency, pagination, per-instance operation conflicts, throttling
//! with `x-acs-retry-after`, and the instance metadata paths. Attach and
//! detach operations are logged per instance ([`oplog`]) so tests can check
//! how they overlapped.
//!
//! Tests hold a [`FakeEcs`] handle to configure it and look inside.

pub mod oplog;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use oplog::{OpConcurrency, OpEdge, OpEvent, OpKind};
use verify::{AcceptedKey, RawRequest, Verifier};

/// Why the fake could not start.
#[derive(Debug, thiserror::Error)]
pub enum FakeEcsError {
    /// Binding the listener failed.
    #[error("cannot bind the fake ECS endpoint")]
    Bind(#[source] std::io::Error),
}

/// How long each asynchronous change takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    /// `Creating` -> `Available`.
    pub create: Duration,
    /// `Attaching` -> `In_use`.
    pub attach: Duration,
    /// `Detaching` -> `Available`.
    pub detach: Duration,
    /// ResizeDisk until the new size shows.
    pub resize: Duration,
    /// ModifyDiskSpec until the new spec shows.
    pub modify: Duration,
    /// Snapshot `progressing` -> `accomplished`.
    pub snapshot: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        let d = Duration::from_millis(50);
        Self {
            create: d,
            attach: d,
            detach: d,
            resize: d,
            modify: d,
            snapshot: d,
        }
    }
}

/// The instance metadata the fake serves.
#[derive(Debug, Clone)]
pub struct FakeMetadata {
    /// `instance-id`.
    pub instance_id: String,
    /// `zone-id`.
    pub zone_id: String,
    /// `instance/instance-type`.
    pub instance_type: String,
    /// RAM role name and the key handed out for it.
    pub ram_role: Option<(String, String)>,
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeEcsConfig {
    /// The region it serves.
    pub region: String,
    /// Zone -> the disk categories on sale there.
    pub zones: BTreeMap<String, Vec<String>>,
    /// Instance ID -> zone.
    pub instances: BTreeMap<String, String>,
    /// Accepted AccessKeys.
    pub keys: BTreeMap<String, AcceptedKey>,
    /// Delays of the state changes.
    pub delays: Delays,
    /// Data disks one instance accepts.
    pub max_disks_per_instance: usize,
    /// Metadata paths.
    pub metadata: FakeMetadata,
}

impl FakeEcsConfig {
    /// One region (`cn-hangzhou`), two zones, four instances, one key
    /// (`fake-key-id` / `fake-key-secret`).
    pub fn standard() -> Self {
        let all = [
            "cloud",
            "cloud_efficiency",
            "cloud_ssd",
            "cloud_essd",
            "cloud_auto",
            "cloud_essd_entry",
        ]
        .map(String::from)
        .to_vec();
        let no_essd = ["cloud_efficiency", "cloud_ssd"].map(String::from).to_vec();
        Self {
            region: "cn-hangzhou".into(),
            zones: [
                ("cn-hangzhou-a".to_owned(), all),
                ("cn-hangzhou-b".to_owned(), no_essd),
            ]
            .into(),
            instances: [
                ("i-fake0001", "cn-hangzhou-a"),
                ("i-fake0002", "cn-hangzhou-a"),
                ("i-fake0003", "cn-hangzhou-a"),
                ("i-fake0004", "cn-hangzhou-b"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            keys: [(
                "fake-key-id".to_owned(),
                AcceptedKey {
                    secret: "fake-key-secret".into(),
                    security_token: None,
                },
            )]
            .into(),
            delays: Delays::default(),
            max_disks_per_instance: 16,
            metadata: FakeMetadata {
                instance_id: "i-fake0001".into(),
                zone_id: "cn-hangzhou-a".into(),
                instance_type: "ecs.g7.large".into(),
                ram_role: None,
            },
        }
    }
}

/// What the fake keeps about a disk (its public view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDisk {
    /// ID.
    pub id: String,
    /// Status as ECS reports it now.
    pub status: String,
    /// Category.
    pub category: String,
    /// Size in GiB.
    pub size_gib: i64,
    /// Zone.
    pub zone: String,
    /// Attached instance.
    pub instance: String,
    /// ESSD level.
    pub performance_level: String,
    /// Provisioned IOPS.
    pub provisioned_iops: i64,
    /// Encrypted.
    pub encrypted: bool,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Source snapshot.
    pub snapshot_id: String,
    /// Created with `MultiAttach=Enabled`.
    pub multi_attach: bool,
    /// Instances a multi-attach disk is attached to (any state), in order.
    pub attached: Vec<String>,
}

/// Most instances one multi-attach disk is attached to at once.
pub const MULTI_ATTACH_LIMIT: usize = 16;
/// The categories that take `MultiAttach=Enabled`.
pub const MULTI_ATTACH_CATEGORIES: &[&str] = &["cloud_essd", "cloud_auto"];

#[derive(Debug, Clone)]
enum Change {
    Created,
    Attached,
    Detached,
    Resized(i64),
    Modified {
        category: Option<String>,
        level: Option<String>,
        iops: Option<i64>,
    },
}

#[derive(Debug, Clone)]
struct DiskState {
    public: FakeDisk,
    /// Attachments of a multi-attach disk: instance -> (state, when the
    /// transition ends). Single-attach disks use `public.instance`.
    shared: BTreeMap<String, (String, Option<Instant>)>,
    name: String,
    kms_key_id: String,
    bursting: bool,
    created: SystemTime,
    pending: Option<(Instant, Change)>,
}

#[derive(Debug, Clone)]
struct SnapshotState {
    id: String,
    name: String,
    disk_id: String,
    disk_size: i64,
    created: SystemTime,
    ready_at: Instant,
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Throttle {
    remaining: u32,
    retry_after_ms: u64,
}

struct Inner {
    config: FakeEcsConfig,
    verifier: Verifier,
    clock_offset_secs: i64,
    disks: BTreeMap<String, DiskState>,
    snapshots: BTreeMap<String, SnapshotState>,
    tokens: HashMap<(String, String), (BTreeMap<String, String>, Value)>,
    next_id: u64,
    calls: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    throttle: Throttle,
    injected: Vec<(String, u16, String)>,
    op_log: Vec<OpEvent>,
}

/// A running fake ECS endpoint. Dropping it stops the server.
pub struct FakeEcs {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEcs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FakeEcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEcs")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeEcs {
    /// Starts the fake on an ephemeral port of 127.0.0.1.
    pub async fn start(config: FakeEcsConfig) -> Result<Self, FakeEcsError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(FakeEcsError::Bind)?;
        let addr = listener.local_addr().map_err(FakeEcsError::Bind)?;
        let inner = Arc::new(Mutex::new(Inner {
            verifier: Verifier::new(config.keys.clone()),
            config,
            clock_offset_secs: 0,
            disks: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            tokens: HashMap::new(),
            next_id: 0,
            calls: BTreeMap::new(),
            errors: BTreeMap::new(),
            throttle: Throttle::default(),
            injected: Vec::new(),
            op_log: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake ECS server stopped");
            }
        });
        Ok(Self { addr, inner, task })
    }

    /// `http://127.0.0.1:<port>/`, for `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://127.0.0.1:<port>`, for `metadata_base_url`.
    pub fn metadata_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Successful and failed calls per action (authentication failures under
    /// `"(auth)"`).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        lock(&self.inner).calls.clone()
    }

    /// Error answers per code.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.inner).errors.clone()
    }

    /// The next `n` requests are throttled, asking for `retry_after_ms`.
    pub fn throttle_next(&self, n: u32, retry_after_ms: u64) {
        lock(&self.inner).throttle = Throttle {
            remaining: n,
            retry_after_ms,
        };
    }

    /// The next call of `action` fails with `code` and `status`.
    pub fn fail_next(&self, action: &str, status: u16, code: &str) {
        lock(&self.inner)
            .injected
            .push((action.to_owned(), status, code.to_owned()));
    }

    /// Moves the server's clock by `secs` (negative = behind).
    pub fn set_clock_offset(&self, secs: i64) {
        lock(&self.inner).clock_offset_secs = secs;
    }

    /// Replaces the delays of state changes.
    pub fn set_delays(&self, delays: Delays) {
        lock(&self.inner).config.delays = delays;
    }

    /// Accepts another key.
    pub fn add_key(&self, id: &str, key: AcceptedKey) {
        lock(&self.inner).verifier.keys.insert(id.to_owned(), key);
    }

    /// The disks, as they are now.
    pub fn disks(&self) -> Vec<FakeDisk> {
        let mut inner = lock(&self.inner);
        inner.advance();
        inner.disks.values().map(|d| d.public.clone()).collect()
    }

    /// One disk, as it is now.
    pub fn disk(&self, id: &str) -> Option<FakeDisk> {
        self.disks().into_iter().find(|d| d.id == id)
    }

    /// Number of snapshots.
    pub fn snapshot_count(&self) -> usize {
        lock(&self.inner).snapshots.len()
    }

    /// The attach/detach log so far, in sequence order (changes that are due
    /// are applied first, so a finished operation shows its end).
    pub fn op_log(&self) -> Vec<OpEvent> {
        let mut inner = lock(&self.inner);
        inner.advance();
        inner.op_log.clone()
    }

    /// Concurrency of every attach/detach so far; see [`OpConcurrency::of`]
    /// to look at a stretch of [`FakeEcs::op_log`] instead.
    pub fn op_concurrency(&self) -> OpConcurrency {
        OpConcurrency::of(&self.op_log())
    }
}

type Shared = Arc<Mutex<Inner>>;

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn error_response(status: u16, code: &str, message: &str, retry_after_ms: Option<u64>) -> Response {
    let body = json!({
        "RequestId": request_id(),
        "HostId": "ecs.fake.local",
        "Code": code,
        "Message": message,
        "Recommend": "",
    });
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(ms) = retry_after_ms {
        if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
            response.headers_mut().insert("x-acs-retry-after", v);
        }
    }
    response
}

fn ok_response(mut body: Value) -> Response {
    if let Some(map) = body.as_object_mut() {
        map.insert("RequestId".into(), Value::from(request_id()));
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn text_response(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}

/// Decodes `a=b&c=d` (percent-encoding, `+` as space as form decoding does).
fn decode_pairs(raw: &str, into: &mut BTreeMap<String, String>) {
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        into.insert(dec(k), dec(v));
    }
}

async fn handle(State(inner): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if let Some(rest) = path.strip_prefix("/latest/meta-data/") {
        return metadata(&inner, rest);
    }
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(_) => return error_response(400, "InvalidParameter", "body too large", None),
    };
    let mut params = BTreeMap::new();
    decode_pairs(parts.uri.query().unwrap_or(""), &mut params);
    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        decode_pairs(&String::from_utf8_lossy(&body), &mut params);
    }
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str().to_ascii_lowercase(), v.to_owned());
        }
    }
    let raw = RawRequest {
        method: parts.method.as_str(),
        path: &path,
        params: &params,
        headers: &headers,
        body: &body,
    };
    let mut state = lock(&inner);
    let now = state.now();
    let auth = match state.verifier.verify(&raw, now) {
        Ok(a) => a,
        Err(e) => {
            *state.calls.entry("(auth)".into()).or_default() += 1;
            *state.errors.entry(e.code.to_owned()).or_default() += 1;
            return error_response(e.status, e.code, &e.message, None);
        }
    };
    *state.calls.entry(auth.action.clone()).or_default() += 1;
    if state.throttle.remaining > 0 {
        state.throttle.remaining -= 1;
        let ms = state.throttle.retry_after_ms;
        *state.errors.entry("Throttling.User".into()).or_default() += 1;
        return error_response(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
            Some(ms),
        );
    }
    if let Some(pos) = state
        .injected
        .iter()
        .position(|(a, _, _)| *a == auth.action)
    {
        let (_, status, code) = state.injected.remove(pos);
        *state.errors.entry(code.clone()).or_default() += 1;
        return error_response(status, &code, "injected failure", None);
    }
    if auth.version != crate::client::API_VERSION {
        return error_response(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
            None,
        );
    }
    state.advance();
    let result = state.dispatch(&auth.action, &auth.params);
    match result {
        Ok(body) => ok_response(body),
        Err(e) => {
            *state.errors.entry(e.code.clone()).or_default() += 1;
            error_response(e.status, &e.code, &e.message, None)
        }
    }
}

/// A multi-attach disk's status and public attachment list from its
/// attachments: a transition in progress shows, else `In_use` while any
/// attachment exists, else `Available`.
fn sync_shared(disk: &mut DiskState) {
    let public = &mut disk.public;
    public.attached = disk.shared.keys().cloned().collect();
    if matches!(public.status.as_str(), "Creating" | "ReIniting") {
        return;
    }
    let transition = disk
        .shared
        .values()
        .find(|(state, _)| state != "In_use")
        .map(|(state, _)| state.clone());
    public.status = match transition {
        Some(state) => state,
        None if disk.shared.is_empty() => "Available".into(),
        None => "In_use".into(),
    };
}

fn metadata(inner: &Shared, rest: &str) -> Response {
    let state = lock(inner);
    let m = &state.config.metadata;
    let value = match rest {
        "instance-id" => Some(m.instance_id.clone()),
        "zone-id" => Some(m.zone_id.clone()),
        "region-id" => Some(state.config.region.clone()),
        "instance/instance-type" => Some(m.instance_type.clone()),
        "ram/security-credentials/" | "ram/security-credentials" => m.ram_role.as_ref().map(|(role, _)| role.clone()),
        other => other
            .strip_prefix("ram/security-credentials/")
            .and_then(|role| {
                let (name, key_id) = m.ram_role.as_ref()?;
                if name != role {
                    return None;
                }
                let key = state.verifier.keys.get(key_id)?;
                let expires = SystemTime::now() + Duration::from_secs(3600);
                Some(
                    json!({
                        "Code": "Success",
                        "AccessKeyId": key_id,
                        "AccessKeySecret": key.secret,
                        "SecurityToken": key.security_token.clone().unwrap_or_default(),
                        "Expiration": humantime::format_rfc3339_seconds(expires).to_string(),
                        "LastUpdated": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    })
                    .to_string(),
                )
            }),
    };
    match value {
        Some(v) => text_response(StatusCode::OK, v),
        None => text_response(StatusCode::NOT_FOUND, "Not Found".into()),
    }
}

/// An error answer of an action.
#[derive(Debug)]
struct ActionError {
    status: u16,
    code: String,
    message: String,
}

fn err(status: u16, code: &str, message: impl Into<String>) -> ActionError {
    ActionError {
        status,
        code: code.to_owned(),
        message: message.into(),
    }
}

type ActionResult = Result<Value, ActionError>;

fn size_range(category: &str, level: &str) -> Option<(i64, i64)> {
    Some(match category {
        "cloud" => (5, 2000),
        "cloud_efficiency" | "cloud_ssd" => (20, 32_768),
        "cloud_essd" => match level {
            "PL0" => (1, 65_536),
            "PL1" | "" => (20, 65_536),
            "PL2" => (461, 65_536),
            "PL3" => (1261, 65_536),
            _ => return None,
        },
        "cloud_auto" => (1, 65_536),
        "cloud_essd_entry" => (10, 32_768),
        _ => return None,
    })
}

fn tags_of(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for n in 1..=20 {
        match params.get(&format!("Tag.{n}.Key")) {
            Some(k) => {
                let v = params
                    .get(&format!("Tag.{n}.Value"))
                    .cloned()
                    .unwrap_or_default();
                tags.insert(k.clone(), v);
            }
            None => break,
        }
    }
    tags
}

fn tag_json(tags: &BTreeMap<String, String>) -> Value {
    json!({ "Tag": tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect::<Vec<_>>() })
}

fn json_ids(raw: Option<&String>) -> Result<Option<Vec<String>>, ActionError> {
    match raw {
        None => Ok(None),
        Some(r) => serde_json::from_str::<Vec<String>>(r)
            .map(Some)
            .map_err(|_| {
                err(
                    400,
                    "InvalidParameter",
                    "The ID list is not a JSON array of strings.",
                )
            }),
    }
}

fn page<T>(
    items: Vec<T>,
    params: &BTreeMap<String, String>,
    default: usize,
    max: usize,
) -> Result<(Vec<T>, String), ActionError> {
    let size = match params.get("MaxResults") {
        None => default,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(err(
                    400,
                    "InvalidParameter.MaxResults",
                    format!("MaxResults must be 1..={max}."),
                ));
            }
        },
    };
    let start = match params.get("NextToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .strip_prefix("fake-next-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| {
                err(
                    400,
                    "InvalidParameter.NextToken",
                    "The specified NextToken is invalid.",
                )
            })?,
    };
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        format!("fake-next-{end}")
    } else {
        String::new()
    };
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

/// Appends to `log`; the sequence number is the position, so it is unique
/// and follows the order of the calls (all made under the fake's lock).
fn push_op(log: &mut Vec<OpEvent>, instance: &str, disk_id: &str, kind: OpKind, edge: OpEdge) {
    log.push(OpEvent {
        seq: log.len() as u64,
        instance: instance.to_owned(),
        disk_id: disk_id.to_owned(),
        kind,
        edge,
    });
}

impl Inner {
    fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        if self.clock_offset_secs >= 0 {
            now + Duration::from_secs(self.clock_offset_secs.unsigned_abs())
        } else {
            now - Duration::from_secs(self.clock_offset_secs.unsigned_abs())
        }
    }

    /// Applies every change whose time has come, in the order they fell
    /// due, so the operation log orders ends as the service would have.
    fn advance(&mut self) {
        let now = Instant::now();
        let mut due: Vec<(Instant, String)> = self
            .disks
            .values()
            .filter_map(|d| match &d.pending {
                Some((at, _)) if *at <= now => Some((*at, d.public.id.clone())),
                _ => None,
            })
            .collect();
        due.sort();
        for disk in self.disks.values_mut() {
            if !disk.public.multi_attach {
                continue;
            }
            let id = disk.public.id.clone();
            let mut done = Vec::new();
            for (instance, (state, until)) in disk.shared.iter_mut() {
                if until.is_some_and(|t| t <= now) {
                    *until = None;
                    if state == "Attaching" {
                        *state = "In_use".into();
                        push_op(&mut self.op_log, instance, &id, OpKind::Attach, OpEdge::End);
                    } else if state == "Detaching" {
                        done.push(instance.clone());
                        push_op(&mut self.op_log, instance, &id, OpKind::Detach, OpEdge::End);
                    }
                }
            }
            for instance in done {
                disk.shared.remove(&instance);
            }
            if disk.pending.is_none() {
                sync_shared(disk);
            }
        }
        for (_, id) in due {
            let Some(disk) = self.disks.get_mut(&id) else {
                continue;
            };
            let Some((_, change)) = disk.pending.take() else {
                continue;
            };
            let d = &mut disk.public;
            let finished = match &change {
                Change::Attached => Some(OpKind::Attach),
                Change::Detached => Some(OpKind::Detach),
                _ => None,
            };
            if let Some(kind) = finished {
                push_op(&mut self.op_log, &d.instance, &d.id, kind, OpEdge::End);
            }
            match change {
                Change::Created | Change::Detached => {
                    d.status = "Available".into();
                    d.instance.clear();
                    if d.multi_attach {
                        sync_shared(disk);
                    }
                }
                Change::Attached => d.status = "In_use".into(),
                Change::Resized(size) => d.size_gib = size,
                Change::Modified {
                    category,
                    level,
                    iops,
                } => {
                    if let Some(c) = category {
                        d.category = c;
                    }
                    if let Some(l) = level {
                        d.performance_level = l;
                    }
                    if let Some(i) = iops {
                        d.provisioned_iops = i;
                    }
                }
            }
        }
    }

    fn attachment_count(&self, instance: &str) -> usize {
        self.disks
            .values()
            .filter(|d| d.public.instance == instance || d.shared.contains_key(instance))
            .count()
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-fake{:016}", self.next_id)
    }

    /// Runs `f` once per ClientToken: a repeat with the same parameters gets
    /// the first answer, a repeat with others `IdempotentParameterMismatch`.
    fn idempotent(
        &mut self,
        action: &str,
        params: &BTreeMap<String, String>,
        f: impl FnOnce(&mut Self) -> ActionResult,
    ) -> ActionResult {
        let Some(token) = params.get("ClientToken").filter(|t| !t.is_empty()).cloned() else {
            return f(self);
        };
        if token.len() > 64 || !token.is_ascii() {
            return Err(err(
                400,
                "InvalidClientToken.Malformed",
                "ClientToken must be at most 64 ASCII characters.",
            ));
        }
        let mut fingerprint = params.clone();
        fingerprint.remove("ClientToken");
        let key = (action.to_owned(), token);
        if let Some((seen, answer)) = self.tokens.get(&key) {
            if *seen == fingerprint {
                return Ok(answer.clone());
            }
            return Err(err(
                400,
                "IdempotentParameterMismatch",
                "The specified parameters are different from before.",
            ));
        }
        let result = f(self);
        // Only accepted requests bind their token; a refused one may be
        // repeated with other parameters.
        if let Ok(answer) = &result {
            self.tokens.insert(key, (fingerprint, answer.clone()));
        }
        result
    }

    fn dispatch(&mut self, action: &str, params: &BTreeMap<String, String>) -> ActionResult {
        match action {
            "CreateDisk" => self.idempotent(action, params, |s| s.create_disk(params)),
            "DeleteDisk" => self.delete_disk(params),
            "AttachDisk" => self.attach_disk(params),
            "DetachDisk" => self.detach_disk(params),
            "DescribeDisks" => self.describe_disks(params),
            "ResizeDisk" => self.idempotent(action, params, |s| s.resize_disk(params)),
            "ModifyDiskSpec" => self.modify_disk_spec(params),
            "CreateSnapshot" => self.idempotent(action, params, |s| s.create_snapshot(params)),
            "DeleteSnapshot" => self.delete_snapshot(params),
            "DescribeSnapshots" => self.describe_snapshots(params),
            other => Err(err(
                404,
                "InvalidAction.NotFound",
                format!("Specified api {other} is not found"),
            )),
        }
    }

    fn region_check(&self, params: &BTreeMap<String, String>) -> Result<(), ActionError> {
        match params.get("RegionId") {
            None => Err(err(
                400,
                "MissingParameter",
                "RegionId is mandatory for this action.",
            )),
            Some(r) if *r != self.config.region => Err(err(
                404,
                "InvalidRegionId.NotFound",
                format!("Region {r} does not exist."),
            )),
            Some(_) => Ok(()),
        }
    }

    fn disk_mut(
        &mut self,
        params: &BTreeMap<String, String>,
    ) -> Result<&mut DiskState, ActionError> {
        let id = params.get("DiskId").ok_or_else(|| {
            err(
                400,
                "MissingParameter",
                "DiskId is mandatory for this action.",
            )
        })?;
        self.disks.get_mut(id).ok_or_else(|| {
            err(
                404,
                "InvalidDiskId.NotFound",
                format!("The specified disk {id} does not exist."),
            )
        })
    }

    fn create_disk(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        self.region_check(p)?;
        let zone = p.get("ZoneId").cloned().unwrap_or_default();
        let on_sale = self
            .config
            .zones
            .get(&zone)
            .ok_or_else(|| {
                err(
                    404,
                    "InvalidZoneId.NotFound",
                    format!("Zone {zone} does not exist."),
                )
            })?
            .clone();
        let category = p
            .get("DiskCategory")
            .cloned()
            .unwrap_or_else(|| "cloud".into());
        if !on_sale.contains(&category) {
            return Err(err(
                403,
                "InvalidDataDiskCategory.NotSupported",
                format!("The category {category} is not supported in {zone}."),
            ));
        }
        let level = p.get("PerformanceLevel").cloned().unwrap_or_default();
        if !level.is_empty() && category != "cloud_essd" {
            return Err(err(
                400,
                "InvalidParameter",
                "PerformanceLevel applies to cloud_essd only.",
            ));
        }
        let (min, max) = size_range(&category, &level).ok_or_else(|| {
            err(
                400,
                "InvalidPerformanceLevel.Malformed",
                format!("PerformanceLevel {level} is invalid."),
            )
        })?;
        let snapshot_id = p.get("SnapshotId").cloned().unwrap_or_default();
        let mut size: i64 = match p.get("Size") {
            Some(s) => s
                .parse()
                .map_err(|_| err(400, "InvalidParameter", "Size is not a number."))?,
            None if !snapshot_id.is_empty() => 0,
            None => {
                return Err(err(
                    400,
                    "MissingParameter",
                    "Either Size or SnapshotId must be given.",
                ));
            }
        };
        if !snapshot_id.is_empty() {
            let snap = self.snapshots.get(&snapshot_id).ok_or_else(|| {
                err(
                    404,
                    "InvalidSnapshotId.NotFound",
                    "The specified snapshot does not exist.",
                )
            })?;
            if snap.ready_at > Instant::now() {
                return Err(err(
                    403,
                    "InvalidSnapshot.NotReady",
                    "The snapshot is not ready.",
                ));
            }
            if size == 0 {
                size = snap.disk_size;
            } else if size < snap.disk_size {
                return Err(err(
                    403,
                    "InvalidDiskSize.TooSmall",
                    "The disk is smaller than the snapshot.",
                ));
            }
        }
        if size < min || size > max {
            return Err(err(
                403,
                "InvalidDiskSize.NotSupported",
                format!("{category} takes {min} to {max} GiB, not {size}."),
            ));
        }
        let multi_attach = match p.get("MultiAttach").map(String::as_str) {
            None | Some("Disabled") => false,
            Some("Enabled") => true,
            Some(other) => {
                return Err(err(
                    400,
                    "InvalidParameter.MultiAttach",
                    format!("MultiAttach must be Enabled or Disabled, not {other}."),
                ));
            }
        };
        if multi_attach && !MULTI_ATTACH_CATEGORIES.contains(&category.as_str()) {
            return Err(err(
                400,
                "InvalidDiskCategory.NotSupportMultiAttach",
                format!("The category {category} does not support multi-attach."),
            ));
        }
        let encrypted = p.get("Encrypted").is_some_and(|v| v == "true");
        let id = self.new_id("d");
        let delay = self.config.delays.create;
        let created = self.now();
        self.disks.insert(
            id.clone(),
            DiskState {
                public: FakeDisk {
                    id: id.clone(),
                    status: "Creating".into(),
                    category,
                    size_gib: size,
                    zone,
                    instance: String::new(),
                    performance_level: if level.is_empty()
                        && p.get("DiskCategory").is_some_and(|c| c == "cloud_essd")
                    {
                        "PL1".into()
                    } else {
                        level
                    },
                    provisioned_iops: p
                        .get("ProvisionedIops")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    encrypted,
                    tags: tags_of(p),
                    snapshot_id,
                    multi_attach,
                    attached: Vec::new(),
                },
                shared: BTreeMap::new(),
                name: p.get("DiskName").cloned().unwrap_or_default(),
                kms_key_id: p.get("KMSKeyId").cloned().unwrap_or_default(),
                bursting: p.get("BurstingEnabled").is_some_and(|v| v == "true"),
                created,
                pending: Some((Instant::now() + delay, Change::Created)),
            },
        );
        Ok(json!({ "DiskId": id, "OrderId": "" }))
    }

    fn delete_disk(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let disk = self.disk_mut(p)?;
        match disk.public.status.as_str() {
            "Available" => {}
            "Creating" => {
                return Err(err(
                    403,
                    "IncorrectDiskStatus.Initializing",
                    "The disk is being created.",
                ));
            }
            _ => {
                return Err(err(
                    403,
                    "IncorrectDiskStatus",
                    "The current disk status does not support this operation.",
                ));
            }
        }
        let id = disk.public.id.clone();
        self.disks.remove(&id);
        Ok(json!({}))
    }

    fn instance_busy(&self, instance: &str) -> bool {
        self.disks.values().any(|d| {
            (d.public.instance == instance
                && matches!(d.public.status.as_str(), "Attaching" | "Detaching"))
                || d.shared
                    .get(instance)
                    .is_some_and(|(state, _)| state != "In_use")
        })
    }

    fn attach_disk(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let instance = p.get("InstanceId").cloned().ok_or_else(|| {
            err(
                400,
                "MissingParameter",
                "InstanceId is mandatory for this action.",
            )
        })?;
        let zone = self
            .config
            .instances
            .get(&instance)
            .cloned()
            .ok_or_else(|| {
                err(
                    404,
                    "InvalidInstanceId.NotFound",
                    format!("The specified instance {instance} does not exist."),
                )
            })?;
        let busy = self.instance_busy(&instance);
        let attached = self.attachment_count(&instance);
        let limit = self.config.max_disks_per_instance;
        let delay = self.config.delays.attach;
        let disk = self.disk_mut(p)?;
        if disk.public.multi_attach {
            if disk.shared.contains_key(&instance) {
                return Err(err(404, "InvalidDisk.InUse", "The disk is in use."));
            }
            if !matches!(disk.public.status.as_str(), "Available" | "In_use") {
                return Err(err(
                    403,
                    "IncorrectDiskStatus",
                    "The current disk status does not support this operation.",
                ));
            }
            if disk.public.zone != zone {
                return Err(err(
                    403,
                    "ResourcesNotInSameZone",
                    "The disk and the instance are not in the same zone.",
                ));
            }
            if disk.shared.len() >= MULTI_ATTACH_LIMIT {
                return Err(err(
                    403,
                    "InvalidOperation.MultiAttachLimitExceeded",
                    format!(
                        "A multi-attach disk is attached to at most {MULTI_ATTACH_LIMIT} instances."
                    ),
                ));
            }
            if busy {
                return Err(err(
                    403,
                    "InvalidOperation.Conflict",
                    "Another operation is being performed on the instance.",
                ));
            }
            if attached >= limit {
                return Err(err(
                    403,
                    "InstanceDiskLimitExceeded",
                    "The instance holds the most data disks it can.",
                ));
            }
            disk.shared.insert(
                instance.clone(),
                ("Attaching".into(), Some(Instant::now() + delay)),
            );
            sync_shared(disk);
            let disk_id = disk.public.id.clone();
            push_op(
                &mut self.op_log,
                &instance,
                &disk_id,
                OpKind::Attach,
                OpEdge::Start,
            );
            return Ok(json!({}));
        }
        if disk.public.status == "In_use" || disk.public.status == "Attaching" {
            return Err(err(404, "InvalidDisk.InUse", "The disk is in use."));
        }
        if disk.public.status != "Available" {
            return Err(err(
                403,
                "IncorrectDiskStatus",
                "The current disk status does not support this operation.",
            ));
        }
        if disk.public.zone != zone {
            return Err(err(
                403,
                "ResourcesNotInSameZone",
                "The disk and the instance are not in the same zone.",
            ));
        }
        if busy {
            return Err(err(
                403,
                "InvalidOperation.Conflict",
                "Another operation is being performed on the instance.",
            ));
        }
        if attached >= limit {
            return Err(err(
                403,
                "InstanceDiskLimitExceeded",
                "The instance holds the most data disks it can.",
            ));
        }
        disk.public.status = "Attaching".into();
        disk.public.instance = instance.clone();
        disk.pending = Some((Instant::now() + delay, Change::Attached));
        let disk_id = disk.public.id.clone();
        push_op(
            &mut self.op_log,
            &instance,
            &disk_id,
            OpKind::Attach,
            OpEdge::Start,
        );
        Ok(json!({}))
    }

    fn detach_disk(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let instance = p.get("InstanceId").cloned().ok_or_else(|| {
            err(
                400,
                "MissingParameter",
                "InstanceId is mandatory for this action.",
            )
        })?;
        if !self.config.instances.contains_key(&instance) {
            return Err(err(
                404,
                "InvalidInstanceId.NotFound",
                format!("The specified instance {instance} does not exist."),
            ));
        }
        let busy = self.instance_busy(&instance);
        let delay = self.config.delays.detach;
        let disk = self.disk_mut(p)?;
        if disk.public.multi_attach {
            let Some((state, _)) = disk.shared.get(&instance) else {
                return Err(err(
                    403,
                    "DependencyViolation",
                    "The disk has not been attached on the specified instance.",
                ));
            };
            if state != "In_use" {
                return Err(err(
                    403,
                    "IncorrectDiskStatus",
                    "The current disk status does not support this operation.",
                ));
            }
            if busy {
                return Err(err(
                    403,
                    "InvalidOperation.Conflict",
                    "Another operation is being performed on the instance.",
                ));
            }
            disk.shared.insert(
                instance.clone(),
                ("Detaching".into(), Some(Instant::now() + delay)),
            );
            sync_shared(disk);
            let disk_id = disk.public.id.clone();
            push_op(
                &mut self.op_log,
                &instance,
                &disk_id,
                OpKind::Detach,
                OpEdge::Start,
            );
            return Ok(json!({}));
        }
        if disk.public.instance != instance {
            return Err(err(
                403,
                "DependencyViolation",
                "The disk has not been attached on the specified instance.",
            ));
        }
        if disk.public.status != "In_use" {
            return Err(err(
                403,
                "IncorrectDiskStatus",
                "The current disk status does not support this operation.",
            ));
        }
        if busy {
            return Err(err(
                403,
                "InvalidOperation.Conflict",
                "Another operation is being performed on the instance.",
            ));
        }
        disk.public.status = "Detaching".into();
        disk.pending = Some((Instant::now() + delay, Change::Detached));
        let disk_id = disk.public.id.clone();
        push_op(
            &mut self.op_log,
            &instance,
            &disk_id,
            OpKind::Detach,
            OpEdge::Start,
        );
        Ok(json!({}))
    }

    fn disk_json(&self, d: &DiskState) -> Value {
        let p = &d.public;
        let attachments = if p.multi_attach {
            d.shared
                .keys()
                .map(|i| json!({"InstanceId": i, "Device": "/dev/xvdb", "AttachedTime": ""}))
                .collect()
        } else if p.instance.is_empty()
            || p.status != "In_use" && p.status != "Detaching" && p.status != "Attaching"
        {
            Vec::new()
        } else {
            vec![json!({"InstanceId": p.instance, "Device": "/dev/xvdb", "AttachedTime": ""})]
        };
        json!({
            "DiskId": p.id,
            "DiskName": d.name,
            "Status": p.status,
            "Category": p.category,
            "Size": p.size_gib,
            "ZoneId": p.zone,
            "RegionId": self.config.region,
            "InstanceId": p.instance,
            "Device": if p.instance.is_empty() { "" } else { "/dev/xvdb" },
            "SerialNumber": p.id.trim_start_matches("d-"),
            "PerformanceLevel": p.performance_level,
            "ProvisionedIops": p.provisioned_iops,
            "BurstingEnabled": d.bursting,
            "Encrypted": p.encrypted,
            "KMSKeyId": d.kms_key_id,
            "SourceSnapshotId": p.snapshot_id,
            "Portable": true,
            "DeleteWithInstance": false,
            "Type": "data",
            "CreationTime": humantime::format_rfc3339_seconds(d.created).to_string(),
            "Tags": tag_json(&p.tags),
            "MultiAttach": if p.multi_attach { "Enabled" } else { "Disabled" },
            "Attachments": {"Attachment": attachments},
        })
    }

    fn describe_disks(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        self.region_check(p)?;
        let ids = json_ids(p.get("DiskIds"))?;
        if ids.as_ref().is_some_and(|i| i.len() > 100) {
            return Err(err(
                400,
                "InvalidParameter.DiskIds",
                "At most 100 disk IDs are accepted.",
            ));
        }
        let tags = tags_of(p);
        let matching: Vec<&DiskState> = self
            .disks
            .values()
            .filter(|d| ids.as_ref().is_none_or(|ids| ids.contains(&d.public.id)))
            .filter(|d| {
                p.get("InstanceId")
                    .is_none_or(|i| *i == d.public.instance || d.shared.contains_key(i))
            })
            .filter(|d| p.get("ZoneId").is_none_or(|z| *z == d.public.zone))
            .filter(|d| {
                p.get("Status")
                    .is_none_or(|s| s == "All" || *s == d.public.status)
            })
            .filter(|d| tags.iter().all(|(k, v)| d.public.tags.get(k) == Some(v)))
            .collect();
        let total = matching.len();
        let values: Vec<Value> = matching.iter().map(|d| self.disk_json(d)).collect();
        let (items, next) = page(values, p, 10, 500)?;
        Ok(json!({
            "TotalCount": total,
            "NextToken": next,
            "Disks": {"Disk": items},
        }))
    }

    fn resize_disk(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let new_size: i64 = p
            .get("NewSize")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                err(
                    400,
                    "MissingParameter",
                    "NewSize is mandatory for this action.",
                )
            })?;
        let online = p.get("Type").is_some_and(|t| t == "online");
        let delay = self.config.delays.resize;
        let disk = self.disk_mut(p)?;
        if disk.pending.is_some() {
            return Err(err(403, "IncorrectDiskStatus", "The disk is changing."));
        }
        if new_size <= disk.public.size_gib {
            return Err(err(
                403,
                "InvalidDiskSize.NotSupported",
                "The new size must be larger.",
            ));
        }
        let (_, max) =
            size_range(&disk.public.category, &disk.public.performance_level).unwrap_or((0, 0));
        if new_size > max {
            return Err(err(
                403,
                "InvalidDiskSize.NotSupported",
                format!("At most {max} GiB."),
            ));
        }
        if disk.public.status == "In_use" && !online {
            return Err(err(
                403,
                "IncorrectDiskStatus",
                "An attached disk needs Type=online.",
            ));
        }
        disk.pending = Some((Instant::now() + delay, Change::Resized(new_size)));
        Ok(json!({"OrderId": ""}))
    }

    fn modify_disk_spec(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let delay = self.config.delays.modify;
        let disk = self.disk_mut(p)?;
        if disk.pending.is_some() {
            return Err(err(
                403,
                "InvalidStatus.DiskNotReady",
                "The disk is changing.",
            ));
        }
        let category = p.get("DiskCategory").cloned();
        let level = p.get("PerformanceLevel").cloned();
        let target_cat = category
            .clone()
            .unwrap_or_else(|| disk.public.category.clone());
        let target_level = level
            .clone()
            .unwrap_or_else(|| disk.public.performance_level.clone());
        let (min, max) = size_range(
            &target_cat,
            if target_cat == "cloud_essd" {
                &target_level
            } else {
                ""
            },
        )
        .ok_or_else(|| {
            err(
                403,
                "InvalidDiskCategory.NotSupported",
                "Unsupported target category.",
            )
        })?;
        if disk.public.size_gib < min || disk.public.size_gib > max {
            return Err(err(
                403,
                "OperationDenied.PerformanceLevelNotMatch",
                "The size does not fit the target.",
            ));
        }
        let iops =
            match p.get("ProvisionedIops") {
                None => None,
                Some(v) => Some(v.parse::<i64>().map_err(|_| {
                    err(400, "InvalidParameter", "ProvisionedIops is not a number.")
                })?),
            };
        disk.pending = Some((
            Instant::now() + delay,
            Change::Modified {
                category,
                level,
                iops,
            },
        ));
        Ok(json!({"TaskId": "t-fake", "OrderId": ""}))
    }

    fn create_snapshot(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let disk = self.disk_mut(p)?;
        if disk.public.status == "Creating" {
            return Err(err(
                403,
                "IncorrectDiskStatus.Initializing",
                "The disk is being created.",
            ));
        }
        let (disk_id, disk_size) = (disk.public.id.clone(), disk.public.size_gib);
        let id = self.new_id("s");
        let created = self.now();
        self.snapshots.insert(
            id.clone(),
            SnapshotState {
                id: id.clone(),
                name: p.get("SnapshotName").cloned().unwrap_or_default(),
                disk_id,
                disk_size,
                created,
                ready_at: Instant::now() + self.config.delays.snapshot,
                tags: tags_of(p),
            },
        );
        Ok(json!({"SnapshotId": id}))
    }

    fn delete_snapshot(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        let id = p.get("SnapshotId").ok_or_else(|| {
            err(
                400,
                "MissingParameter",
                "SnapshotId is mandatory for this action.",
            )
        })?;
        match self.snapshots.remove(id) {
            Some(_) => Ok(json!({})),
            None => Err(err(
                404,
                "InvalidSnapshotId.NotFound",
                "The specified snapshot does not exist.",
            )),
        }
    }

    fn describe_snapshots(&mut self, p: &BTreeMap<String, String>) -> ActionResult {
        self.region_check(p)?;
        let ids = json_ids(p.get("SnapshotIds"))?;
        let tags = tags_of(p);
        let now = Instant::now();
        let values: Vec<Value> = self
            .snapshots
            .values()
            .filter(|s| ids.as_ref().is_none_or(|ids| ids.contains(&s.id)))
            .filter(|s| p.get("DiskId").is_none_or(|d| *d == s.disk_id))
            .filter(|s| tags.iter().all(|(k, v)| s.tags.get(k) == Some(v)))
            .map(|s| {
                let ready = s.ready_at <= now;
                json!({
                    "SnapshotId": s.id,
                    "SnapshotName": s.name,
                    "Status": if ready { "accomplished" } else { "progressing" },
                    "Progress": if ready { "100%" } else { "50%" },
                    "SourceDiskId": s.disk_id,
                    "SourceDiskSize": s.disk_size.to_string(),
                    "CreationTime": humantime::format_rfc3339_seconds(s.created).to_string(),
                    "Available": ready,
                    "Tags": tag_json(&s.tags),
                })
            })
            .collect();
        let total = values.len();
        let (items, next) = page(values, p, 10, 100)?;
        Ok(json!({
            "TotalCount": total,
            "NextToken": next,
            "Snapshots": {"Snapshot": items},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let mut m = BTreeMap::new();
        decode_pairs("a=%5B%22d-1%22%5D&b=x+y&c=%E6%95%B0&d", &mut m);
        assert_eq!(m["a"], "[\"d-1\"]");
        assert_eq!(m["b"], "x y");
        assert_eq!(m["c"], "数");
        assert_eq!(m["d"], "");
    }

    #[test]
    fn pagination_tokens() {
        let p: BTreeMap<String, String> = [("MaxResults".to_owned(), "10".to_owned())].into();
        let (items, next) = page((0..25).collect::<Vec<_>>(), &p, 10, 500).unwrap();
        assert_eq!(items.len(), 10);
        let mut p2 = p.clone();
        p2.insert("NextToken".into(), next);
        let (items, next) = page((0..25).collect::<Vec<_>>(), &p2, 10, 500).unwrap();
        assert_eq!(items[0], 10);
        assert!(!next.is_empty());
        p2.insert("NextToken".into(), "bogus".into());
        assert!(page((0..25).collect::<Vec<_>>(), &p2, 10, 500).is_err());
        let p3: BTreeMap<String, String> = [("MaxResults".to_owned(), "501".to_owned())].into();
        assert!(page((0..25).collect::<Vec<_>>(), &p3, 10, 500).is_err());
    }
}

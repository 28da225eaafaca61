//! [`DylibProvider`]: a loaded instance behind the `Provider` trait.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use omnidisk_provider_api::ffi::abi::{
    AbiVersion, BorrowedBytes, CallFn, FreeBufFn, Method, PluginBuf, StartFn, Status,
};
use omnidisk_provider_api::ffi::decode_abi_error;
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError, Result};
use prost::Message;
use tokio::sync::oneshot;

use super::library::Created;

/// The dylib functions and instance pointer, copied to each call.
#[derive(Clone, Copy)]
struct RawInstance {
    call: CallFn,
    start: Option<StartFn>,
    free_buf: FreeBufFn,
    instance: *const c_void,
}

// SAFETY: the ABI makes instances callable from many threads at once, and
// the library is never unloaded, so the pointers stay valid everywhere.
unsafe impl Send for RawInstance {}
// SAFETY: as above; the struct is immutable.
unsafe impl Sync for RawInstance {}

/// The largest buffer the host reads from a library. Messages of the ABI are
/// small; a larger length is a library bug, refused before any slice is
/// made of it.
pub(super) const MAX_BUFFER_LEN: usize = 64 << 20;

/// Checks a pointer and length a library handed over before the host makes
/// a slice of them: why they cannot be read, or `None`.
pub(super) fn unreadable(ptr_is_null: bool, len: usize) -> Option<String> {
    if ptr_is_null && len != 0 {
        Some(format!("a null buffer claiming {len} bytes"))
    } else if len > MAX_BUFFER_LEN {
        Some(format!(
            "a buffer of {len} bytes, more than the {MAX_BUFFER_LEN} the driver accepts"
        ))
    } else {
        None
    }
}

/// What a call produced, before it is turned into a result.
enum Outcome<T> {
    Response(T),
    Malformed(prost::DecodeError),
    Failed(Status, ProviderError),
    UnknownMethod,
    UnknownStatus(u32),
    /// The library's buffer could not be read (see [`unreadable`]).
    BadBuffer(String),
}

impl RawInstance {
    /// Calls `method` through the blocking entry point (all a 1.0 dylib
    /// has). Blocks the calling thread.
    fn call<T: Message + Default>(self, method: Method, request: &[u8]) -> Outcome<T> {
        let mut out = PluginBuf::EMPTY;
        // SAFETY: the instance is live for the process, `request` outlives
        // the call, `out` is a valid slot; `call` catches its panics.
        let status = unsafe {
            (self.call)(
                self.instance,
                method as u32,
                BorrowedBytes::new(request),
                &mut out,
            )
        };
        self.outcome(status, out)
    }

    /// Decodes what the dylib answered while its buffer is still borrowed,
    /// then returns the buffer to the dylib.
    fn outcome<T: Message + Default>(self, status: u32, out: PluginBuf) -> Outcome<T> {
        let outcome = if let Some(reason) = unreadable(out.ptr.is_null(), out.len) {
            Outcome::BadBuffer(reason)
        } else {
            let bytes: &[u8] = if out.len == 0 {
                &[]
            } else {
                // SAFETY: non-null and at most MAX_BUFFER_LEN (checked
                // above); the dylib handed over `len` initialised bytes that
                // stay valid until they are freed below.
                unsafe { std::slice::from_raw_parts(out.ptr, out.len) }
            };
            match Status::from_u32(status) {
                Some(Status::Ok) => match T::decode(bytes) {
                    Ok(response) => Outcome::Response(response),
                    Err(e) => Outcome::Malformed(e),
                },
                Some(Status::UnknownMethod) => Outcome::UnknownMethod,
                Some(other) => Outcome::Failed(other, decode_abi_error(bytes)),
                None => Outcome::UnknownStatus(status),
            }
        };
        // SAFETY: returned to its allocator exactly once, after its last use
        // (an unreadable one too: it is the dylib's to make sense of).
        unsafe { (self.free_buf)(out) };
        outcome
    }
}

/// The answer to a pending call, as the dylib's completion hands it over.
struct Answer {
    status: u32,
    buf: PluginBuf,
}

// SAFETY: the buffer is plain memory of the dylib, freed through its
// thread-safe `free_buf` by whichever thread ends up owning it.
unsafe impl Send for Answer {}

/// A pending call: where its answer goes, and the count of unfinished calls
/// it holds a place in until the dylib answers.
struct PendingCall {
    answer: oneshot::Sender<Answer>,
    free_buf: FreeBufFn,
    _unfinished: Unfinished,
    /// Set while the first poll runs on a driver executor thread: since
    /// when, and whose calls to move off that thread if it takes too long.
    polling: Option<(Instant, Arc<FirstPolls>)>,
}

/// A first poll that keeps a driver thread this long marks its library as
/// one that blocks: its calls then start on tokio's blocking pool.
const SLOW_FIRST_POLL: Duration = Duration::from_millis(50);

/// How often the watchdog looks for first polls running too long.
const WATCH_EVERY: Duration = Duration::from_millis(25);

/// Where one instance's calls run their first poll: on the caller's thread
/// (what keeps a dylib call within a few microseconds of a compiled-in one)
/// until one first poll has been seen blocking its thread, then on the
/// blocking pool, where the call timeout bounds even a blocked first poll.
struct FirstPolls {
    offloaded: AtomicBool,
    library: PathBuf,
    instance: String,
}

impl FirstPolls {
    fn offload(&self, took: Duration) {
        if !self.offloaded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                library = %self.library.display(),
                provider_instance = %self.instance,
                first_poll_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                "provider library blocked a driver thread in the first poll of a call; \
                 its calls start on the blocking pool from now on"
            );
        }
    }
}

/// Starts, once per process, the thread that moves a library's calls to the
/// blocking pool as soon as one of its first polls has run for
/// [`SLOW_FIRST_POLL`], so calls arriving while it blocks do not block too.
fn watch_first_polls() {
    static WATCHDOG: OnceLock<()> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("omnidisk-first-poll-watch".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(WATCH_EVERY);
                    let now = Instant::now();
                    let slow: Vec<(Duration, Arc<FirstPolls>)> = pending_calls()
                        .values()
                        .filter_map(|call| call.polling.as_ref())
                        .filter(|(since, polls)| {
                            now.duration_since(*since) >= SLOW_FIRST_POLL
                                && !polls.offloaded.load(Ordering::Relaxed)
                        })
                        .map(|(since, polls)| (now.duration_since(*since), Arc::clone(polls)))
                        .collect();
                    for (took, polls) in slow {
                        polls.offload(took);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(
                %error,
                "cannot start the first-poll watchdog; a blocking first poll is only \
                 noticed when it returns"
            );
        }
    });
}

/// Calls handed to `start` and not yet answered, by the token passed to the
/// dylib as their `context`. The context is only ever a key: a completion
/// with a token that is not here (a second completion, one after `start`
/// already answered, or one the dylib made up) is ignored, so a library
/// cannot make the host free or reuse anything twice.
static PENDING: LazyLock<Mutex<HashMap<usize, PendingCall>>> = LazyLock::new(Default::default);

/// The next token; 0 is never handed out.
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);

fn pending_calls() -> std::sync::MutexGuard<'static, HashMap<usize, PendingCall>> {
    // A panic while holding the lock cannot leave the map half-updated.
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a call about to start and returns its token.
fn register(call: PendingCall) -> usize {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    pending_calls().insert(token, call);
    token
}

/// Removes a call: `None` if it was already answered (or never existed).
fn unregister(token: usize) -> Option<PendingCall> {
    pending_calls().remove(&token)
}

/// The [`CompleteFn`] the host hands to `start`. `context` is a token from
/// [`register`], never dereferenced; each token is answered at most once.
unsafe extern "C" fn complete_call(context: *mut c_void, status: u32, response: PluginBuf) {
    // A panicking subscriber must not unwind into the dylib (that aborts).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let Some(pending) = unregister(context.addr()) else {
            // Not ours to free: it may be a buffer the host already freed.
            tracing::warn!(
                token = context.addr(),
                status,
                "a provider library completed a call that is not pending (answered twice, \
                 or after answering at once); the completion is ignored"
            );
            return;
        };
        let free_buf = pending.free_buf;
        if let Err(unwanted) = pending.answer.send(Answer {
            status,
            buf: response,
        }) {
            // The caller gave up (timeout): the buffer still goes back.
            // SAFETY: returned to its allocator exactly once.
            unsafe { free_buf(unwanted.buf) };
        }
    }));
}

/// How [`begin`] left a call.
enum Begun<T> {
    /// It answered at once.
    Finished(Outcome<T>),
    /// It goes on in the dylib; its answer arrives here.
    Pending(oneshot::Receiver<Answer>),
}

/// The synchronous part of a 1.1 call: registers it, calls `start` on this
/// thread and returns the outcome if it finished at once. `inline` says the
/// thread is a driver executor thread, which the watchdog keeps an eye on.
fn begin<Resp: Message + Default>(
    raw: RawInstance,
    start: StartFn,
    method: Method,
    request: &[u8],
    unfinished: Unfinished,
    polls: &Arc<FirstPolls>,
    inline: bool,
) -> Begun<Resp> {
    let (answer, answered) = oneshot::channel();
    let token = register(PendingCall {
        answer,
        free_buf: raw.free_buf,
        _unfinished: unfinished,
        polling: inline.then(|| (Instant::now(), Arc::clone(polls))),
    });
    let mut out = PluginBuf::EMPTY;
    // SAFETY: the instance is live for the process, `request` outlives the
    // call, `out` is a valid slot; the context is a plain token that
    // `complete_call` only looks up; `start` catches its panics.
    let status = unsafe {
        start(
            raw.instance,
            method as u32,
            BorrowedBytes::new(request),
            &mut out,
            Some(complete_call),
            std::ptr::without_provenance_mut(token),
        )
    };
    if status == Status::Pending as u32 {
        if inline && let Some(call) = pending_calls().get_mut(&token) {
            call.polling = None;
        }
        return Begun::Pending(answered);
    }
    // Answered at once: a later completion of this token is ignored.
    if unregister(token).is_none() {
        tracing::warn!(
            library = %polls.library.display(),
            provider_instance = %polls.instance,
            method = method.name(),
            "provider library both completed a call and answered it at once; \
             the completion is ignored"
        );
    }
    Begun::Finished(raw.outcome(status, out))
}

/// A provider instance living in a dylib. A call starts on the calling
/// thread and, if it has to wait, goes on on the dylib's runtime (ABI 1.1;
/// a 1.0 dylib's calls block a thread of tokio's blocking pool instead).
/// Either way it has a timeout; a call that overruns it is abandoned and
/// left to finish, or not, inside the dylib.
pub struct DylibProvider {
    raw: RawInstance,
    info: ProviderInfo,
    library: PathBuf,
    instance: String,
    version: AbiVersion,
    sdk_version: String,
    call_timeout: Duration,
    /// Calls started and not yet returned by the dylib, abandoned ones
    /// included: a growing number in timeout errors points at a hung dylib.
    unfinished: Arc<AtomicUsize>,
    /// Where calls run their first poll.
    first_polls: Arc<FirstPolls>,
}

impl std::fmt::Debug for DylibProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DylibProvider")
            .field("library", &self.library)
            .field("instance", &self.instance)
            .field("kind", &self.info.kind)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Decrements the unfinished-call count when the dylib returns.
struct Unfinished(Arc<AtomicUsize>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DylibProvider {
    /// Wraps a created instance and reads its `info` once.
    pub(super) async fn new(
        created: Created,
        library: PathBuf,
        instance: String,
        call_timeout: Duration,
    ) -> Result<Self> {
        let first_polls = Arc::new(FirstPolls {
            offloaded: AtomicBool::new(false),
            library: library.clone(),
            instance: instance.clone(),
        });
        let mut provider = Self {
            raw: RawInstance {
                call: created.call,
                start: created.start,
                free_buf: created.free_buf,
                instance: created.instance,
            },
            info: ProviderInfo::default(),
            library,
            instance,
            version: created.version,
            sdk_version: created.sdk_version,
            call_timeout,
            unfinished: Arc::default(),
            first_polls,
        };
        if provider.raw.start.is_some() {
            watch_first_polls();
        }
        provider.info = provider.invoke(Method::Info, &Empty {}).await?;
        Ok(provider)
    }

    /// The ABI version the dylib reported.
    pub fn abi_version(&self) -> AbiVersion {
        self.version
    }

    /// The provider-api version the dylib was built with.
    pub fn sdk_version(&self) -> &str {
        &self.sdk_version
    }

    async fn invoke<Req, Resp>(&self, method: Method, request: &Req) -> Result<Resp>
    where
        Req: Message,
        Resp: Message + Default + Send + 'static,
    {
        let bytes = request.encode_to_vec();
        let outcome = match self.raw.start {
            Some(start) => self.start(start, method, bytes).await?,
            None => self.call_blocking(method, bytes).await?,
        };
        self.finish(method, outcome)
    }

    /// A place in the count of unfinished calls, until dropped.
    fn unfinished(&self) -> Unfinished {
        self.unfinished.fetch_add(1, Ordering::Relaxed);
        Unfinished(Arc::clone(&self.unfinished))
    }

    /// ABI 1.1: the call starts on this thread (or, for a library seen
    /// blocking in a first poll, on the blocking pool); if it has to wait,
    /// it goes on in the dylib and answers through [`complete_call`].
    async fn start<Resp: Message + Default + Send + 'static>(
        &self,
        start: StartFn,
        method: Method,
        request: Vec<u8>,
    ) -> Result<Outcome<Resp>> {
        let began = Instant::now();
        let deadline = tokio::time::Instant::from_std(began) + self.call_timeout;
        let begun = if self.first_polls.offloaded.load(Ordering::Relaxed) {
            let (raw, polls, unfinished) =
                (self.raw, Arc::clone(&self.first_polls), self.unfinished());
            let task = tokio::task::spawn_blocking(move || {
                begin::<Resp>(raw, start, method, &request, unfinished, &polls, false)
            });
            match tokio::time::timeout_at(deadline, task).await {
                Err(_) => return Err(self.abandoned(method)),
                Ok(Err(join)) => {
                    return Err(ProviderError::internal(format!(
                        "the thread starting {method} of provider library {} failed",
                        self.library.display()
                    ))
                    .with_source(join));
                }
                Ok(Ok(begun)) => begun,
            }
        } else {
            let begun = begin::<Resp>(
                self.raw,
                start,
                method,
                &request,
                self.unfinished(),
                &self.first_polls,
                true,
            );
            let took = began.elapsed();
            if took >= SLOW_FIRST_POLL {
                self.first_polls.offload(took);
            }
            if took >= self.call_timeout {
                // Whatever it answered is dropped (and its buffer freed).
                return Err(self.abandoned(method));
            }
            begun
        };
        let answered = match begun {
            Begun::Finished(outcome) => return Ok(outcome),
            Begun::Pending(answered) => answered,
        };
        match tokio::time::timeout_at(deadline, answered).await {
            Err(_) => Err(self.abandoned(method)),
            Ok(Err(_)) => Err(ProviderError::internal(format!(
                "provider library {} dropped {method} without an answer",
                self.library.display()
            ))),
            Ok(Ok(answer)) => Ok(self.raw.outcome(answer.status, answer.buf)),
        }
    }

    /// ABI 1.0: the call blocks a thread of tokio's blocking pool.
    async fn call_blocking<Resp: Message + Default + Send + 'static>(
        &self,
        method: Method,
        request: Vec<u8>,
    ) -> Result<Outcome<Resp>> {
        let raw = self.raw;
        let unfinished = self.unfinished();
        let task = tokio::task::spawn_blocking(move || {
            let _unfinished = unfinished;
            raw.call::<Resp>(method, &request)
        });
        match tokio::time::timeout(self.call_timeout, task).await {
            Err(_) => Err(self.abandoned(method)),
            Ok(Err(join)) => Err(ProviderError::internal(format!(
                "the thread calling {method} of provider library {} failed",
                self.library.display()
            ))
            .with_source(join)),
            Ok(Ok(outcome)) => Ok(outcome),
        }
    }

    /// The error for a call that overran the timeout, which is left to
    /// finish (or not) on its own.
    fn abandoned(&self, method: Method) -> ProviderError {
        let stuck = self.unfinished.load(Ordering::Relaxed);
        tracing::warn!(
            library = %self.library.display(),
            provider_instance = %self.instance,
            method = method.name(),
            unfinished_calls = stuck,
            "provider library call timed out and was abandoned"
        );
        ProviderError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "provider library {} (instance {}) did not finish {method} within {:?}; \
                 the call was abandoned ({stuck} calls into it have not returned)",
                self.library.display(),
                self.instance,
                self.call_timeout
            ),
        )
    }

    fn finish<Resp>(&self, method: Method, outcome: Outcome<Resp>) -> Result<Resp> {
        match outcome {
            Outcome::Response(response) => Ok(response),
            Outcome::Failed(Status::Error, error) => Err(error),
            Outcome::Failed(Status::Panicked, error) => Err(ProviderError::internal(format!(
                "{method} of provider library {} (instance {}): {}",
                self.library.display(),
                self.instance,
                error.message()
            ))),
            Outcome::Failed(status, error) => Err(ProviderError::internal(format!(
                "provider library {} refused {method} ({status:?}): {}",
                self.library.display(),
                error.message()
            ))),
            Outcome::Malformed(e) => Err(ProviderError::internal(format!(
                "malformed response from provider library {} to {method}",
                self.library.display()
            ))
            .with_source(e)),
            Outcome::UnknownMethod => Err(ProviderError::unimplemented(format!(
                "provider library {} (ABI {}) does not know {method}: it predates this driver",
                self.library.display(),
                self.version
            ))),
            Outcome::UnknownStatus(status) => Err(ProviderError::internal(format!(
                "provider library {} answered {method} with unknown status {status}",
                self.library.display()
            ))),
            Outcome::BadBuffer(reason) => Err(ProviderError::internal(format!(
                "provider library {} (instance {}) answered {method} with {reason}",
                self.library.display(),
                self.instance
            ))),
        }
    }
}

#[async_trait]
impl Provider for DylibProvider {
    fn info(&self) -> ProviderInfo {
        self.info.clone()
    }

    async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume> {
        self.invoke(Method::CreateVolume, &req).await
    }

    async fn delete_volume(&self, req: VolumeRef) -> Result<()> {
        self.invoke::<_, Empty>(Method::DeleteVolume, &req)
            .await
            .map(drop)
    }

    async fn get_volume(&self, req: VolumeRef) -> Result<VolumeStatus> {
        self.invoke(Method::GetVolume, &req).await
    }

    async fn list_volumes(&self, req: ListRequest) -> Result<ListVolumesResponse> {
        self.invoke(Method::ListVolumes, &req).await
    }

    async fn expand_volume(&self, req: ExpandVolumeRequest) -> Result<ExpandVolumeResponse> {
        self.invoke(Method::ExpandVolume, &req).await
    }

    async fn modify_volume(&self, req: ModifyVolumeRequest) -> Result<()> {
        self.invoke::<_, Empty>(Method::ModifyVolume, &req)
            .await
            .map(drop)
    }

    async fn attach_volume(&self, req: AttachRequest) -> Result<AttachResponse> {
        self.invoke(Method::AttachVolume, &req).await
    }

    async fn detach_volume(&self, req: DetachRequest) -> Result<()> {
        self.invoke::<_, Empty>(Method::DetachVolume, &req)
            .await
            .map(drop)
    }

    async fn create_snapshot(&self, req: CreateSnapshotRequest) -> Result<Snapshot> {
        self.invoke(Method::CreateSnapshot, &req).await
    }

    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<()> {
        self.invoke::<_, Empty>(Method::DeleteSnapshot, &req)
            .await
            .map(drop)
    }

    async fn get_snapshot(&self, req: SnapshotRef) -> Result<Snapshot> {
        self.invoke(Method::GetSnapshot, &req).await
    }

    async fn list_snapshots(&self, req: ListSnapshotsRequest) -> Result<ListSnapshotsResponse> {
        self.invoke(Method::ListSnapshots, &req).await
    }

    async fn create_group_snapshot(
        &self,
        req: CreateGroupSnapshotRequest,
    ) -> Result<GroupSnapshot> {
        self.invoke(Method::CreateGroupSnapshot, &req).await
    }

    async fn delete_group_snapshot(&self, req: GroupSnapshotRef) -> Result<()> {
        self.invoke::<_, Empty>(Method::DeleteGroupSnapshot, &req)
            .await
            .map(drop)
    }

    async fn get_group_snapshot(&self, req: GroupSnapshotRef) -> Result<GroupSnapshot> {
        self.invoke(Method::GetGroupSnapshot, &req).await
    }

    async fn get_capacity(&self, req: CapacityRequest) -> Result<CapacityResponse> {
        self.invoke(Method::GetCapacity, &req).await
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        self.invoke(Method::NodeInfo, &Empty {}).await
    }

    async fn find_device(&self, req: FindDeviceRequest) -> Result<FindDeviceResponse> {
        self.invoke(Method::FindDevice, &req).await
    }

    async fn volume_condition(&self, req: VolumeRef) -> Result<VolumeCondition> {
        self.invoke(Method::VolumeCondition, &req).await
    }
}

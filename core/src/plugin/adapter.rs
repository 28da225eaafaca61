//! [`DylibProvider`]: a loaded instance behind the `Provider` trait.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// What a call produced, before it is turned into a result.
enum Outcome<T> {
    Response(T),
    Malformed(prost::DecodeError),
    Failed(Status, ProviderError),
    UnknownMethod,
    UnknownStatus(u32),
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
        let bytes: &[u8] = if out.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the dylib handed over `len` initialised bytes that stay
            // valid until they are freed below.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }
        };
        let outcome = match Status::from_u32(status) {
            Some(Status::Ok) => match T::decode(bytes) {
                Ok(response) => Outcome::Response(response),
                Err(e) => Outcome::Malformed(e),
            },
            Some(Status::UnknownMethod) => Outcome::UnknownMethod,
            Some(other) => Outcome::Failed(other, decode_abi_error(bytes)),
            None => Outcome::UnknownStatus(status),
        };
        // SAFETY: returned to its allocator exactly once, after its last use.
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

/// The context of a pending call: where its answer goes, and the count of
/// unfinished calls it holds a place in until the dylib answers.
struct PendingCall {
    answer: oneshot::Sender<Answer>,
    free_buf: FreeBufFn,
    _unfinished: Unfinished,
}

/// The [`CompleteFn`] the host hands to `start`.
///
/// # Safety
///
/// `context` is a `Box<PendingCall>` turned into a pointer by
/// `DylibProvider::start`, passed here once.
unsafe extern "C" fn complete_call(context: *mut c_void, status: u32, response: PluginBuf) {
    // SAFETY: as the function's contract says; this takes the box back.
    let pending = unsafe { Box::from_raw(context.cast::<PendingCall>()) };
    let free_buf = pending.free_buf;
    if let Err(unwanted) = pending.answer.send(Answer {
        status,
        buf: response,
    }) {
        // The caller gave up (timeout): the buffer still goes back.
        // SAFETY: returned to its allocator exactly once.
        unsafe { free_buf(unwanted.buf) };
    }
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
        };
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
            Some(start) => self.start(start, method, &bytes).await?,
            None => self.call_blocking(method, bytes).await?,
        };
        self.finish(method, outcome)
    }

    /// A place in the count of unfinished calls, until dropped.
    fn unfinished(&self) -> Unfinished {
        self.unfinished.fetch_add(1, Ordering::Relaxed);
        Unfinished(Arc::clone(&self.unfinished))
    }

    /// ABI 1.1: the call starts on this thread; if it has to wait, it goes
    /// on in the dylib and answers through [`complete_call`].
    async fn start<Resp: Message + Default>(
        &self,
        start: StartFn,
        method: Method,
        request: &[u8],
    ) -> Result<Outcome<Resp>> {
        let answered = match self.begin(start, method, request) {
            Ok(finished) => return Ok(finished),
            Err(answered) => answered,
        };
        match tokio::time::timeout(self.call_timeout, answered).await {
            Err(_) => Err(self.abandoned(method)),
            Ok(Err(_)) => Err(ProviderError::internal(format!(
                "provider library {} dropped {method} without an answer",
                self.library.display()
            ))),
            Ok(Ok(answer)) => Ok(self.raw.outcome(answer.status, answer.buf)),
        }
    }

    /// The synchronous part of [`Self::start`]: the outcome if the call
    /// finished at once, else where its answer will arrive.
    fn begin<Resp: Message + Default>(
        &self,
        start: StartFn,
        method: Method,
        request: &[u8],
    ) -> std::result::Result<Outcome<Resp>, oneshot::Receiver<Answer>> {
        let (answer, answered) = oneshot::channel();
        let context = Box::into_raw(Box::new(PendingCall {
            answer,
            free_buf: self.raw.free_buf,
            _unfinished: self.unfinished(),
        }));
        let mut out = PluginBuf::EMPTY;
        // SAFETY: the instance is live for the process, `request` outlives
        // the call, `out` is a valid slot, and `context` stays valid until
        // `complete_call` takes it back; `start` catches its panics.
        let status = unsafe {
            start(
                self.raw.instance,
                method as u32,
                BorrowedBytes::new(request),
                &mut out,
                Some(complete_call),
                context.cast::<c_void>(),
            )
        };
        if status == Status::Pending as u32 {
            return Err(answered);
        }
        // Finished here: the dylib will not call back, the context is ours.
        // SAFETY: made by `Box::into_raw` above and not handed on.
        drop(unsafe { Box::from_raw(context) });
        Ok(self.raw.outcome(status, out))
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

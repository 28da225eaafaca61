//! Export side: the functions behind the table that
//! [`export_provider!`](crate::export_provider) hands the host.
//!
//! Each dylib has its own copy of this module (and of its statics), so the
//! one exported factory lives in a per-dylib global. Every function that the
//! host can call catches panics: since Rust 1.81 an unwind leaving an
//! `extern "C"` function aborts the whole driver.

use std::any::Any;
use std::ffi::c_void;
use std::future::Future;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use prost::Message;
use tokio::runtime::Runtime;
use tracing::Dispatch;

use super::abi::{
    ABI_MAJOR, ABI_MINOR, AbiVersion, BorrowedBytes, CompleteFn, HostApi, Method, PluginBuf,
    ProviderApi, StartFn, Status, read_table,
};
use super::log::host_dispatch;
use crate::error::ProviderError;
use crate::provider::{Provider, ProviderFactory};
use crate::types::{AbiError, Empty, InitRequest};

/// Rewrites an encoded response before it is handed to the host. Exists only
/// so the ABI test plugins can send malformed bytes; never use it otherwise.
#[doc(hidden)]
pub type ResponseHook = fn(instance: &str, method: Method, response: Vec<u8>) -> Vec<u8>;

/// A breach of the protocol a test dylib commits on purpose, so the host's
/// defences can be tested. Never use it otherwise.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// Behave.
    None,
    /// Complete a pending call, then complete it again with the same buffer.
    CompleteTwice,
    /// Answer at once, then also complete the call with the same buffer.
    CompleteAfterAnswer,
    /// Answer at once with a null buffer that claims 16 bytes.
    NullBuffer,
    /// Answer at once with a buffer claiming more than the host accepts.
    OversizedBuffer,
}

/// Chooses the [`Abuse`] of a call; for the ABI test plugins only.
#[doc(hidden)]
pub type AbuseHook = fn(instance: &str, method: Method) -> Abuse;

/// What [`Abuse::OversizedBuffer`] points at: never read by a correct host,
/// never freed by `free_buf`.
static OVERSIZED_MARKER: u8 = 0;

/// How a dylib exports itself. [`ExportOptions::CURRENT`] is what
/// `export_provider!` uses; the other settings exist for the ABI's own tests
/// (a newer minor version, corrupted responses).
#[derive(Clone, Copy)]
pub struct ExportOptions {
    /// The version the dylib claims. A minor above this build's makes the
    /// table larger than this build knows, as a newer dylib's would be.
    pub version: AbiVersion,
    /// Test hook, see [`ResponseHook`].
    #[doc(hidden)]
    pub response_hook: Option<ResponseHook>,
    /// Test hook: a `struct_size` to declare instead of the real one (for
    /// tables whose size ends inside a field). Never set it otherwise.
    #[doc(hidden)]
    pub declared_table_size: Option<usize>,
    /// Test hook, see [`Abuse`].
    #[doc(hidden)]
    pub abuse_hook: Option<AbuseHook>,
}

impl ExportOptions {
    /// The options of a normal provider dylib.
    pub const CURRENT: ExportOptions = ExportOptions {
        version: AbiVersion::CURRENT,
        response_hook: None,
        declared_table_size: None,
        abuse_hook: None,
    };
}

/// Worker threads of each instance's own runtime. Calls start on the host's
/// calling thread; workers drive the calls that had to wait, what the
/// provider spawns, and its I/O and timers.
const WORKER_THREADS: usize = 2;

/// The table as a newer minor version would lay it out: one more field.
#[repr(C)]
struct GrownTable {
    api: ProviderApi,
    field_from_the_future: u64,
}

struct Exported {
    factory: ProviderFactory,
    options: ExportOptions,
    table: GrownTable,
}

// SAFETY: the table is built once and never mutated; its pointers reference
// static strings and functions of this dylib, which is never unloaded.
unsafe impl Sync for Exported {}
// SAFETY: as above.
unsafe impl Send for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

impl Exported {
    fn new(factory: ProviderFactory, options: ExportOptions) -> Self {
        let newer = options.version.major == ABI_MAJOR && options.version.minor > ABI_MINOR;
        // A 1.0 table ends after `call`, as a dylib built for 1.0 hands out.
        let struct_size = match options.version.minor {
            _ if newer => size_of::<GrownTable>(),
            0 => ProviderApi::V1_0_SIZE,
            _ => size_of::<ProviderApi>(),
        };
        let struct_size = options.declared_table_size.unwrap_or(struct_size);
        Self {
            factory,
            options,
            table: GrownTable {
                api: ProviderApi {
                    struct_size,
                    version: options.version,
                    factory_kind: BorrowedBytes::new(factory.kind.as_bytes()),
                    sdk_version: BorrowedBytes::new(env!("CARGO_PKG_VERSION").as_bytes()),
                    free_buf: Some(free_buf),
                    create: Some(create),
                    call: Some(call),
                    start: (options.version.minor >= 1).then_some(start as StartFn),
                },
                field_from_the_future: u64::MAX,
            },
        }
    }
}

/// The body of the exported entry symbol: sets the dylib up once and returns
/// its table, or null if that panicked.
pub fn entry(factory: ProviderFactory, options: ExportOptions) -> *const ProviderApi {
    catch_unwind(|| {
        let exported = EXPORTED.get_or_init(|| Exported::new(factory, options));
        &exported.table.api as *const ProviderApi
    })
    .unwrap_or(std::ptr::null())
}

/// Why an export did not produce a response.
struct Failure {
    status: Status,
    error: Option<ProviderError>,
}

impl Failure {
    fn provider(error: ProviderError) -> Self {
        Self {
            status: Status::Error,
            error: Some(error),
        }
    }

    fn with_status(status: Status, message: String) -> Self {
        Self {
            status,
            error: Some(ProviderError::internal(message)),
        }
    }

    fn panicked(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_owned());
        Self::with_status(Status::Panicked, format!("provider panicked: {what}"))
    }

    fn into_buf(self) -> PluginBuf {
        match self.error {
            Some(error) => buf_from_vec(
                AbiError {
                    kind: error.kind() as u32,
                    message: error.full_message(),
                }
                .encode_to_vec(),
            ),
            None => PluginBuf::EMPTY,
        }
    }
}

/// Runs `f`, turning a panic into a [`Status::Panicked`] failure.
fn guard<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    // AssertUnwindSafe: after a panic the instance may hold half-updated
    // state; the provider's own types (poisoned mutexes and the like) decide
    // what that means, exactly as after a panic in a statically linked task.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(Failure::panicked(payload)))
}

fn buf_from_vec(bytes: Vec<u8>) -> PluginBuf {
    if bytes.is_empty() {
        return PluginBuf::EMPTY;
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    PluginBuf {
        ptr: Box::into_raw(boxed).cast::<u8>(),
        len,
    }
}

unsafe extern "C" fn free_buf(buf: PluginBuf) {
    if buf.ptr.is_null() || std::ptr::eq(buf.ptr.cast_const(), &OVERSIZED_MARKER) {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: non-empty buffers handed to the host are only ever made by
        // `buf_from_vec` from a boxed slice of exactly `len` bytes, and the
        // host returns each one once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buf.ptr, buf.len)) });
    });
}

/// One provider instance: leaked on creation, so valid for the process.
struct Instance {
    name: String,
    provider: Arc<dyn Provider>,
    runtime: Runtime,
    dispatch: Dispatch,
    response_hook: Option<ResponseHook>,
    abuse_hook: Option<AbuseHook>,
}

impl Instance {
    fn abuse(&self, method: u32) -> Abuse {
        match (self.abuse_hook, Method::from_u32(method)) {
            (Some(hook), Some(method)) => hook(&self.name, method),
            _ => Abuse::None,
        }
    }
}

unsafe extern "C" fn create(
    host: *const HostApi,
    init: BorrowedBytes,
    instance_out: *mut *const c_void,
    error_out: *mut PluginBuf,
) -> u32 {
    if instance_out.is_null() || error_out.is_null() {
        return Status::BadArgument as u32;
    }
    // SAFETY: the host passes its HostApi (or null, which is checked) and
    // lends `init` for this call.
    let result = guard(|| unsafe { create_instance(host, init) });
    match result {
        Ok(instance) => {
            // SAFETY: checked non-null above; the host owns the slot.
            unsafe { instance_out.write(instance) };
            Status::Ok as u32
        }
        Err(failure) => {
            let status = failure.status;
            // SAFETY: checked non-null above; the host owns the slot.
            unsafe { error_out.write(failure.into_buf()) };
            status as u32
        }
    }
}

/// # Safety
///
/// `host` is null or a host table valid for the process; `init` is lent.
unsafe fn create_instance(
    host: *const HostApi,
    init: BorrowedBytes,
) -> Result<*const c_void, Failure> {
    if host.is_null() {
        return Err(Failure::with_status(
            Status::BadArgument,
            "the host table is null".into(),
        ));
    }
    // SAFETY: non-null host tables start with their size (checked next).
    let host_size = unsafe { host.cast::<usize>().read_unaligned() };
    if host_size < HostApi::V1_0_SIZE {
        return Err(Failure::with_status(
            Status::BadArgument,
            format!(
                "the host table has {host_size} bytes, fewer than the {} of ABI 1.0",
                HostApi::V1_0_SIZE
            ),
        ));
    }
    // SAFETY: the host table holds `host_size` bytes; HostApi is valid
    // zeroed (null pointers, `None` callback, zero numbers).
    let host = unsafe { read_table(host) };
    if host.version.major != ABI_MAJOR {
        return Err(Failure::with_status(
            Status::BadArgument,
            format!(
                "the host speaks ABI {}, this provider {ABI_MAJOR}.x",
                host.version
            ),
        ));
    }
    let Some(exported) = EXPORTED.get() else {
        return Err(Failure::with_status(
            Status::BadArgument,
            "create was called before the entry symbol".into(),
        ));
    };
    // SAFETY: the host lends `init` for the duration of this call.
    let init_bytes = unsafe { init.as_slice() };
    let init = InitRequest::decode(init_bytes).map_err(|e| {
        Failure::with_status(
            Status::BadRequest,
            format!("cannot decode the InitRequest: {e}"),
        )
    })?;

    let dispatch = host_dispatch(&host);
    // Threads this dylib spawns outside any runtime log through the first
    // instance; later calls keep the first one.
    let _ = tracing::dispatcher::set_global_default(dispatch.clone());
    let worker_dispatch = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name(format!("omnidisk-{}", exported.factory.kind))
        .enable_all()
        .on_thread_start(move || {
            // The guard would restore the previous default on drop; these
            // threads live as long as the runtime, which is never dropped.
            std::mem::forget(tracing::dispatcher::set_default(&worker_dispatch));
        })
        .build()
        .map_err(|e| {
            Failure::provider(
                ProviderError::internal("cannot start the provider's tokio runtime").with_source(e),
            )
        })?;
    let name = init.instance.clone();
    let provider = tracing::dispatcher::with_default(&dispatch, || {
        runtime.block_on((exported.factory.create)(init))
    })
    .map_err(Failure::provider)?;
    let instance = Box::new(Instance {
        name,
        provider,
        runtime,
        dispatch,
        response_hook: exported.options.response_hook,
        abuse_hook: exported.options.abuse_hook,
    });
    Ok(Box::into_raw(instance).cast_const().cast::<c_void>())
}

/// The instance behind a pointer the host passes back.
///
/// # Safety
///
/// `instance` is null or came from `create_instance`.
unsafe fn instance_ref(instance: *const c_void) -> Result<&'static Instance, Failure> {
    if instance.is_null() {
        return Err(Failure::with_status(
            Status::BadArgument,
            "the instance is null".into(),
        ));
    }
    // SAFETY: non-null instances come only from `create_instance`, which
    // leaks them (so 'static is true); `Instance` is Sync, so shared use from
    // many host threads is fine.
    Ok(unsafe { &*instance.cast::<Instance>() })
}

/// Writes a call's outcome the way the host reads it.
fn outcome(result: Result<Vec<u8>, Failure>) -> (Status, PluginBuf) {
    match result {
        Ok(response) => (Status::Ok, buf_from_vec(response)),
        Err(failure) => (failure.status, failure.into_buf()),
    }
}

unsafe extern "C" fn call(
    instance: *const c_void,
    method: u32,
    request: BorrowedBytes,
    response_out: *mut PluginBuf,
) -> u32 {
    if response_out.is_null() {
        return Status::BadArgument as u32;
    }
    let result = guard(|| {
        // SAFETY: the host passes back what `create` gave it.
        let instance = unsafe { instance_ref(instance) }?;
        // SAFETY: the host lends the request for the duration of the call.
        let reply = instance.reply(method, unsafe { request.as_slice() })?;
        instance.block_on(reply)
    });
    let (status, buf) = outcome(result);
    // SAFETY: checked non-null above; the host owns the slot.
    unsafe { response_out.write(buf) };
    status as u32
}

/// The host's completion callback and its context, moved to the thread
/// that finishes a pending call.
struct Completion {
    complete: CompleteFn,
    context: *mut c_void,
    abuse: Abuse,
}

// SAFETY: the ABI makes `complete` callable from any thread, and `context`
// is the host's to interpret; this side only passes it back, once.
unsafe impl Send for Completion {}

impl Completion {
    fn finish(self, result: Result<Vec<u8>, Failure>) {
        let (status, buf) = outcome(result);
        let again = PluginBuf {
            ptr: buf.ptr,
            len: buf.len,
        };
        // SAFETY: called exactly once per pending call with the context the
        // host gave; the host owns `buf` from here on.
        unsafe { (self.complete)(self.context, status as u32, buf) };
        if self.abuse == Abuse::CompleteTwice {
            // SAFETY: not safe at all: a test breach the host must ignore
            // (the buffer is already the host's, maybe freed).
            unsafe { (self.complete)(self.context, status as u32, again) };
        }
    }
}

unsafe extern "C" fn start(
    instance: *const c_void,
    method: u32,
    request: BorrowedBytes,
    response_out: *mut PluginBuf,
    complete: Option<CompleteFn>,
    context: *mut c_void,
) -> u32 {
    if response_out.is_null() {
        return Status::BadArgument as u32;
    }
    let started = guard(|| {
        let Some(complete) = complete else {
            return Err(Failure::with_status(
                Status::BadArgument,
                "the completion callback is null".into(),
            ));
        };
        // SAFETY: the host passes back what `create` gave it.
        let instance = unsafe { instance_ref(instance) }?;
        // SAFETY: the host lends the request for the duration of the call.
        let mut reply = CatchPanic(instance.reply(method, unsafe { request.as_slice() })?);
        // The first poll runs here, on the host's thread: a call that does
        // not wait (a lookup, a cached answer) never leaves it. Wakers from
        // this poll are dropped; the spawned task polls again at once and
        // registers its own.
        let first = instance
            .in_context(|| Pin::new(&mut reply).poll(&mut Context::from_waker(Waker::noop())));
        match first {
            Poll::Ready(result) => result.map(Some),
            Poll::Pending => {
                let completion = Completion {
                    complete,
                    context,
                    abuse: instance.abuse(method),
                };
                instance
                    .runtime
                    .spawn(async move { completion.finish(reply.await) });
                Ok(None)
            }
        }
    });
    let (status, buf) = match started {
        Ok(None) => (Status::Pending, PluginBuf::EMPTY),
        Ok(Some(response)) => outcome(Ok(response)),
        Err(failure) => outcome(Err(failure)),
    };
    // SAFETY: the host passes back what `create` gave it (checked by the
    // call above, which failed if it is null).
    let abuse = match unsafe { instance_ref(instance) } {
        Ok(instance) if status != Status::Pending => instance.abuse(method),
        _ => Abuse::None,
    };
    let buf = match (abuse, complete) {
        (Abuse::NullBuffer, _) => {
            // SAFETY: this side's own buffer, freed once.
            unsafe { free_buf(buf) };
            PluginBuf {
                ptr: std::ptr::null_mut(),
                len: 16,
            }
        }
        (Abuse::OversizedBuffer, _) => {
            // SAFETY: as above.
            unsafe { free_buf(buf) };
            PluginBuf {
                ptr: std::ptr::from_ref(&OVERSIZED_MARKER).cast_mut(),
                len: (64 << 20) + 1,
            }
        }
        (Abuse::CompleteAfterAnswer, Some(complete)) => {
            let completion = Completion {
                complete,
                context,
                abuse: Abuse::None,
            };
            let (addr, len) = (buf.ptr.expose_provenance(), buf.len);
            std::thread::spawn(move || {
                let completion = completion;
                std::thread::sleep(std::time::Duration::from_millis(20));
                let again = PluginBuf {
                    ptr: std::ptr::with_exposed_provenance_mut(addr),
                    len,
                };
                // SAFETY: not safe at all: a test breach the host must
                // ignore (the buffer is the host's, probably freed by now).
                unsafe { (completion.complete)(completion.context, status as u32, again) };
            });
            buf
        }
        _ => buf,
    };
    // SAFETY: checked non-null above; the host owns the slot.
    unsafe { response_out.write(buf) };
    status as u32
}

fn decode<M: Message + Default>(method: Method, bytes: &[u8]) -> Result<M, Failure> {
    M::decode(bytes).map_err(|e| {
        Failure::with_status(
            Status::BadRequest,
            format!("cannot decode the request of {method}: {e}"),
        )
    })
}

/// A call in progress: resolves to the encoded response (after the test
/// hook) or a failure, panics included.
type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, Failure>> + Send>>;

/// Turns a panic while polling a call into a [`Status::Panicked`]
/// failure, wherever the poll happens.
struct CatchPanic(Reply);

impl Future for CatchPanic {
    type Output = Result<Vec<u8>, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        // AssertUnwindSafe: see `guard`.
        catch_unwind(AssertUnwindSafe(|| inner.poll(cx)))
            .unwrap_or_else(|payload| Poll::Ready(Err(Failure::panicked(payload))))
    }
}

impl Instance {
    /// Runs `f` with this instance's runtime and log dispatch as the
    /// current ones, as on the runtime's own threads.
    fn in_context<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::dispatcher::with_default(&self.dispatch, || {
            let _runtime = self.runtime.enter();
            f()
        })
    }

    fn block_on(&self, reply: Reply) -> Result<Vec<u8>, Failure> {
        tracing::dispatcher::with_default(&self.dispatch, || {
            self.runtime.block_on(CatchPanic(reply))
        })
    }

    /// Decodes the request of `f` and wraps the call it starts.
    fn wrap<Req, Resp, Fut>(
        &'static self,
        method: Method,
        request: &[u8],
        f: impl FnOnce(Req) -> Fut,
    ) -> Result<Reply, Failure>
    where
        Req: Message + Default,
        Resp: Message,
        Fut: Future<Output = crate::Result<Resp>> + Send + 'static,
    {
        let call = f(decode::<Req>(method, request)?);
        Ok(Box::pin(async move {
            let response = call.await.map_err(Failure::provider)?.encode_to_vec();
            Ok(match self.response_hook {
                Some(hook) => hook(&self.name, method, response),
                None => response,
            })
        }))
    }

    /// The call for a method number, not yet polled.
    fn reply(&'static self, method: u32, request: &[u8]) -> Result<Reply, Failure> {
        let Some(method) = Method::from_u32(method) else {
            return Err(Failure {
                status: Status::UnknownMethod,
                error: None,
            });
        };
        let p: &'static dyn Provider = &*self.provider;
        match method {
            Method::Info => self.wrap(method, request, |_: Empty| async move { Ok(p.info()) }),
            Method::CreateVolume => self.wrap(method, request, |r| p.create_volume(r)),
            Method::DeleteVolume => self.wrap(method, request, |r| async move {
                p.delete_volume(r).await.map(|()| Empty {})
            }),
            Method::GetVolume => self.wrap(method, request, |r| p.get_volume(r)),
            Method::ListVolumes => self.wrap(method, request, |r| p.list_volumes(r)),
            Method::ExpandVolume => self.wrap(method, request, |r| p.expand_volume(r)),
            Method::ModifyVolume => self.wrap(method, request, |r| async move {
                p.modify_volume(r).await.map(|()| Empty {})
            }),
            Method::AttachVolume => self.wrap(method, request, |r| p.attach_volume(r)),
            Method::DetachVolume => self.wrap(method, request, |r| async move {
                p.detach_volume(r).await.map(|()| Empty {})
            }),
            Method::CreateSnapshot => self.wrap(method, request, |r| p.create_snapshot(r)),
            Method::DeleteSnapshot => self.wrap(method, request, |r| async move {
                p.delete_snapshot(r).await.map(|()| Empty {})
            }),
            Method::GetSnapshot => self.wrap(method, request, |r| p.get_snapshot(r)),
            Method::ListSnapshots => self.wrap(method, request, |r| p.list_snapshots(r)),
            Method::GetCapacity => self.wrap(method, request, |r| p.get_capacity(r)),
            Method::NodeInfo => self.wrap(method, request, |_: Empty| p.node_info()),
            Method::FindDevice => self.wrap(method, request, |r| p.find_device(r)),
            Method::VolumeCondition => self.wrap(method, request, |r| p.volume_condition(r)),
            Method::CreateGroupSnapshot => {
                self.wrap(method, request, |r| p.create_group_snapshot(r))
            }
            Method::DeleteGroupSnapshot => self.wrap(method, request, |r| async move {
                p.delete_group_snapshot(r).await.map(|()| Empty {})
            }),
            Method::GetGroupSnapshot => self.wrap(method, request, |r| p.get_group_snapshot(r)),
        }
    }
}

#[cfg(all(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Drives the export functions in-process, as the host would through a
    //! dylib, with the fake provider behind them.

    use std::collections::BTreeMap;

    use super::*;
    use crate::error::ErrorKind;
    use crate::ffi::abi::log_level;
    use crate::ffi::decode_abi_error;
    use crate::types::{CreateVolumeRequest, ProviderInfo, Volume, VolumeRef};

    fn table() -> &'static ProviderApi {
        let ptr = entry(crate::testing::FACTORY, ExportOptions::CURRENT);
        assert!(!ptr.is_null());
        // SAFETY: entry returns a pointer into a static.
        unsafe { &*ptr }
    }

    fn host(struct_size: usize) -> &'static HostApi {
        Box::leak(Box::new(HostApi {
            struct_size,
            version: AbiVersion::CURRENT,
            log_context: std::ptr::null(),
            log: None,
            max_log_level: log_level::OFF,
        }))
    }

    fn create_with(host: &HostApi, settings: &str) -> Result<*const c_void, (u32, ProviderError)> {
        let init = InitRequest {
            instance: "fake-1".into(),
            settings_toml: settings.into(),
            node_name: "node-a".into(),
            mode: "all".into(),
        }
        .encode_to_vec();
        let mut instance = std::ptr::null();
        let mut error = PluginBuf::EMPTY;
        let create = table().create.unwrap();
        // SAFETY: valid host table, lent init bytes, valid out slots.
        let status = unsafe { create(host, BorrowedBytes::new(&init), &mut instance, &mut error) };
        if status == Status::Ok as u32 {
            Ok(instance)
        } else {
            Err((status, take(error)))
        }
    }

    fn take(buf: PluginBuf) -> ProviderError {
        let bytes = if buf.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: a buffer from this dylib, read before it is freed.
            unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()
        };
        // SAFETY: freed once, by the allocating side's function.
        unsafe { (table().free_buf.unwrap())(buf) };
        decode_abi_error(&bytes)
    }

    fn raw_call(instance: *const c_void, method: u32, request: &[u8]) -> (u32, Vec<u8>) {
        let mut out = PluginBuf::EMPTY;
        // SAFETY: a live instance, a lent request, a valid out slot.
        let status = unsafe {
            (table().call.unwrap())(instance, method, BorrowedBytes::new(request), &mut out)
        };
        let bytes = if out.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: read before it is freed below.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec()
        };
        // SAFETY: freed once.
        unsafe { (table().free_buf.unwrap())(out) };
        (status, bytes)
    }

    #[test]
    fn table_describes_the_exported_factory() {
        let t = table();
        assert_eq!(t.struct_size, size_of::<ProviderApi>());
        assert_eq!(t.version, AbiVersion::CURRENT);
        // SAFETY: static strings of this build.
        assert_eq!(unsafe { t.factory_kind.as_slice() }, b"fake");
        // SAFETY: as above.
        let sdk_version = unsafe { t.sdk_version.as_slice() };
        assert_eq!(sdk_version, env!("CARGO_PKG_VERSION").as_bytes());
    }

    #[test]
    fn calls_round_trip_through_encoded_bytes() {
        let instance = create_with(host(size_of::<HostApi>()), "").unwrap();
        let (status, bytes) = raw_call(instance, Method::Info as u32, &[]);
        assert_eq!(status, Status::Ok as u32);
        assert_eq!(ProviderInfo::decode(bytes.as_slice()).unwrap().kind, "fake");

        let req = CreateVolumeRequest {
            name: "pvc-1".into(),
            required_bytes: 5 << 30,
            parameters: BTreeMap::new(),
            ..Default::default()
        };
        let (status, bytes) = raw_call(instance, Method::CreateVolume as u32, &req.encode_to_vec());
        assert_eq!(status, Status::Ok as u32);
        let volume = Volume::decode(bytes.as_slice()).unwrap();
        assert_eq!(volume.capacity_bytes, 5 << 30);

        let missing = VolumeRef {
            volume_id: "vol-none".into(),
        };
        let (status, bytes) =
            raw_call(instance, Method::GetVolume as u32, &missing.encode_to_vec());
        assert_eq!(status, Status::Error as u32);
        let error = decode_abi_error(&bytes);
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert!(error.message().contains("vol-none"), "{error}");
    }

    unsafe extern "C" fn never_called(_: *mut c_void, _: u32, buf: PluginBuf) {
        // SAFETY: a buffer of this dylib, freed once.
        unsafe { free_buf(buf) };
        panic!("a call that finished at once must not call back");
    }

    #[test]
    fn start_answers_at_once_when_the_call_does_not_wait() {
        let instance = create_with(host(size_of::<HostApi>()), "").unwrap();
        let start = table().start.unwrap();
        let req = CreateVolumeRequest {
            name: "pvc-start".into(),
            required_bytes: 3 << 30,
            ..Default::default()
        }
        .encode_to_vec();
        let mut out = PluginBuf::EMPTY;
        let context = std::ptr::null_mut();
        // SAFETY: a live instance, a lent request, a valid out slot; the
        // callback is never reached for a call that does not wait.
        let status = unsafe {
            start(
                instance,
                Method::CreateVolume as u32,
                BorrowedBytes::new(&req),
                &mut out,
                Some(never_called),
                context,
            )
        };
        assert_eq!(status, Status::Ok as u32);
        // SAFETY: read before it is freed.
        let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        // SAFETY: freed once.
        unsafe { free_buf(out) };
        assert_eq!(
            Volume::decode(bytes.as_slice()).unwrap().capacity_bytes,
            3 << 30
        );

        // Without a callback nothing starts.
        let mut out = PluginBuf::EMPTY;
        // SAFETY: as above, with a null callback the export must refuse.
        let status = unsafe {
            start(
                instance,
                Method::Info as u32,
                BorrowedBytes::new(&[]),
                &mut out,
                None,
                context,
            )
        };
        assert_eq!(status, Status::BadArgument as u32);
        assert!(take(out).message().contains("callback"));
    }

    #[test]
    fn unknown_methods_and_bad_requests_are_reported_not_guessed() {
        let instance = create_with(host(size_of::<HostApi>()), "").unwrap();
        let (status, bytes) = raw_call(instance, 4242, &[]);
        assert_eq!(status, Status::UnknownMethod as u32);
        assert!(bytes.is_empty());

        let (status, bytes) = raw_call(instance, Method::GetVolume as u32, &[0xff, 0xff, 0xff]);
        assert_eq!(status, Status::BadRequest as u32);
        assert!(decode_abi_error(&bytes).message().contains("get_volume"));

        let (status, _) = raw_call(std::ptr::null(), Method::Info as u32, &[]);
        assert_eq!(status, Status::BadArgument as u32);
    }

    #[test]
    fn a_newer_host_with_a_larger_table_is_accepted_and_an_older_one_refused() {
        // A newer host appends fields: its table is larger than ours.
        #[repr(C)]
        struct NewerHost {
            base: HostApi,
            extra: [u64; 4],
        }
        let newer = Box::leak(Box::new(NewerHost {
            base: HostApi {
                struct_size: size_of::<NewerHost>(),
                version: AbiVersion {
                    major: ABI_MAJOR,
                    minor: ABI_MINOR + 3,
                },
                log_context: std::ptr::null(),
                log: None,
                max_log_level: 0,
            },
            extra: [7; 4],
        }));
        assert!(create_with(&newer.base, "").is_ok());

        let (status, error) = create_with(host(8), "").unwrap_err();
        assert_eq!(status, Status::BadArgument as u32);
        assert!(error.message().contains("fewer than"), "{error}");
    }

    #[test]
    fn provider_errors_at_creation_keep_their_kind() {
        let (status, error) =
            create_with(host(size_of::<HostApi>()), "no_such_key = 1").unwrap_err();
        assert_eq!(status, Status::Error as u32);
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
        assert!(error.message().contains("no_such_key"), "{error}");
    }

    #[test]
    fn panics_become_a_status_and_the_export_stays_usable() {
        let result = guard::<()>(|| panic!("boom {}", 42));
        let failure = result.err().unwrap();
        assert_eq!(failure.status, Status::Panicked);
        let error = decode_abi_error(&{
            let buf = failure.into_buf();
            // SAFETY: read, then freed once by this side's function.
            let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec();
            // SAFETY: freed once, after the copy above.
            unsafe { free_buf(buf) };
            bytes
        });
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(error.message(), "provider panicked: boom 42");
    }
}

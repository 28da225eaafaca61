//! The C boundary itself: symbol names, version numbers, `#[repr(C)]` tables,
//! byte buffers, status and method numbers.
//!
//! Everything here is shared verbatim by the export side (compiled into each
//! dylib) and the import side (the driver core), so the two only ever agree
//! through these definitions. The rules that keep old and new builds talking:
//!
//! - The *major* version is in the entry symbol's name. A host looks up
//!   [`ENTRY_SYMBOL`] for its own major only, after reading the dylib's
//!   [`VERSION_SYMBOL`] so that a mismatch is reported with both versions.
//! - Within a major, tables only grow at the end. Each starts with its own
//!   size; a reader touches a field only if the size covers it.
//! - Payloads are protobuf (`proto/provider.proto`): either side ignores
//!   fields it does not know, and missing fields read as defaults.
//! - Method, status, log level and error kind numbers are never reused.

use std::ffi::c_void;
use std::fmt;
use std::mem::{MaybeUninit, offset_of, size_of};

/// The ABI major version this build speaks. Bumped only for a change an
/// older peer cannot survive; the entry symbol's name changes with it.
pub const ABI_MAJOR: u32 = 1;
/// The ABI minor version: bumped when a table grows or a method is added.
pub const ABI_MINOR: u32 = 2;

/// Unversioned symbol (`extern "C" fn() -> AbiVersion`) every dylib exports,
/// whatever its major, so a host can name both versions in a mismatch.
pub const VERSION_SYMBOL: &str = "omnidisk_provider_abi_version";
/// The entry symbol of major 1 (`extern "C" fn() -> *const ProviderApi`).
pub const ENTRY_SYMBOL: &str = "omnidisk_provider_v1_entry";

/// An ABI version, `major.minor`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
}

impl AbiVersion {
    /// The version of this build.
    pub const CURRENT: AbiVersion = AbiVersion {
        major: ABI_MAJOR,
        minor: ABI_MINOR,
    };
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Bytes owned by the caller and lent to the callee for the duration of one
/// call (or, for the static strings in [`ProviderApi`], forever). The callee
/// copies what it wants to keep and never frees them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BorrowedBytes {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl BorrowedBytes {
    /// Lends `bytes`; the result must not outlive them.
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The lent bytes.
    ///
    /// # Safety
    ///
    /// Unless `len` is 0, `ptr` must point to `len` initialised bytes that
    /// stay valid and unmodified for `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: non-null and valid for `len` bytes during 'a, as the
        // caller promised.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A buffer allocated by the dylib and handed to the host. The host copies
/// or decodes it and then returns it through [`ProviderApi::free_buf`]: the
/// allocator that made it is the only one that may free it.
#[repr(C)]
#[derive(Debug)]
pub struct PluginBuf {
    /// First byte; null for an empty buffer.
    pub ptr: *mut u8,
    /// Number of bytes (also the allocation's size).
    pub len: usize,
}

impl PluginBuf {
    /// A buffer holding nothing; freeing it is a no-op.
    pub const EMPTY: PluginBuf = PluginBuf {
        ptr: std::ptr::null_mut(),
        len: 0,
    };
}

/// The outcome of a dylib function, returned as a plain `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The output buffer holds the encoded response.
    Ok = 0,
    /// The output buffer holds an encoded `AbiError` from the provider.
    Error = 1,
    /// The provider panicked; the output buffer holds an `AbiError` with
    /// the panic message (or nothing, if even that failed).
    Panicked = 2,
    /// The dylib does not know this method number (it is older than the
    /// host). Nothing is in the output buffer.
    UnknownMethod = 3,
    /// The request bytes did not decode; an `AbiError` says why.
    BadRequest = 4,
    /// A pointer argument was null or a host table too small; an
    /// `AbiError` says which.
    BadArgument = 5,
    /// Only from [`StartFn`] (ABI 1.1): the call waits on something and
    /// goes on in the dylib; its outcome arrives through the [`CompleteFn`].
    /// Nothing is in the output buffer.
    Pending = 6,
}

impl Status {
    /// Every status, in number order.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::Error,
        Status::Panicked,
        Status::UnknownMethod,
        Status::BadRequest,
        Status::BadArgument,
        Status::Pending,
    ];

    /// The status for a number; `None` for a number from a newer peer.
    pub fn from_u32(value: u32) -> Option<Status> {
        Self::ALL.into_iter().find(|s| *s as u32 == value)
    }
}

/// The provider trait's methods, by stable number. Requests and responses
/// are the trait's argument and result messages; `()` travels as `Empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Method {
    /// `info`: `Empty` -> `ProviderInfo`.
    Info = 1,
    /// `create_volume`: `CreateVolumeRequest` -> `Volume`.
    CreateVolume = 2,
    /// `delete_volume`: `VolumeRef` -> `Empty`.
    DeleteVolume = 3,
    /// `get_volume`: `VolumeRef` -> `VolumeStatus`.
    GetVolume = 4,
    /// `list_volumes`: `ListRequest` -> `ListVolumesResponse`.
    ListVolumes = 5,
    /// `expand_volume`: `ExpandVolumeRequest` -> `ExpandVolumeResponse`.
    ExpandVolume = 6,
    /// `modify_volume`: `ModifyVolumeRequest` -> `Empty`.
    ModifyVolume = 7,
    /// `attach_volume`: `AttachRequest` -> `AttachResponse`.
    AttachVolume = 8,
    /// `detach_volume`: `DetachRequest` -> `Empty`.
    DetachVolume = 9,
    /// `create_snapshot`: `CreateSnapshotRequest` -> `Snapshot`.
    CreateSnapshot = 10,
    /// `delete_snapshot`: `SnapshotRef` -> `Empty`.
    DeleteSnapshot = 11,
    /// `get_snapshot`: `SnapshotRef` -> `Snapshot`.
    GetSnapshot = 12,
    /// `list_snapshots`: `ListSnapshotsRequest` -> `ListSnapshotsResponse`.
    ListSnapshots = 13,
    /// `get_capacity`: `CapacityRequest` -> `CapacityResponse`.
    GetCapacity = 14,
    /// `node_info`: `Empty` -> `NodeInfo`.
    NodeInfo = 15,
    /// `find_device`: `FindDeviceRequest` -> `FindDeviceResponse`.
    FindDevice = 16,
    /// `volume_condition`: `VolumeRef` -> `VolumeCondition`.
    VolumeCondition = 17,
    /// `create_group_snapshot` (since 1.2): `CreateGroupSnapshotRequest` ->
    /// `GroupSnapshot`.
    CreateGroupSnapshot = 18,
    /// `delete_group_snapshot` (since 1.2): `GroupSnapshotRef` -> `Empty`.
    DeleteGroupSnapshot = 19,
    /// `get_group_snapshot` (since 1.2): `GroupSnapshotRef` -> `GroupSnapshot`.
    GetGroupSnapshot = 20,
}

impl Method {
    /// Every method, in number order.
    pub const ALL: [Method; 20] = [
        Method::Info,
        Method::CreateVolume,
        Method::DeleteVolume,
        Method::GetVolume,
        Method::ListVolumes,
        Method::ExpandVolume,
        Method::ModifyVolume,
        Method::AttachVolume,
        Method::DetachVolume,
        Method::CreateSnapshot,
        Method::DeleteSnapshot,
        Method::GetSnapshot,
        Method::ListSnapshots,
        Method::GetCapacity,
        Method::NodeInfo,
        Method::FindDevice,
        Method::VolumeCondition,
        Method::CreateGroupSnapshot,
        Method::DeleteGroupSnapshot,
        Method::GetGroupSnapshot,
    ];

    /// The method for a number; `None` for a method this build lacks.
    pub fn from_u32(value: u32) -> Option<Method> {
        Self::ALL.into_iter().find(|m| *m as u32 == value)
    }

    /// The trait method's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Method::Info => "info",
            Method::CreateVolume => "create_volume",
            Method::DeleteVolume => "delete_volume",
            Method::GetVolume => "get_volume",
            Method::ListVolumes => "list_volumes",
            Method::ExpandVolume => "expand_volume",
            Method::ModifyVolume => "modify_volume",
            Method::AttachVolume => "attach_volume",
            Method::DetachVolume => "detach_volume",
            Method::CreateSnapshot => "create_snapshot",
            Method::DeleteSnapshot => "delete_snapshot",
            Method::GetSnapshot => "get_snapshot",
            Method::ListSnapshots => "list_snapshots",
            Method::GetCapacity => "get_capacity",
            Method::NodeInfo => "node_info",
            Method::FindDevice => "find_device",
            Method::VolumeCondition => "volume_condition",
            Method::CreateGroupSnapshot => "create_group_snapshot",
            Method::DeleteGroupSnapshot => "delete_group_snapshot",
            Method::GetGroupSnapshot => "get_group_snapshot",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Log levels on the wire (`HostApi::log` and `HostApi::max_log_level`).
pub mod log_level {
    /// Nothing is logged (only meaningful as a maximum).
    pub const OFF: u32 = 0;
    /// `tracing::Level::ERROR`.
    pub const ERROR: u32 = 1;
    /// `tracing::Level::WARN`.
    pub const WARN: u32 = 2;
    /// `tracing::Level::INFO`.
    pub const INFO: u32 = 3;
    /// `tracing::Level::DEBUG`.
    pub const DEBUG: u32 = 4;
    /// `tracing::Level::TRACE`; higher numbers from a newer peer read as this.
    pub const TRACE: u32 = 5;
}

/// The host's log callback: one formatted event. `target` and `message` are
/// UTF-8 lent for the duration of the call. Must be callable from any thread.
pub type LogFn = unsafe extern "C" fn(
    context: *const c_void,
    level: u32,
    target: BorrowedBytes,
    message: BorrowedBytes,
);

/// What the host gives a provider instance at creation. The host keeps it,
/// and `log_context`, valid for the rest of the process.
#[repr(C)]
#[derive(Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` in the host's build; a newer host's is larger.
    pub struct_size: usize,
    /// The host's ABI version.
    pub version: AbiVersion,
    /// Passed back as the first argument of every `log` call.
    pub log_context: *const c_void,
    /// Where provider logs go; `None` drops them.
    pub log: Option<LogFn>,
    /// The most verbose level the host will keep (see [`log_level`]), so
    /// the dylib does not format events that would be dropped.
    pub max_log_level: u32,
}

impl HostApi {
    /// The smallest `struct_size` a 1.0 reader accepts: the end of the last
    /// 1.0 field (not `size_of`, which includes trailing padding).
    pub const V1_0_SIZE: usize = offset_of!(HostApi, max_log_level) + size_of::<u32>();
}

/// Creates a provider instance. `init` is an encoded `InitRequest`. On
/// [`Status::Ok`] `*instance_out` holds the instance (valid for the rest of
/// the process); otherwise `*error_out` may hold an encoded `AbiError`.
pub type CreateFn = unsafe extern "C" fn(
    host: *const HostApi,
    init: BorrowedBytes,
    instance_out: *mut *const c_void,
    error_out: *mut PluginBuf,
) -> u32;

/// Calls one [`Method`] on an instance, blocking until it finishes. `request`
/// is the encoded request; `*response_out` receives the encoded response
/// (on [`Status::Ok`]) or an `AbiError`. Callable from many threads at once.
pub type CallFn = unsafe extern "C" fn(
    instance: *const c_void,
    method: u32,
    request: BorrowedBytes,
    response_out: *mut PluginBuf,
) -> u32;

/// Receives the outcome of a call that [`StartFn`] left [`Status::Pending`]:
/// its final status (never `Pending`) and the buffer that goes with it, as
/// [`CallFn`] would have written them. Called exactly once per pending call,
/// from any thread of the dylib; the host frees `response` as usual.
pub type CompleteFn = unsafe extern "C" fn(context: *mut c_void, status: u32, response: PluginBuf);

/// Starts one [`Method`] on an instance without tying a thread to it (ABI
/// 1.1). The call runs on the calling thread until it first has to wait.
/// If it finishes before that, the return value and `*response_out` are
/// its outcome, as for [`CallFn`], and `complete` is never called.
/// Otherwise it returns [`Status::Pending`], goes on on the dylib's own
/// threads, and hands its outcome to `complete(context, ..)` exactly once;
/// the host keeps `context` valid until then. The first part running on
/// the host's thread is why a provider must never block a thread in its
/// async methods (blocking work belongs on a blocking pool).
pub type StartFn = unsafe extern "C" fn(
    instance: *const c_void,
    method: u32,
    request: BorrowedBytes,
    response_out: *mut PluginBuf,
    complete: Option<CompleteFn>,
    context: *mut c_void,
) -> u32;

/// Frees a buffer the dylib allocated. Every non-empty [`PluginBuf`] the host
/// receives goes back through this exactly once.
pub type FreeBufFn = unsafe extern "C" fn(buf: PluginBuf);

/// Signature of [`VERSION_SYMBOL`].
pub type VersionFn = unsafe extern "C" fn() -> AbiVersion;

/// Signature of [`ENTRY_SYMBOL`]: the dylib's table, valid for the rest of
/// the process, or null if the dylib could not set itself up.
pub type EntryFn = unsafe extern "C" fn() -> *const ProviderApi;

/// The table a dylib hands the host. Append-only: a newer dylib's table is
/// larger, and the host reads only the fields its `struct_size` covers.
#[repr(C)]
#[derive(Debug)]
pub struct ProviderApi {
    /// `size_of` of the dylib's table.
    pub struct_size: usize,
    /// The dylib's ABI version (the same as its [`VERSION_SYMBOL`] reports).
    pub version: AbiVersion,
    /// The kind of the exported factory (UTF-8, static in the dylib).
    pub factory_kind: BorrowedBytes,
    /// The provider-api version the dylib was built with (UTF-8, static).
    pub sdk_version: BorrowedBytes,
    /// Frees the dylib's buffers.
    pub free_buf: Option<FreeBufFn>,
    /// Creates instances.
    pub create: Option<CreateFn>,
    /// Calls methods on instances, blocking the calling thread.
    pub call: Option<CallFn>,
    /// Starts calls that may finish later (since 1.1; hosts use it when
    /// `struct_size` covers it, else `call`).
    pub start: Option<StartFn>,
}

impl ProviderApi {
    /// The smallest `struct_size` a 1.0 reader accepts.
    pub const V1_0_SIZE: usize = offset_of!(ProviderApi, call) + size_of::<Option<CallFn>>();
    /// The size of a 1.1 table, which adds `start`.
    pub const V1_1_SIZE: usize = offset_of!(ProviderApi, start) + size_of::<Option<StartFn>>();
}

/// A `#[repr(C)]` table that starts with its own `struct_size`.
///
/// # Safety
///
/// `FIELD_ENDS` must list, in order, `offset_of!(field) + size_of::<field>()`
/// for every field, and the type must be valid when zeroed.
pub unsafe trait AbiTable {
    /// The end of each field, in declaration order.
    const FIELD_ENDS: &'static [usize];

    /// How many leading bytes of a peer's table of `struct_size` bytes hold
    /// whole fields: a field counts only if the size covers all of it, so a
    /// size that ends inside a field leaves that field absent.
    fn whole_fields_len(struct_size: usize) -> usize {
        Self::FIELD_ENDS
            .iter()
            .copied()
            .take_while(|end| *end <= struct_size)
            .last()
            .unwrap_or(0)
    }
}

// SAFETY: every field of `HostApi`, in order; all are valid when zeroed
// (null pointers, `None`, zero numbers).
unsafe impl AbiTable for HostApi {
    const FIELD_ENDS: &'static [usize] = &[
        offset_of!(HostApi, struct_size) + size_of::<usize>(),
        offset_of!(HostApi, version) + size_of::<AbiVersion>(),
        offset_of!(HostApi, log_context) + size_of::<*const c_void>(),
        offset_of!(HostApi, log) + size_of::<Option<LogFn>>(),
        offset_of!(HostApi, max_log_level) + size_of::<u32>(),
    ];
}

// SAFETY: every field of `ProviderApi`, in order; all are valid when zeroed
// (empty strings, `None` functions, zero numbers).
unsafe impl AbiTable for ProviderApi {
    const FIELD_ENDS: &'static [usize] = &[
        offset_of!(ProviderApi, struct_size) + size_of::<usize>(),
        offset_of!(ProviderApi, version) + size_of::<AbiVersion>(),
        offset_of!(ProviderApi, factory_kind) + size_of::<BorrowedBytes>(),
        offset_of!(ProviderApi, sdk_version) + size_of::<BorrowedBytes>(),
        offset_of!(ProviderApi, free_buf) + size_of::<Option<FreeBufFn>>(),
        offset_of!(ProviderApi, create) + size_of::<Option<CreateFn>>(),
        offset_of!(ProviderApi, call) + size_of::<Option<CallFn>>(),
        offset_of!(ProviderApi, start) + size_of::<Option<StartFn>>(),
    ];
}

/// Copies a peer's table (either side's) into a `T`: the fields its
/// `struct_size` covers whole are copied, every other field is zeroed
/// (`None`, null, 0), and fields this build does not know are ignored. A
/// size ending inside a field leaves that field zeroed, never half-copied.
///
/// # Safety
///
/// `table` must point to at least `size_of::<usize>()` readable bytes that
/// start with the table's size, and to that many bytes in all.
pub unsafe fn read_table<T: AbiTable>(table: *const T) -> T {
    // SAFETY: every ABI table starts with its size as a usize.
    let struct_size = unsafe { table.cast::<usize>().read_unaligned() };
    let mut out = MaybeUninit::<T>::zeroed();
    let len = T::whole_fields_len(struct_size).min(size_of::<T>());
    // SAFETY: `len` is at most `struct_size`, which the caller promised
    // readable at `table`; `out` has room for `size_of::<T>()`; the two
    // never overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(table.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), len);
    }
    // SAFETY: T is valid when zeroed (AbiTable's contract) and every copied
    // byte belongs to a whole field of a T laid out by the same definition.
    unsafe { out.assume_init() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_ones_are_refused() {
        for method in Method::ALL {
            assert_eq!(Method::from_u32(method as u32), Some(method));
        }
        assert_eq!(Method::from_u32(0), None);
        assert_eq!(Method::from_u32(21), None);
        for status in Status::ALL {
            assert_eq!(Status::from_u32(status as u32), Some(status));
        }
        assert_eq!(Status::from_u32(99), None);
    }

    #[test]
    fn minimum_sizes_cover_every_known_field() {
        assert!(HostApi::V1_0_SIZE <= size_of::<HostApi>());
        assert!(HostApi::V1_0_SIZE > offset_of!(HostApi, log));
        const { assert!(ProviderApi::V1_0_SIZE < ProviderApi::V1_1_SIZE) };
        assert_eq!(ProviderApi::V1_1_SIZE, size_of::<ProviderApi>());
    }

    /// A table of `size` bytes whose every field is set, as a peer that
    /// declares a size ending anywhere would hand it over.
    fn provider_table(size: usize) -> ProviderApi {
        unsafe extern "C" fn free(_: PluginBuf) {}
        unsafe extern "C" fn create(
            _: *const HostApi,
            _: BorrowedBytes,
            _: *mut *const c_void,
            _: *mut PluginBuf,
        ) -> u32 {
            0
        }
        unsafe extern "C" fn call(
            _: *const c_void,
            _: u32,
            _: BorrowedBytes,
            _: *mut PluginBuf,
        ) -> u32 {
            0
        }
        unsafe extern "C" fn start(
            _: *const c_void,
            _: u32,
            _: BorrowedBytes,
            _: *mut PluginBuf,
            _: Option<CompleteFn>,
            _: *mut c_void,
        ) -> u32 {
            0
        }
        ProviderApi {
            struct_size: size,
            version: AbiVersion::CURRENT,
            factory_kind: BorrowedBytes::new(b"kind"),
            sdk_version: BorrowedBytes::new(b"1.2.3"),
            free_buf: Some(free),
            create: Some(create),
            call: Some(call),
            start: Some(start),
        }
    }

    #[test]
    fn a_size_ending_inside_a_field_leaves_that_field_absent() {
        for size in ProviderApi::V1_0_SIZE..=size_of::<ProviderApi>() {
            let full = provider_table(size);
            // SAFETY: `full` is a whole table, readable for all its bytes.
            let read = unsafe { read_table(&full) };
            assert_eq!(read.struct_size, size);
            assert!(read.free_buf.is_some() && read.create.is_some() && read.call.is_some());
            assert_eq!(
                read.start.is_some(),
                size >= ProviderApi::V1_1_SIZE,
                "a {size}-byte table"
            );
        }
        // Every size up to the 1.0 one: each field present exactly when the
        // size covers all of it.
        for size in size_of::<usize>()..=ProviderApi::V1_0_SIZE {
            let full = provider_table(size);
            // SAFETY: as above.
            let read = unsafe { read_table(&full) };
            let whole = |offset: usize, len: usize| size >= offset + len;
            let fn_len = size_of::<Option<CallFn>>();
            assert_eq!(
                read.version.major != 0,
                whole(offset_of!(ProviderApi, version), 8)
            );
            assert_eq!(
                read.factory_kind.len != 0,
                whole(offset_of!(ProviderApi, factory_kind), 16)
            );
            assert_eq!(
                read.free_buf.is_some(),
                whole(offset_of!(ProviderApi, free_buf), fn_len)
            );
            assert_eq!(
                read.create.is_some(),
                whole(offset_of!(ProviderApi, create), fn_len)
            );
            assert_eq!(
                read.call.is_some(),
                whole(offset_of!(ProviderApi, call), fn_len)
            );
            assert!(read.start.is_none());
        }
    }

    #[test]
    fn a_host_table_cut_inside_a_field_leaves_it_absent() {
        unsafe extern "C" fn log(_: *const c_void, _: u32, _: BorrowedBytes, _: BorrowedBytes) {}
        for size in size_of::<usize>()..=size_of::<HostApi>() {
            let full = HostApi {
                struct_size: size,
                version: AbiVersion::CURRENT,
                log_context: std::ptr::NonNull::<c_void>::dangling().as_ptr(),
                log: Some(log),
                max_log_level: log_level::TRACE,
            };
            // SAFETY: `full` is a whole table.
            let read = unsafe { read_table(&full) };
            let end = |offset: usize, len: usize| size >= offset + len;
            assert_eq!(
                read.log.is_some(),
                end(offset_of!(HostApi, log), 8),
                "{size}"
            );
            assert_eq!(
                !read.log_context.is_null(),
                end(offset_of!(HostApi, log_context), 8),
                "{size}"
            );
            assert_eq!(
                read.max_log_level == log_level::TRACE,
                size >= HostApi::V1_0_SIZE,
                "{size}"
            );
        }
    }

    #[test]
    fn entry_symbol_carries_the_major_version() {
        assert!(ENTRY_SYMBOL.contains(&format!("_v{ABI_MAJOR}_")));
        assert_eq!(AbiVersion { major: 2, minor: 7 }.to_string(), "2.7");
    }

    #[test]
    fn empty_borrowed_bytes_read_as_empty_even_when_null() {
        let empty = BorrowedBytes {
            ptr: std::ptr::null(),
            len: 0,
        };
        // SAFETY: len is 0, so the pointer is never read.
        assert!(unsafe { empty.as_slice() }.is_empty());
        let data = b"abc".to_vec();
        // SAFETY: `data` outlives the slice.
        assert_eq!(unsafe { BorrowedBytes::new(&data).as_slice() }, b"abc");
    }
}

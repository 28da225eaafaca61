//! Finding, checking and opening a provider library, and creating its
//! instance.

use std::ffi::c_void;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use omnidisk_provider_api::ffi::abi::{
    ABI_MAJOR, AbiVersion, BorrowedBytes, CallFn, ENTRY_SYMBOL, EntryFn, FreeBufFn, PluginBuf,
    ProviderApi, StartFn, Status, VERSION_SYMBOL, VersionFn, read_table,
};
use omnidisk_provider_api::ffi::decode_abi_error;
use omnidisk_provider_api::types::InitRequest;
use prost::Message;

use super::adapter::unreadable;
use super::host_log::host_api;
use super::{HOST_ABI, PluginError};

/// Why a file or directory owned or writable by others is refused; `None`
/// when it is root's alone.
fn untrusted(meta: &Metadata) -> Option<String> {
    if meta.uid() != 0 {
        return Some(format!("owned by uid {}, not root", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!("writable by group or others (mode {mode:04o})"));
    }
    None
}

/// Resolves `library` inside `plugin_dir` and checks both. Symbolic links are
/// resolved first, so a link pointing out of the directory is refused.
pub(super) fn resolve(library: &Path, plugin_dir: &Path) -> Result<PathBuf, PluginError> {
    let dir_error = |source: io::Error| PluginError::PluginDir {
        dir: plugin_dir.to_owned(),
        source,
    };
    let dir = fs::canonicalize(plugin_dir).map_err(dir_error)?;
    let dir_meta = fs::metadata(&dir).map_err(dir_error)?;
    if !dir_meta.is_dir() {
        return Err(PluginError::InsecurePluginDir {
            dir,
            reason: "not a directory".into(),
        });
    }
    if let Some(reason) = untrusted(&dir_meta) {
        return Err(PluginError::InsecurePluginDir { dir, reason });
    }

    let candidate = dir.join(library);
    let path = match fs::canonicalize(&candidate) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PluginError::MissingFile { path: candidate });
        }
        Err(source) => {
            return Err(PluginError::Inaccessible {
                path: candidate,
                source,
            });
        }
    };
    if path.parent() != Some(dir.as_path()) {
        return Err(PluginError::OutsidePluginDir { path, dir });
    }
    let meta = fs::metadata(&path).map_err(|source| PluginError::Inaccessible {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PluginError::InsecureFile {
            path,
            reason: "not a regular file".into(),
        });
    }
    if let Some(reason) = untrusted(&meta) {
        return Err(PluginError::InsecureFile { path, reason });
    }
    Ok(path)
}

/// A created instance and the functions to reach it.
pub(super) struct Created {
    pub(super) call: CallFn,
    /// Present from ABI 1.1 on; calls into 1.0 dylibs block a thread.
    pub(super) start: Option<StartFn>,
    pub(super) free_buf: FreeBufFn,
    pub(super) instance: *const c_void,
    pub(super) version: AbiVersion,
    pub(super) sdk_version: String,
}

// SAFETY: the ABI requires instances and the dylib's functions to be usable
// from any thread; the library is never unloaded, so the pointers stay valid.
unsafe impl Send for Created {}

/// Opens `path` (already checked by [`resolve`]), checks its version and
/// table and creates the instance. Blocking: runs on a blocking thread.
pub(super) fn open_and_create(path: &Path, init: &InitRequest) -> Result<Created, PluginError> {
    // SAFETY: opening runs the library's initialisers, arbitrary code. The
    // library's only credential is that `resolve` found it, and its
    // directory, owned by root and writable by nobody else: whoever could
    // plant it could already run code as root. RTLD_NOW fails here, not
    // mid-call, on unresolved symbols; RTLD_LOCAL keeps its symbols private.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE) }
        .map_err(|source| PluginError::Open {
            path: path.to_owned(),
            source,
        })?;
    // Never unloaded: instances, threads and buffers of the dylib outlive any
    // handle, and unloading Rust code with live threads is undefined.
    let library: &'static Library = Box::leak(Box::new(library));

    let missing = |symbol: &'static str| {
        move |source| PluginError::MissingSymbol {
            path: path.to_owned(),
            symbol,
            host: HOST_ABI,
            source,
        }
    };
    // SAFETY: VERSION_SYMBOL is declared by the ABI (every major) as
    // `extern "C" fn() -> AbiVersion`.
    let version_fn: VersionFn = *unsafe { library.get::<VersionFn>(VERSION_SYMBOL.as_bytes()) }
        .map_err(missing(VERSION_SYMBOL))?;
    // SAFETY: as declared above; it takes nothing and returns two u32s.
    let version = unsafe { version_fn() };
    if version.major != ABI_MAJOR {
        return Err(PluginError::AbiMajorMismatch {
            path: path.to_owned(),
            library: version,
            host: HOST_ABI,
        });
    }
    // SAFETY: ENTRY_SYMBOL of major 1 is `extern "C" fn() -> *const ProviderApi`.
    let entry: EntryFn = *unsafe { library.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) }
        .map_err(missing(ENTRY_SYMBOL))?;
    let bad_table = |reason: String| PluginError::BadTable {
        path: path.to_owned(),
        version,
        reason,
    };
    // SAFETY: the entry function is declared above; it catches its panics.
    let table_ptr = unsafe { entry() };
    if table_ptr.is_null() {
        return Err(bad_table("the entry function returned null".into()));
    }
    // SAFETY: a non-null table lives for the process and starts with its size.
    let table_size = unsafe { table_ptr.cast::<usize>().read_unaligned() };
    if table_size < ProviderApi::V1_0_SIZE {
        return Err(bad_table(format!(
            "{table_size} bytes, fewer than the {} of ABI 1.0",
            ProviderApi::V1_0_SIZE
        )));
    }
    // SAFETY: the table holds at least every 1.0 field (checked above) and
    // starts with its size; fields it lacks read as zero (`None`), fields
    // beyond this build's `ProviderApi` are ignored.
    let table = unsafe { read_table(table_ptr) };
    if table.version.major != ABI_MAJOR {
        return Err(bad_table(format!(
            "its table says ABI {}, its version symbol {version}",
            table.version
        )));
    }
    let (Some(create), Some(call), Some(free_buf)) = (table.create, table.call, table.free_buf)
    else {
        return Err(bad_table("a function pointer is null".into()));
    };
    if let Some(reason) = unreadable(table.sdk_version.ptr.is_null(), table.sdk_version.len) {
        return Err(bad_table(format!("its sdk_version is {reason}")));
    }
    // SAFETY: static strings of the never-unloaded dylib, of a length
    // checked above.
    let sdk_version = String::from_utf8_lossy(unsafe { table.sdk_version.as_slice() }).into_owned();

    let host = host_api(&init.instance, &path.display().to_string());
    let init_bytes = init.encode_to_vec();
    let mut instance: *const c_void = std::ptr::null();
    let mut error = PluginBuf::EMPTY;
    // SAFETY: `host` is leaked (valid for the process), `init_bytes` outlives
    // the call, both out slots are valid; `create` catches its panics.
    let status = unsafe {
        create(
            host,
            BorrowedBytes::new(&init_bytes),
            &mut instance,
            &mut error,
        )
    };
    if status == Status::Ok as u32 && !instance.is_null() {
        // SAFETY: an Ok create leaves nothing in `error`; freeing EMPTY is a
        // no-op, and anything else is the dylib's to free.
        unsafe { free_buf(error) };
        return Ok(Created {
            call,
            start: table.start,
            free_buf,
            instance,
            version,
            sdk_version,
        });
    }
    let source = if let Some(reason) = unreadable(error.ptr.is_null(), error.len) {
        // SAFETY: returned to its allocator, unread.
        unsafe { free_buf(error) };
        omnidisk_provider_api::ProviderError::internal(format!(
            "create returned status {status} with {reason}"
        ))
    } else if error.ptr.is_null() {
        omnidisk_provider_api::ProviderError::internal(format!(
            "create returned status {status} without an error"
        ))
    } else {
        // SAFETY: the dylib's buffer of `len` bytes (non-null, bounded above),
        // read before it is freed.
        let e = decode_abi_error(unsafe { std::slice::from_raw_parts(error.ptr, error.len) });
        // SAFETY: returned to its allocator exactly once.
        unsafe { free_buf(error) };
        e
    };
    Err(PluginError::Init {
        path: path.to_owned(),
        instance: init.instance.clone(),
        source,
    })
}

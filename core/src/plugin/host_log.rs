//! The host's log callback: provider dylibs hand it their formatted events,
//! and it re-emits them into the driver's tracing output with the instance
//! name on every line.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use omnidisk_provider_api::ffi::abi::{BorrowedBytes, HostApi, LogFn, log_level};
use tracing::level_filters::LevelFilter;

use super::adapter::unreadable;

/// Who a dylib's log lines belong to. Leaked: a dylib may log until the
/// process ends.
pub(super) struct LogContext {
    instance: String,
    library: String,
}

/// A host table for one instance, valid for the rest of the process (the
/// ABI lets the dylib keep the pointer).
pub(super) fn host_api(instance: &str, library: &str) -> &'static HostApi {
    let context: &'static LogContext = Box::leak(Box::new(LogContext {
        instance: instance.to_owned(),
        library: library.to_owned(),
    }));
    Box::leak(Box::new(HostApi {
        struct_size: size_of::<HostApi>(),
        version: super::HOST_ABI,
        log_context: (context as *const LogContext).cast::<c_void>(),
        log: Some(host_log as LogFn),
        max_log_level: max_level(),
    }))
}

/// The most verbose level any subscriber of this process keeps.
fn max_level() -> u32 {
    match LevelFilter::current() {
        LevelFilter::OFF => log_level::OFF,
        LevelFilter::ERROR => log_level::ERROR,
        LevelFilter::WARN => log_level::WARN,
        LevelFilter::INFO => log_level::INFO,
        LevelFilter::DEBUG => log_level::DEBUG,
        _ => log_level::TRACE,
    }
}

unsafe extern "C" fn host_log(
    context: *const c_void,
    level: u32,
    target: BorrowedBytes,
    message: BorrowedBytes,
) {
    // A panicking subscriber must not unwind into the dylib (that aborts).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if context.is_null() {
            return;
        }
        // SAFETY: the only contexts handed out are leaked `LogContext`s
        // from `host_api`, valid for the process.
        let context = unsafe { &*context.cast::<LogContext>() };
        if unreadable(target.ptr.is_null(), target.len).is_some()
            || unreadable(message.ptr.is_null(), message.len).is_some()
        {
            tracing::warn!(
                provider_instance = context.instance.as_str(),
                provider_library = context.library.as_str(),
                target_len = target.len,
                message_len = message.len,
                "provider library logged a line the driver cannot read (null or oversized); dropped"
            );
            return;
        }
        // SAFETY: the dylib lends both strings for the duration of the call;
        // their lengths are bounded and non-null when non-zero (checked above).
        let (target, message) = unsafe { (target.as_slice(), message.as_slice()) };
        let target = String::from_utf8_lossy(target);
        let message = String::from_utf8_lossy(message);
        let instance = context.instance.as_str();
        let library = context.library.as_str();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "omnidisk::provider",
                    $level,
                    provider_instance = instance,
                    provider_library = library,
                    provider_target = %target,
                    "{message}"
                )
            };
        }
        match level {
            log_level::ERROR => emit!(tracing::Level::ERROR),
            log_level::WARN => emit!(tracing::Level::WARN),
            log_level::INFO => emit!(tracing::Level::INFO),
            log_level::DEBUG => emit!(tracing::Level::DEBUG),
            _ => emit!(tracing::Level::TRACE),
        }
    }));
}

//! Export side: a tracing layer that forwards a dylib's events to the host.
//!
//! A dylib has its own copy of `tracing` (its own globals and thread-locals),
//! so events it records never reach the driver's subscriber on their own.
//! Each instance gets a [`Dispatch`] whose only layer hands formatted events
//! to the host's log callback; the host re-emits them with the instance name.

use std::ffi::c_void;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::Registry;

use super::abi::{BorrowedBytes, HostApi, LogFn, log_level};

/// The host's callback and its context, copied out of [`HostApi`].
#[derive(Clone, Copy)]
struct HostLogger {
    context: *const c_void,
    log: LogFn,
}

// SAFETY: the ABI requires the host's log callback to be callable from any
// thread and its context to stay valid for the rest of the process; the
// pointer itself is never dereferenced on this side.
unsafe impl Send for HostLogger {}
// SAFETY: as above; the logger is immutable.
unsafe impl Sync for HostLogger {}

struct ForwardLayer {
    host: HostLogger,
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = EventText::default();
        event.record(&mut text);
        let metadata = event.metadata();
        let target = metadata.target().as_bytes();
        let message = text.finish();
        // SAFETY: the callback and context come from the host's HostApi,
        // which the host keeps valid for the process lifetime; both byte
        // slices outlive the call.
        unsafe {
            (self.host.log)(
                self.host.context,
                level_number(*metadata.level()),
                BorrowedBytes::new(target),
                BorrowedBytes::new(message.as_bytes()),
            );
        }
    }
}

/// The event's `message` followed by its other fields as `key=value`.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl EventText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields.trim_start().to_owned()
        } else {
            self.message + &self.fields
        }
    }
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn level_number(level: Level) -> u32 {
    match level {
        Level::ERROR => log_level::ERROR,
        Level::WARN => log_level::WARN,
        Level::INFO => log_level::INFO,
        Level::DEBUG => log_level::DEBUG,
        Level::TRACE => log_level::TRACE,
    }
}

fn level_filter(max: u32) -> LevelFilter {
    match max {
        log_level::OFF => LevelFilter::OFF,
        log_level::ERROR => LevelFilter::ERROR,
        log_level::WARN => LevelFilter::WARN,
        log_level::INFO => LevelFilter::INFO,
        log_level::DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// A dispatch forwarding to the host described by `host` (already checked to
/// be at least a 1.0 table); a no-op dispatch when the host takes no logs.
pub(super) fn host_dispatch(host: &HostApi) -> Dispatch {
    match host.log {
        Some(log) => {
            let layer = ForwardLayer {
                host: HostLogger {
                    context: host.log_context,
                    log,
                },
            }
            .with_filter(level_filter(host.max_log_level));
            Dispatch::new(Registry::default().with(layer))
        }
        None => Dispatch::none(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ffi::abi::AbiVersion;

    static SEEN: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn record(
        _context: *const c_void,
        level: u32,
        target: BorrowedBytes,
        message: BorrowedBytes,
    ) {
        // SAFETY: the layer lends both slices for the duration of the call.
        let (target, message) = unsafe { (target.as_slice(), message.as_slice()) };
        SEEN.lock().unwrap().push((
            level,
            String::from_utf8_lossy(target).into_owned(),
            String::from_utf8_lossy(message).into_owned(),
        ));
    }

    #[test]
    fn events_reach_the_host_formatted_and_filtered_by_its_level() {
        let host = HostApi {
            struct_size: size_of::<HostApi>(),
            version: AbiVersion::CURRENT,
            log_context: std::ptr::null(),
            log: Some(record),
            max_log_level: log_level::INFO,
        };
        let dispatch = host_dispatch(&host);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: "plugin::volumes", volume = "vol-1", size = 3, "created");
            tracing::debug!("too verbose for the host");
            tracing::warn!(reason = "slow");
        });
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (
                    log_level::INFO,
                    "plugin::volumes".to_owned(),
                    "created volume=\"vol-1\" size=3".to_owned()
                ),
                (
                    log_level::WARN,
                    module_path!().to_owned(),
                    "reason=\"slow\"".to_owned()
                ),
            ]
        );
    }
}

//! Log set-up: tracing to stderr, as text or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The level or filter string is invalid.
    #[error("invalid --log-level {0:?}")]
    Filter(String, #[source] tracing_subscriber::filter::ParseError),
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadySet,
}

/// The tracing filter for `--log-level`: a bare level applies to the
/// driver's own crates (targets starting with `omnidisk`: the core, the
/// provider crates and dylib providers built on provider-api) while every
/// other crate stays at `warn`, so `debug` or `trace` never turns on an
/// SDK's wire logging (the AWS SDK prints credentials there). A value with
/// `=` or `,` is a full filter, taken as written.
pub fn filter_directives(level: &str) -> String {
    let level = level.trim();
    if level.contains('=') || level.contains(',') {
        return level.to_owned();
    }
    format!("warn,omnidisk={level}")
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let directives = filter_directives(level);
    let filter =
        EnvFilter::try_new(&directives).map_err(|e| LoggingError::Filter(level.to_owned(), e))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_scope_to_the_drivers_own_crates() {
        assert_eq!(filter_directives("debug"), "warn,omnidisk=debug");
        assert_eq!(filter_directives(" trace "), "warn,omnidisk=trace");
        assert_eq!(
            filter_directives("debug,aws_smithy_runtime=trace"),
            "debug,aws_smithy_runtime=trace"
        );
        assert_eq!(filter_directives("omnidisk=info"), "omnidisk=info");
        // The scoped filter keeps SDK crates quiet at debug and trace.
        use tracing_subscriber::layer::SubscriberExt;
        for level in ["debug", "trace"] {
            let filter = EnvFilter::try_new(filter_directives(level)).unwrap();
            let subscriber = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                assert!(
                    !tracing::enabled!(target: "aws_smithy_runtime::client", tracing::Level::DEBUG)
                );
                assert!(!tracing::enabled!(target: "aws_config::profile", tracing::Level::INFO));
                assert!(tracing::enabled!(target: "omnidisk::csi", tracing::Level::DEBUG));
                assert!(
                    tracing::enabled!(target: "omnidisk_provider_aws_ebs::client", tracing::Level::DEBUG)
                );
            });
        }
    }
}

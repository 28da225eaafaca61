//! Dylib providers: loading a provider library through the stable C ABI and
//! adapting it into an `Arc<dyn Provider>`.
//!
//! The rest of the driver never learns that a provider came from a dylib:
//! [`load`] returns the same trait object a compiled-in factory does. What
//! happens here, in order:
//!
//! 1. [`library`] resolves the configured file inside the plugin directory
//!    and refuses it unless root owns it and the directory, and neither is
//!    writable by group or others (loading runs the library's constructors,
//!    so the check must come first).
//! 2. The library is opened and never closed; its version symbol is read so
//!    that a major mismatch names both versions; the versioned entry symbol
//!    gives the function table.
//! 3. The instance is created with its settings and the host's log callback
//!    ([`host_log`]), its `info` is read and its kind checked.
//! 4. [`adapter::DylibProvider`] serves every trait method by encoding the
//!    request, calling the dylib on a blocking thread with a timeout and
//!    decoding the answer.
//!
//! All `unsafe` of the import side is in this module tree.

#![allow(unsafe_code)]

mod adapter;
mod host_log;
mod library;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnidisk_provider_api::ffi::abi::{ABI_MAJOR, AbiVersion};
use omnidisk_provider_api::types::InitRequest;
use omnidisk_provider_api::{Provider, ProviderError};

pub use adapter::DylibProvider;

/// Why a provider library could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin directory cannot be resolved or read.
    #[error("cannot use plugin directory {dir}")]
    PluginDir {
        /// The configured directory.
        dir: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The plugin directory is not trustworthy.
    #[error("refusing plugin directory {dir}: {reason}")]
    InsecurePluginDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The library file does not exist.
    #[error("provider library {path} does not exist")]
    MissingFile {
        /// The path looked at.
        path: PathBuf,
    },
    /// The library file exists but cannot be inspected.
    #[error("cannot inspect provider library {path}")]
    Inaccessible {
        /// The path looked at.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The library resolves to a file outside the plugin directory.
    #[error("provider library {path} is not directly inside the plugin directory {dir}")]
    OutsidePluginDir {
        /// The path after resolving symbolic links.
        path: PathBuf,
        /// The plugin directory.
        dir: PathBuf,
    },
    /// The library file is not trustworthy (owner or mode) or not a file.
    #[error("refusing provider library {path}: {reason}")]
    InsecureFile {
        /// The library.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The dynamic loader refused the file.
    #[error("cannot load provider library {path}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// A required symbol is absent.
    #[error(
        "provider library {path} does not export {symbol}: it is not an omnidisk provider for \
         ABI {host}"
    )]
    MissingSymbol {
        /// The library.
        path: PathBuf,
        /// The missing symbol.
        symbol: &'static str,
        /// The driver's ABI version.
        host: AbiVersion,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// The library speaks another major version of the ABI.
    #[error(
        "provider library {path} was built for provider ABI {library}, but this driver speaks \
         ABI {host}: the major versions differ, rebuild it against omnidisk-provider-api with \
         ABI {}.x",
        host.major
    )]
    AbiMajorMismatch {
        /// The library.
        path: PathBuf,
        /// The library's version.
        library: AbiVersion,
        /// The driver's version.
        host: AbiVersion,
    },
    /// The entry symbol returned no table or an unusable one.
    #[error(
        "provider library {path} (ABI {version}) returned an unusable function table: {reason}"
    )]
    BadTable {
        /// The library.
        path: PathBuf,
        /// The version the library reported.
        version: AbiVersion,
        /// What is wrong with the table.
        reason: String,
    },
    /// The library refused to create the instance.
    #[error("provider library {path} could not create instance {instance}")]
    Init {
        /// The library.
        path: PathBuf,
        /// The instance name.
        instance: String,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// Loading or creating the instance took longer than the call timeout.
    #[error("provider library {path} did not create instance {instance} within {timeout:?}")]
    InitTimeout {
        /// The library.
        path: PathBuf,
        /// The instance name.
        instance: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The loading thread itself failed.
    #[error("loading provider library {path} failed on its loader thread")]
    LoaderThread {
        /// The library.
        path: PathBuf,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The instance's `info` call failed.
    #[error("provider library {path} could not describe instance {instance}")]
    Info {
        /// The library.
        path: PathBuf,
        /// The instance name.
        instance: String,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// The library provides a different kind than the configuration says.
    #[error(
        "provider library {path} provides kind {reported:?}, but instance {instance} is \
         configured as kind {configured:?}"
    )]
    KindMismatch {
        /// The library.
        path: PathBuf,
        /// The instance name.
        instance: String,
        /// The configured kind.
        configured: String,
        /// The kind the library reported.
        reported: String,
    },
}

/// The driver's ABI version, as reported in errors.
pub const HOST_ABI: AbiVersion = AbiVersion::CURRENT;

/// Loads the provider library `library` (a file name, or a path that must
/// resolve directly inside `plugin_dir`), creates the instance described by
/// `init` and returns it as a provider.
///
/// `expected_kind`, when given, must equal the kind the library reports.
/// Every later call (and the creation itself) that takes longer than
/// `call_timeout` fails with `DeadlineExceeded`; the blocked thread is
/// abandoned, never the async executor. The library is never unloaded.
pub async fn load(
    library: &Path,
    plugin_dir: &Path,
    expected_kind: Option<&str>,
    init: InitRequest,
    call_timeout: Duration,
) -> Result<Arc<dyn Provider>, PluginError> {
    debug_assert_eq!(HOST_ABI.major, ABI_MAJOR);
    let path = library::resolve(library, plugin_dir)?;
    let instance = init.instance.clone();

    let opening = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || library::open_and_create(&path, &init))
    };
    let created = match tokio::time::timeout(call_timeout, opening).await {
        Err(_) => {
            return Err(PluginError::InitTimeout {
                path,
                instance,
                timeout: call_timeout,
            });
        }
        Ok(Err(source)) => return Err(PluginError::LoaderThread { path, source }),
        Ok(Ok(created)) => created?,
    };

    let provider = DylibProvider::new(created, path.clone(), instance.clone(), call_timeout)
        .await
        .map_err(|source| PluginError::Info {
            path: path.clone(),
            instance: instance.clone(),
            source,
        })?;
    let reported = provider.info().kind;
    if let Some(configured) = expected_kind.filter(|configured| *configured != reported) {
        return Err(PluginError::KindMismatch {
            path,
            instance,
            configured: configured.to_owned(),
            reported,
        });
    }
    tracing::info!(
        library = %path.display(),
        instance = %instance,
        kind = %reported,
        abi = %provider.abi_version(),
        sdk = %provider.sdk_version(),
        "loaded provider library"
    );
    Ok(Arc::new(provider))
}

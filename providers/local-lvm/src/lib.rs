//! The `local-lvm` omnidisk provider: node-local volumes as LVM logical
//! volumes, thick (linear LVs, classic snapshots) or thin (LVs in a thin
//! pool, thin snapshots).
//!
//! lvm2 is driven through its command line ([`lvm::command`]) with JSON
//! reports ([`lvm::report`]); failures are typed ([`lvm::error`]) and get
//! their [`ErrorKind`](omnidisk_provider_api::ErrorKind) in one place
//! ([`errors`]). Settings are documented in [`settings`], naming and tags in
//! [`names`], the storage behaviour in [`provider`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod device;
pub mod errors;
pub mod lvm;
pub mod names;
pub mod provider;
pub mod settings;

use std::sync::Arc;

use omnidisk_provider_api::{Provider, ProviderFactory};

pub use provider::{KIND, LvmProvider, TOPOLOGY_KEY};
pub use settings::Settings;

/// Creates `local-lvm` instances. Creation only validates the settings; it
/// does not run lvm, so the driver starts even before the volume group
/// exists (calls then fail with a clear error until it does).
pub const FACTORY: ProviderFactory = ProviderFactory {
    kind: KIND,
    create: |init| {
        Box::pin(async move {
            let provider = LvmProvider::from_init(&init)?;
            Ok(Arc::new(provider) as Arc<dyn Provider>)
        })
    },
};

// The cdylib's exports; the rlib linked into the driver carries none.
#[cfg(feature = "dylib")]
omnidisk_provider_api::export_provider!(FACTORY);

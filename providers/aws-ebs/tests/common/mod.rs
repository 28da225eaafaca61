//! What the moto-backed tests and the budget benchmark share on top of the
//! crate's `moto` module: the skip-or-fail rule and the provider settings
//! they run with.

#![allow(dead_code)] // each includer uses a different subset

pub use omnidisk_provider_aws_ebs::moto::{Moto, ZONE};

/// Whether missing prerequisites must fail instead of skip.
pub fn require_all() -> bool {
    std::env::var("OMNIDISK_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Starts moto for `test`. When it cannot start, the test fails under
/// `OMNIDISK_REQUIRE_ALL=1` and otherwise says SKIPPED and gets `None`.
pub fn start_moto(test: &str) -> Option<Moto> {
    match Moto::start() {
        Ok(moto) => Some(moto),
        Err(e) if require_all() => {
            panic!("{test}: moto is required (OMNIDISK_REQUIRE_ALL=1) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// Provider settings against `moto`; `waits` is appended verbatim (empty
/// for the production defaults).
pub fn settings_toml(moto: &Moto, waits: &str) -> String {
    moto.settings_toml(&format!(
        "cluster_id = \"test-cluster\"\napi_timeout_seconds = 10\n{waits}"
    ))
}

/// Short waits for tests: moto answers in milliseconds.
pub const FAST_WAITS: &str = r#"
[waits]
poll_initial_ms = 50
poll_max_ms = 500
batch_window_ms = 20
create_seconds = 30
attach_seconds = 30
detach_seconds = 30
modify_seconds = 30
"#;

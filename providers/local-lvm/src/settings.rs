//! Instance settings of a `local-lvm` provider (the TOML table of one
//! `[providers.<name>]` entry, `kind` removed).
//!
//! ```toml
//! [providers.fast]
//! kind = "local-lvm"
//! volume_group = "nvme"            # default "omnidisk"
//! spare_gib = 10                   # default 0
//! lvm_path = "/sbin/lvm"           # default "lvm" (looked up in PATH)
//! command_prefix = ["nsenter", "--mount=/proc/1/ns/mnt", "--"]  # default []
//! device_root = "/dev"             # default "/dev"
//! device_wait_seconds = 10         # default 10
//! command_timeout_seconds = 120    # default 120
//! # lvm_config = "devices{use_devicesfile=0}"   # default none
//! [providers.fast.thin_pool]       # absent = thick (linear) volumes
//! name = "pool0"
//! overprovision_ratio = 5.0        # default 1.0
//! ```
//!
//! Every setting has a default, so an empty table (the driver started
//! without a configuration) gives a working instance on VG `omnidisk`.

use std::path::PathBuf;
use std::time::Duration;

use omnidisk_provider_api::Result;
use omnidisk_provider_api::params::parse_settings;
use serde::Deserialize;

use crate::lvm::{LvName, NameError, VgName};

/// Longest `lvm_config` text accepted.
const MAX_LVM_CONFIG_LEN: usize = 4096;

/// Settings of one local-lvm instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The volume group volumes are carved from. It must exist; this
    /// provider never creates or changes volume groups.
    pub volume_group: String,
    /// Present: volumes are thin LVs in this pool (which must exist), and
    /// snapshots and clones are thin snapshots. Absent: volumes are linear
    /// ("thick") LVs and snapshots are classic copy-on-write snapshots.
    pub thin_pool: Option<ThinPoolSettings>,
    /// GiB kept out of the reported capacity and refused to new volumes, so
    /// the VG (thick) or the pool's overprovisioned size (thin) never fills
    /// completely. Default 0: a VG dedicated to the driver can be used in
    /// full; set it when other LVs (or thin pool autoextend) share the VG.
    /// TopoLVM's equivalent, `spare-gb`, defaults to 10.
    pub spare_gib: u64,
    /// The lvm binary (a path, or a name looked up in PATH).
    pub lvm_path: String,
    /// Words run before the lvm binary, e.g.
    /// `["nsenter", "--mount=/proc/1/ns/mnt", "--"]` so a containerised
    /// driver uses the host's lvm, locks and /dev.
    pub command_prefix: Vec<String>,
    /// Where device nodes appear: the device of LV `lv` in VG `vg` is
    /// `<device_root>/<vg>/<lv>`. Tests point this at a directory.
    pub device_root: PathBuf,
    /// How long `find_device` waits for an activated LV's device node.
    pub device_wait_seconds: u64,
    /// How long one lvm command may run before it is killed (lvm waits for
    /// its VG lock, which a stuck command can hold forever).
    pub command_timeout_seconds: u64,
    /// Extra lvm configuration passed as `--config <text>` to every lvm
    /// command, e.g. `"devices{use_devicesfile=0}"`, or
    /// `"global{activation=0}"` for metadata-only tests without
    /// device-mapper. One line of printable ASCII without `'`, `\` or a
    /// backquote, and with balanced braces.
    pub lvm_config: Option<String>,
}

/// The thin pool of a thin instance.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThinPoolSettings {
    /// The pool LV's name in `volume_group`.
    pub name: String,
    /// How many times the pool's size the thin volumes' virtual sizes may
    /// add up to. 1.0 never overcommits; more trusts that volumes are not
    /// filled at once.
    #[serde(default = "default_ratio")]
    pub overprovision_ratio: f64,
}

fn default_ratio() -> f64 {
    1.0
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            volume_group: "omnidisk".into(),
            thin_pool: None,
            spare_gib: 0,
            lvm_path: "lvm".into(),
            command_prefix: Vec::new(),
            device_root: PathBuf::from("/dev"),
            device_wait_seconds: 10,
            command_timeout_seconds: 120,
            lvm_config: None,
        }
    }
}

/// A setting that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `volume_group` is not a valid VG name.
    #[error("setting `volume_group`")]
    VolumeGroup(#[source] NameError),
    /// `thin_pool.name` is not a valid LV name.
    #[error("setting `thin_pool.name`")]
    ThinPool(#[source] NameError),
    /// `thin_pool.overprovision_ratio` is below 1 or not a number.
    #[error("setting `thin_pool.overprovision_ratio` must be a number >= 1.0, got {0}")]
    Ratio(f64),
    /// `spare_gib` does not fit in bytes.
    #[error("setting `spare_gib` is too large: {0}")]
    Spare(u64),
    /// `lvm_path` or a `command_prefix` word is empty or contains NUL.
    #[error("setting `{0}` has an empty word or a NUL character")]
    Command(&'static str),
    /// `device_root` is not an absolute path.
    #[error("setting `device_root` must be an absolute path, got {0:?}")]
    DeviceRoot(PathBuf),
    /// A timeout of zero.
    #[error("setting `{0}` must be at least 1")]
    ZeroSeconds(&'static str),
    /// `lvm_config` contains something that is not lvm configuration.
    #[error("setting `lvm_config` {0}")]
    LvmConfig(&'static str),
}

/// Settings after validation, in the types the provider uses.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The raw settings.
    pub raw: Settings,
    /// The volume group.
    pub vg: VgName,
    /// The thin pool and its ratio, for thin instances.
    pub thin: Option<(LvName, f64)>,
    /// `spare_gib` in bytes.
    pub spare_bytes: u64,
    /// `device_wait_seconds`.
    pub device_wait: Duration,
    /// `command_timeout_seconds`.
    pub command_timeout: Duration,
}

impl Settings {
    /// Parses and validates the TOML settings of an instance.
    pub fn from_toml(text: &str) -> Result<Validated> {
        let raw: Settings = parse_settings(text)?;
        raw.validate().map_err(crate::errors::settings_error)
    }

    /// Checks every value and converts it.
    pub fn validate(self) -> std::result::Result<Validated, SettingsError> {
        let vg = VgName::new(&self.volume_group).map_err(SettingsError::VolumeGroup)?;
        let thin = match &self.thin_pool {
            None => None,
            Some(pool) => {
                let name = LvName::new(&pool.name).map_err(SettingsError::ThinPool)?;
                let ratio = pool.overprovision_ratio;
                if !ratio.is_finite() || ratio < 1.0 {
                    return Err(SettingsError::Ratio(ratio));
                }
                Some((name, ratio))
            }
        };
        let spare_bytes = self
            .spare_gib
            .checked_mul(1 << 30)
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or(SettingsError::Spare(self.spare_gib))?;
        let bad_word = |w: &String| w.is_empty() || w.contains('\0');
        if bad_word(&self.lvm_path) {
            return Err(SettingsError::Command("lvm_path"));
        }
        if self.command_prefix.iter().any(bad_word) {
            return Err(SettingsError::Command("command_prefix"));
        }
        if !self.device_root.is_absolute() {
            return Err(SettingsError::DeviceRoot(self.device_root));
        }
        if self.device_wait_seconds == 0 {
            return Err(SettingsError::ZeroSeconds("device_wait_seconds"));
        }
        if self.command_timeout_seconds == 0 {
            return Err(SettingsError::ZeroSeconds("command_timeout_seconds"));
        }
        if let Some(config) = &self.lvm_config {
            check_lvm_config(config)?;
        }
        Ok(Validated {
            vg,
            thin,
            spare_bytes,
            device_wait: Duration::from_secs(self.device_wait_seconds),
            command_timeout: Duration::from_secs(self.command_timeout_seconds),
            raw: self,
        })
    }
}

/// The text is handed to lvm as one argument (no shell), so quoting cannot
/// escape; the checks keep it to what lvm configuration looks like, so a
/// typo or a pasted multi-line file is refused at start-up.
fn check_lvm_config(config: &str) -> std::result::Result<(), SettingsError> {
    if config.trim().is_empty() {
        return Err(SettingsError::LvmConfig("is empty"));
    }
    if config.len() > MAX_LVM_CONFIG_LEN {
        return Err(SettingsError::LvmConfig("is longer than 4096 characters"));
    }
    if config.chars().any(|c| !(' '..='~').contains(&c)) {
        return Err(SettingsError::LvmConfig(
            "must be one line of printable ASCII (no newlines or tabs)",
        ));
    }
    if config.chars().any(|c| matches!(c, '\'' | '\\' | '`')) {
        return Err(SettingsError::LvmConfig("must not contain ', \\ or `"));
    }
    if config.matches('"').count() % 2 != 0 {
        return Err(SettingsError::LvmConfig("has an unbalanced double quote"));
    }
    let mut depth: i32 = 0;
    for c in config.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 {
        return Err(SettingsError::LvmConfig("has unbalanced braces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnidisk_provider_api::ErrorKind;

    #[test]
    fn empty_settings_are_the_defaults() {
        let v = Settings::from_toml("").unwrap();
        assert_eq!(v.raw, Settings::default());
        assert_eq!(v.vg.as_str(), "omnidisk");
        assert!(v.thin.is_none());
        assert_eq!(v.spare_bytes, 0);
        assert_eq!(v.device_wait, Duration::from_secs(10));
    }

    #[test]
    fn a_full_table_parses() {
        let v = Settings::from_toml(
            r#"
volume_group = "nvme"
spare_gib = 2
lvm_path = "/sbin/lvm"
command_prefix = ["nsenter", "--mount=/proc/1/ns/mnt", "--"]
device_root = "/host/dev"
device_wait_seconds = 3
command_timeout_seconds = 30
lvm_config = 'global{activation=0} devices{global_filter=["a|^/dev/loop7$|","r|.*|"]}'
[thin_pool]
name = "pool0"
"#,
        )
        .unwrap();
        assert_eq!(v.vg.as_str(), "nvme");
        let (pool, ratio) = v.thin.unwrap();
        assert_eq!(pool.as_str(), "pool0");
        assert_eq!(ratio, 1.0);
        assert_eq!(v.spare_bytes, 2 << 30);
        assert_eq!(v.raw.command_prefix.len(), 3);
        assert_eq!(v.device_wait, Duration::from_secs(3));
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let err = Settings::from_toml("volume_grop = \"x\"").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("volume_grop"), "{}", err.message());
        let err = Settings::from_toml("[thin_pool]\nname = \"p\"\nratio = 2.0").unwrap_err();
        assert!(err.message().contains("ratio"), "{}", err.message());
    }

    #[test]
    fn values_are_validated() {
        let cases = [
            ("volume_group = \"a/b\"", "volume_group"),
            ("[thin_pool]\nname = \"p_tmeta\"", "thin_pool.name"),
            (
                "[thin_pool]\nname = \"p\"\noverprovision_ratio = 0.5",
                "overprovision_ratio",
            ),
            ("lvm_path = \"\"", "lvm_path"),
            ("command_prefix = [\"nsenter\", \"\"]", "command_prefix"),
            ("device_root = \"dev\"", "device_root"),
            ("device_wait_seconds = 0", "device_wait_seconds"),
            ("spare_gib = 99999999999999", "spare_gib"),
        ];
        for (text, key) in cases {
            let err = Settings::from_toml(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{text}");
            assert!(
                err.full_message().contains(key),
                "{text}: {}",
                err.full_message()
            );
        }
    }

    #[test]
    fn lvm_config_is_checked() {
        for bad in [
            "global{activation=0}\ndevices{}",
            "global{activation=0",
            "a}{",
            "x='y'",
            "devices{filter=[\"a|x|]}",
            "  ",
            "tab\there",
        ] {
            assert!(check_lvm_config(bad).is_err(), "{bad:?} was accepted");
        }
        check_lvm_config("global{activation=0} devices{filter=[\"a|.*|\"]}").unwrap();
    }
}

//! The driver's TOML configuration: driver-wide settings, node settings and
//! the provider instances.
//!
//! ```toml
//! [driver]
//! plugin_dir = "/usr/lib/omnidisk/providers"
//!
//! [node]
//! default_fs_type = "ext4"
//!
//! [providers.fast]            # StorageClass `type: fast`
//! kind = "local-lvm"
//! volume_group = "nvme"
//! ```
//!
//! Errors name the file, the line and the key. The file usually holds
//! credentials (it is mounted from a Secret), so its contents are never
//! logged; only key names and line numbers appear in messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::NodeSettings;
use crate::ids::is_valid_instance_name;

/// Driver-wide settings (`[driver]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverSettings {
    /// The only directory dylib providers are loaded from.
    pub plugin_dir: PathBuf,
    /// Longest a single dylib provider call may take before it fails with
    /// DeadlineExceeded.
    pub provider_call_timeout_seconds: u64,
}

impl Default for DriverSettings {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from("/usr/lib/omnidisk/providers"),
            provider_call_timeout_seconds: 600,
        }
    }
}

/// One `[providers.<name>]` table.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The instance name.
    pub name: String,
    /// The provider kind (`local-lvm`, `aws-ebs`, ...). For a dylib, the kind
    /// the library must report (optional).
    pub kind: Option<String>,
    /// A dylib provider, relative to or inside `driver.plugin_dir`.
    pub library: Option<PathBuf>,
    /// The remaining keys: the provider's own settings, as TOML text.
    pub settings_toml: String,
}

/// The whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it came from (for messages); `None` for built-in defaults.
    pub path: Option<PathBuf>,
    /// `[driver]`.
    pub driver: DriverSettings,
    /// `[node]`.
    pub node: NodeSettings,
    /// `[providers.*]`, by name.
    pub instances: Vec<InstanceConfig>,
    text: String,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type in the driver's own tables.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Line, column and toml's message; never the text of the line, which
        /// may hold a credential (see [`parse_error_message`]).
        message: String,
    },
    /// A problem with one key, located in the file.
    #[error("{path}:{line}: `{key}`: {message}")]
    Key {
        /// The file.
        path: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    driver: DriverSettings,
    #[serde(default)]
    node: NodeSettings,
    #[serde(default)]
    providers: BTreeMap<String, toml::Table>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parses configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let shown = display_path(path);
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: parse_error_message(text, &e),
        })?;
        let mut config = Config {
            path: path.map(Path::to_owned),
            driver: raw.driver,
            node: raw.node,
            instances: Vec::new(),
            text: text.to_owned(),
        };
        for (name, mut table) in raw.providers {
            if !is_valid_instance_name(&name) {
                return Err(config.key_error(
                    &["providers", &name],
                    "instance names must be lower-case DNS labels (a-z, 0-9, '-', at most 63 characters)",
                ));
            }
            let kind = take_string(&mut table, "kind")
                .map_err(|m| config.key_error(&["providers", &name, "kind"], &m))?;
            let library = take_string(&mut table, "library")
                .map_err(|m| config.key_error(&["providers", &name, "library"], &m))?
                .map(PathBuf::from);
            if kind.is_none() && library.is_none() {
                return Err(config.key_error(
                    &["providers", &name],
                    "missing required key `kind` (or `library` for a dylib provider)",
                ));
            }
            let settings_toml = toml::to_string(&table).map_err(|e| {
                config.key_error(
                    &["providers", &name],
                    &format!("cannot re-encode settings: {e}"),
                )
            })?;
            config.instances.push(InstanceConfig {
                name,
                kind,
                library,
                settings_toml,
            });
        }
        Ok(config)
    }

    /// An error about `key` (a dotted path in the file), with its line.
    pub fn key_error(&self, key: &[&str], message: &str) -> ConfigError {
        ConfigError::Key {
            path: display_path(self.path.as_deref()),
            line: line_of(&self.text, key).unwrap_or(0),
            key: key.join("."),
            message: message.to_owned(),
        }
    }

    /// An error reported by an instance's provider while reading its
    /// settings. Providers name the key as "setting `a.b`: ..."; that key is
    /// located in the file.
    pub fn instance_error(&self, instance: &str, message: &str) -> ConfigError {
        let mut key: Vec<&str> = vec!["providers", instance];
        if let Some(rest) = message.strip_prefix("setting `") {
            if let Some((path, _)) = rest.split_once('`') {
                key.extend(path.split('.').filter(|p| !p.is_empty()));
            }
        }
        self.key_error(&key, message)
    }
}

fn display_path(path: Option<&Path>) -> String {
    path.map_or_else(
        || "<built-in configuration>".into(),
        |p| p.display().to_string(),
    )
}

/// `line L, column C: <toml's message>` for a parse error in `text`.
///
/// toml's own `Display` quotes the offending line, and in a configuration
/// file that line can be a credential (a misspelt `secret_access_key = "..."`
/// or an unterminated string), which would land in the start-up log. The
/// message alone names what is wrong; a string value it quotes (serde's
/// `invalid type: string "..."`) is hidden as well.
fn parse_error_message(text: &str, err: &toml::de::Error) -> String {
    let message = hide_quoted_strings(err.message().trim_end());
    let Some(span) = err.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    // The key of that line, when the line has the `key = value` shape: the
    // name helps and is not a value.
    let line_text = text
        .get(before.rfind('\n').map_or(0, |i| i + 1)..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let key = line_text
        .split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty()
                && key.len() <= 64
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        });
    match key {
        Some(key) => format!("line {line}, column {column}, `{key}`: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// Replaces the contents of `string "..."` in a serde message with `(hidden)`.
fn hide_quoted_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len()]);
        rest = &rest[at + MARK.len()..];
        match rest.find('"') {
            Some(end) => {
                out.push_str("(hidden)\"");
                rest = &rest[end + 1..];
            }
            None => {
                out.push_str("(hidden)");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn take_string(table: &mut toml::Table, key: &str) -> Result<Option<String>, String> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(other) => Err(format!(
            "expected a non-empty string, found {}",
            other.type_str()
        )),
    }
}

/// The 1-based line of a dotted key in TOML text, as deep as it can be
/// found (a missing leaf falls back to its table).
fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let doc = toml_edit::Document::parse(text.to_owned()).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut best: Option<usize> = None;
    for part in path {
        let Some((key, item)) = table.get_key_value(part) else {
            break;
        };
        if let Some(span) = key.span().or_else(|| item.span()) {
            best = Some(text[..span.start].matches('\n').count() + 1);
        }
        match item.as_table_like() {
            Some(next) => table = next,
            None => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[driver]
plugin_dir = "/opt/plugins"

[node]
default_fs_type = "xfs"

[providers.fast]
kind = "local-lvm"
volume_group = "nvme"

[providers.ext]
library = "libext.so"
kind = "example"
"#;

    #[test]
    fn parse_errors_name_the_place_but_never_show_the_line() {
        const CANARY: &str = "CANARYs3cr3tVALUE";
        let creds =
            "[providers.e]\nkind = \"aws-ebs\"\n[providers.e.credentials]\nsource = \"static\"\n";
        // (file text, line the error is on)
        let cases: Vec<(String, usize)> = vec![
            // an unterminated string
            (format!("{creds}secret_access_key = \"{CANARY}\n"), 5),
            // a value without quotes
            (format!("{creds}secret_access_key = {CANARY}\n"), 5),
            // a bad escape
            (format!("{creds}secret_access_key = \"{CANARY}\\q\"\n"), 5),
            // a key given twice
            (
                format!("{creds}access_key_id = \"A\"\naccess_key_id = \"{CANARY}\"\n"),
                6,
            ),
            // a misspelt key of the driver's own tables
            (format!("[node]\nkubelet_dirr = \"{CANARY}\"\n"), 2),
            // a string where a number belongs (serde quotes the value)
            (format!("[node]\nmax_volumes_per_node = \"{CANARY}\"\n"), 2),
            // a newline inside a basic string, the secret on the next line
            // (toml reports the line after it, which has no `=`)
            (format!("[node]\ndefault_fs_type = \"ext4\n{CANARY}\"\n"), 3),
        ];
        for (text, line) in cases {
            let err = Config::parse(&text, Some(Path::new("/etc/omnidisk/omnidisk.toml")))
                .expect_err(&text);
            let shown = err.to_string();
            assert!(!shown.contains("CANARY"), "{text:?} -> {shown}");
            assert!(
                shown.starts_with(&format!(
                    "/etc/omnidisk/omnidisk.toml: line {line}, column "
                )),
                "{text:?} -> {shown}"
            );
        }
    }

    #[test]
    fn a_good_file_parses() {
        let c = Config::parse(GOOD, Some(Path::new("/etc/omnidisk.toml"))).unwrap();
        assert_eq!(c.driver.plugin_dir, PathBuf::from("/opt/plugins"));
        assert_eq!(c.node.default_fs_type, "xfs");
        assert_eq!(c.instances.len(), 2);
        let fast = c.instances.iter().find(|i| i.name == "fast").unwrap();
        assert_eq!(fast.kind.as_deref(), Some("local-lvm"));
        assert!(fast.settings_toml.contains("volume_group = \"nvme\""));
        assert!(!fast.settings_toml.contains("kind"));
        let ext = c.instances.iter().find(|i| i.name == "ext").unwrap();
        assert_eq!(ext.library.as_deref(), Some(Path::new("libext.so")));
    }

    #[test]
    fn unknown_driver_keys_name_file_line_and_key() {
        let text = "[driver]\nplugin_dir = \"/x\"\nplugin_dri = \"/y\"\n";
        let err = Config::parse(text, Some(Path::new("/etc/o.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/o.toml: "), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("plugin_dri"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let text = "[node]\nmax_volumes_per_node = \"many\"\n";
        let err = Config::parse(text, None).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("max_volumes_per_node"), "{err}");
    }

    #[test]
    fn instances_need_a_kind_and_a_valid_name() {
        let err = Config::parse(
            "[providers.a]\nvolume_group = \"x\"\n",
            Some(Path::new("c.toml")),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "c.toml:1: `providers.a`: missing required key `kind` (or `library` for a dylib provider)"
        );
        let err = Config::parse("[providers.Bad_Name]\nkind = \"x\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.Bad_Name"), "{err}");
        let err = Config::parse("[providers.a]\nkind = 3\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2: `providers.a.kind`"), "{err}");
    }

    #[test]
    fn provider_setting_errors_are_located() {
        let c = Config::parse(GOOD, Some(Path::new("o.toml"))).unwrap();
        let err = c
            .instance_error("fast", "setting `volume_group`: invalid type")
            .to_string();
        assert_eq!(
            err,
            "o.toml:10: `providers.fast.volume_group`: setting `volume_group`: invalid type"
        );
        let err = c
            .instance_error("fast", "setting `nope`: unknown field")
            .to_string();
        assert!(err.starts_with("o.toml:8: `providers.fast.nope`"), "{err}");
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let c = Config::parse("", None).unwrap();
        assert!(c.instances.is_empty());
        assert_eq!(c.node.device_root, PathBuf::from("/dev"));
    }
}

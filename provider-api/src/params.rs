//! Helpers for the two kinds of input a provider parses: StorageClass
//! parameters (a string map) and its instance settings (a TOML table).

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::error::{ProviderError, Result};

/// Prefix of the keys the Kubernetes sidecars add to StorageClass parameters.
pub const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// A StorageClass parameter map being consumed key by key. Keys match
/// case-insensitively; keys under `csi.storage.k8s.io/` are ignored.
/// [`Params::finish`] fails on any key nobody took, naming it.
#[derive(Debug)]
pub struct Params {
    what: &'static str,
    remaining: BTreeMap<String, String>,
    accepted: Vec<&'static str>,
}

impl Params {
    /// Starts consuming `map`. `what` names the map in errors
    /// (e.g. "local-lvm StorageClass parameter").
    pub fn new(what: &'static str, map: &BTreeMap<String, String>) -> Self {
        Self {
            what,
            remaining: map
                .iter()
                .filter(|(k, _)| !k.starts_with(SIDECAR_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            accepted: Vec::new(),
        }
    }

    /// Removes and returns the raw value of `key`.
    pub fn take(&mut self, key: &'static str) -> Option<String> {
        self.accepted.push(key);
        let found = self
            .remaining
            .keys()
            .find(|k| k.eq_ignore_ascii_case(key))
            .cloned()?;
        self.remaining.remove(&found)
    }

    /// Removes every key starting with `prefix` (case-insensitive), returning
    /// (rest of key, value) pairs in key order.
    pub fn take_prefixed(&mut self, prefix: &'static str) -> Vec<(String, String)> {
        self.accepted.push(prefix);
        let keys: Vec<String> = self
            .remaining
            .keys()
            .filter(|k| k.len() >= prefix.len() && k[..prefix.len()].eq_ignore_ascii_case(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.remaining.remove(&k)?;
                Some((k[prefix.len()..].to_owned(), v))
            })
            .collect()
    }

    /// Removes `key` and parses it with `FromStr`.
    pub fn take_parsed<T: FromStr>(&mut self, key: &'static str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.take(key) {
            None => Ok(None),
            Some(raw) => raw.trim().parse::<T>().map(Some).map_err(|e| {
                ProviderError::invalid_argument(format!(
                    "{} `{key}`: cannot parse {raw:?}: {e}",
                    self.what
                ))
            }),
        }
    }

    /// Removes `key` and parses it as a boolean (`true/false/yes/no/1/0`,
    /// also `enabled/disabled`).
    pub fn take_bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" | "enabled" | "on" => Ok(Some(true)),
                "false" | "no" | "0" | "disabled" | "off" => Ok(Some(false)),
                _ => Err(ProviderError::invalid_argument(format!(
                    "{} `{key}`: expected true or false, got {raw:?}",
                    self.what
                ))),
            },
        }
    }

    /// Fails if any key was not taken, naming the first unknown key and the
    /// accepted ones.
    pub fn finish(self) -> Result<()> {
        match self.remaining.keys().next() {
            None => Ok(()),
            Some(key) => {
                let mut accepted = self.accepted.clone();
                accepted.sort_unstable();
                accepted.dedup();
                Err(ProviderError::invalid_argument(format!(
                    "unknown {} `{key}` (accepted: {})",
                    self.what,
                    accepted.join(", ")
                )))
            }
        }
    }
}

/// Parses an instance's settings (the TOML text handed over in
/// `InitRequest::settings_toml`) into `T`. Errors name the offending key
/// path, e.g. "setting `thin_pool.name`: invalid type ...". Use
/// `#[serde(deny_unknown_fields)]` on `T` so misspelt keys are refused.
pub fn parse_settings<T: DeserializeOwned>(settings_toml: &str) -> Result<T> {
    let deserializer = toml::Deserializer::parse(settings_toml).map_err(|e| {
        ProviderError::invalid_argument(format!("settings are not valid TOML: {}", e.message()))
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ProviderError::invalid_argument(format!("setting `{path}`: {}", inner.message()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn params_are_taken_case_insensitively_and_sidecar_keys_ignored() {
        let m = map(&[
            ("IOPS", "3000"),
            ("encrypted", "yes"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]);
        let mut p = Params::new("test parameter", &m);
        assert_eq!(p.take_parsed::<u32>("iops").unwrap(), Some(3000));
        assert_eq!(p.take_bool("encrypted").unwrap(), Some(true));
        assert_eq!(p.take("missing"), None);
        p.finish().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let m = map(&[("iops", "1"), ("iosp", "2")]);
        let mut p = Params::new("test parameter", &m);
        let _ = p.take("iops");
        let err = p.finish().unwrap_err();
        assert!(err.message().contains("`iosp`"), "{}", err.message());
        assert!(err.message().contains("iops"), "{}", err.message());
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let m = map(&[("iops", "lots"), ("thin", "maybe")]);
        let mut p = Params::new("test parameter", &m);
        let err = p.take_parsed::<u32>("iops").unwrap_err();
        assert!(err.message().contains("`iops`") && err.message().contains("lots"));
        let err = p.take_bool("thin").unwrap_err();
        assert!(err.message().contains("`thin`"));
    }

    #[test]
    fn prefixed_keys_are_collected() {
        let m = map(&[("tagSpecification_1", "a=b"), ("tagspecification_2", "c=d")]);
        let mut p = Params::new("test parameter", &m);
        let tags = p.take_prefixed("tagSpecification_");
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].1, "a=b");
        p.finish().unwrap();
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        volume_group: String,
        #[serde(default)]
        pool: Option<Pool>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Pool {
        name: String,
        ratio: f64,
    }

    #[test]
    fn settings_errors_name_the_key_path() {
        let err =
            parse_settings::<Settings>("volume_group = \"vg\"\nvolumegroup = 1\n").unwrap_err();
        assert!(err.message().contains("volumegroup"), "{}", err.message());
        let err = parse_settings::<Settings>(
            "volume_group = \"vg\"\n[pool]\nname = \"p\"\nratio = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.message().contains("pool.ratio"), "{}", err.message());
        let ok = parse_settings::<Settings>("volume_group = \"vg\"\n").unwrap();
        assert_eq!(ok.volume_group, "vg");
    }
}

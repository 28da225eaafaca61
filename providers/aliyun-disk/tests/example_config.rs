//! The example configuration `config/aliyun-disk.toml` parses into this
//! provider's settings, so the documented keys cannot drift from the code.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use omnidisk_provider_aliyun_disk::AliyunSettings;
use omnidisk_provider_api::params::parse_settings;

#[test]
fn example_config_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/aliyun-disk.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let mut instance = doc["providers"]["ali-hz"].as_table().unwrap().clone();
    assert_eq!(
        instance.remove("kind").unwrap().as_str(),
        Some("aliyun-disk")
    );
    let settings: AliyunSettings = parse_settings(&toml::to_string(&instance).unwrap()).unwrap();
    assert_eq!(settings.region_id, "cn-hangzhou");
    assert_eq!(settings.api_timeout_seconds, 30);
    assert_eq!(settings.extra_tags["cluster"], "prod-hz");
    assert_eq!(settings.node.device_root, "/dev");
}

//! Credentials never leave the process through an error: with RPC signing
//! the AccessKeyId, the STS token and the signature travel in the request
//! URL, which the HTTP client would otherwise copy into its errors, and ECS
//! quotes the string to sign (every signed parameter) when a signature does
//! not match.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use omnidisk_provider_aliyun_disk::FACTORY;
use omnidisk_provider_aliyun_disk::fake_ecs::verify::AcceptedKey;
use omnidisk_provider_aliyun_disk::fake_ecs::{FakeEcs, FakeEcsConfig};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider, ProviderError};

const CANARY_KEY_ID: &str = "STS.CanaryKeyId7d1f";
const CANARY_SECRET: &str = "CanarySecret4b9e";
const CANARY_TOKEN: &str = "CanaryStsToken2c8a";

fn settings(endpoint: &str, signature: &str) -> String {
    format!(
        r#"
region_id = "cn-hangzhou"
endpoint = "{endpoint}"
metadata_base_url = "http://127.0.0.1:9"
api_timeout_seconds = 3
max_retries = 0
signature_version = "{signature}"
default_zone_id = "cn-hangzhou-a"
[credentials]
source = "sts"
access_key_id = "{CANARY_KEY_ID}"
access_key_secret = "{CANARY_SECRET}"
security_token = "{CANARY_TOKEN}"
expiration = "2200-01-01T00:00:00Z"
[waits]
create_seconds = 5
poll_interval_ms = 20
batch_window_ms = 5
"#
    )
}

async fn provider(endpoint: &str, signature: &str) -> Arc<dyn Provider> {
    (FACTORY.create)(InitRequest {
        instance: "ali-canary".into(),
        settings_toml: settings(endpoint, signature),
        node_name: "node-1".into(),
        mode: "controller".into(),
    })
    .await
    .unwrap()
}

fn assert_no_canary(what: &str, err: &ProviderError) {
    let texts = [err.full_message(), err.to_string(), format!("{err:?}")];
    for text in texts {
        for canary in [CANARY_KEY_ID, CANARY_SECRET, CANARY_TOKEN, "Signature="] {
            assert!(
                !text.contains(canary),
                "{what}: {canary} leaked into the error: {text}"
            );
        }
    }
}

/// Every call that reaches the network, for one endpoint.
async fn every_failure(what: &str, endpoint: &str, signature: &str) -> Vec<ProviderError> {
    let p = provider(endpoint, signature).await;
    let mut errors = Vec::new();
    errors.push(
        p.create_volume(CreateVolumeRequest {
            name: "pvc-canary".into(),
            required_bytes: 20 * GIB,
            ..CreateVolumeRequest::default()
        })
        .await
        .unwrap_err(),
    );
    errors.push(
        p.get_volume(VolumeRef {
            volume_id: "d-canary0001".into(),
        })
        .await
        .unwrap_err(),
    );
    errors.push(p.list_volumes(ListRequest::default()).await.unwrap_err());
    errors.push(
        p.delete_snapshot(SnapshotRef {
            snapshot_id: "s-canary0001".into(),
        })
        .await
        .unwrap_err(),
    );
    for e in &errors {
        assert_no_canary(what, e);
    }
    errors
}

#[tokio::test]
async fn transport_failures_carry_no_credentials() {
    // A port that refuses connections: bound, then released.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    };
    // TLS spoken to a plain-HTTP server fails the handshake.
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    let tls = fake.endpoint().replace("http://", "https://");
    for signature in ["rpc", "v3"] {
        for (what, endpoint) in [
            ("connection refused", refused.as_str()),
            ("no such host", "http://nonexistent.invalid"),
            ("TLS failure", tls.as_str()),
        ] {
            let errors = every_failure(what, endpoint, signature).await;
            for e in &errors {
                assert_eq!(
                    e.kind(),
                    ErrorKind::Unavailable,
                    "{what}: {}",
                    e.full_message()
                );
                // Still says what failed and where.
                assert!(
                    e.full_message().contains(
                        endpoint
                            .trim_end_matches('/')
                            .trim_start_matches("http://")
                            .trim_start_matches("https://")
                    ),
                    "{what}: {}",
                    e.full_message()
                );
            }
        }
    }
    assert_eq!(fake.calls().get("CreateDisk"), None);
}

#[tokio::test]
async fn a_rejected_signature_does_not_echo_the_string_to_sign() {
    let fake = FakeEcs::start(FakeEcsConfig::standard()).await.unwrap();
    // The service knows the key, with another secret and token.
    fake.add_key(
        CANARY_KEY_ID,
        AcceptedKey {
            secret: "the-real-secret".into(),
            security_token: Some(CANARY_TOKEN.into()),
        },
    );
    let errors = every_failure("signature mismatch", &fake.endpoint(), "rpc").await;
    for e in &errors {
        assert_eq!(
            e.kind(),
            ErrorKind::FailedPrecondition,
            "{}",
            e.full_message()
        );
        assert!(
            e.full_message().contains("SignatureDoesNotMatch"),
            "{}",
            e.full_message()
        );
    }
    assert!(fake.errors()["SignatureDoesNotMatch"] >= 4);
}

//! Node side: identity from a small IMDSv2 stub, and device discovery
//! through the provider on a temporary /dev and /sys tree.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};
use omnidisk_provider_aws_ebs::provider::{DEVICE_PATH_KEY, ZONE_KEY};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const TOKEN: &str = "stub-token-123";

/// A minimal IMDSv2: PUT /latest/api/token hands out a token (with the TTL
/// header the SDK insists on); GETs must carry it.
struct ImdsStub {
    url: String,
    gets: Arc<AtomicUsize>,
    unauthorized: Arc<AtomicUsize>,
}

impl ImdsStub {
    async fn start(data: BTreeMap<&'static str, &'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the IMDS stub");
        let url = format!("http://{}", listener.local_addr().expect("stub address"));
        let gets = Arc::new(AtomicUsize::new(0));
        let unauthorized = Arc::new(AtomicUsize::new(0));
        let (g, u) = (Arc::clone(&gets), Arc::clone(&unauthorized));
        let data = Arc::new(data);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (data, g, u) = (Arc::clone(&data), Arc::clone(&g), Arc::clone(&u));
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (method, path) = (
                            parts.next().unwrap_or("").to_owned(),
                            parts.next().unwrap_or("").to_owned(),
                        );
                        let mut token = None;
                        let mut length = 0usize;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                match k.trim().to_ascii_lowercase().as_str() {
                                    "x-aws-ec2-metadata-token" => token = Some(v.trim().to_owned()),
                                    "content-length" => length = v.trim().parse().unwrap_or(0),
                                    _ => {}
                                }
                            }
                        }
                        let mut body = vec![0u8; length];
                        let _ = reader.read_exact(&mut body).await;
                        let (status, headers, body) =
                            if method == "PUT" && path == "/latest/api/token" {
                                (
                                    "200 OK",
                                    "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                                    TOKEN.to_owned(),
                                )
                            } else if token.as_deref() != Some(TOKEN) {
                                u.fetch_add(1, Ordering::SeqCst);
                                ("401 Unauthorized", "", String::new())
                            } else if let Some(v) = data.get(path.as_str()) {
                                g.fetch_add(1, Ordering::SeqCst);
                                ("200 OK", "", (*v).to_owned())
                            } else {
                                ("404 Not Found", "", String::new())
                            };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\n{headers}content-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            url,
            gets,
            unauthorized,
        }
    }
}

async fn node_provider(settings: String) -> omnidisk_provider_api::Result<Arc<dyn Provider>> {
    (omnidisk_provider_aws_ebs::FACTORY.create)(InitRequest {
        instance: "ebs".into(),
        settings_toml: settings,
        node_name: "node-1".into(),
        mode: "node".into(),
    })
    .await
}

#[tokio::test]
async fn node_info_comes_from_imdsv2() {
    let stub = ImdsStub::start(BTreeMap::from([
        ("/latest/meta-data/instance-id", "i-0123456789abcdef0"),
        (
            "/latest/meta-data/placement/availability-zone",
            "us-east-1c",
        ),
        ("/latest/meta-data/instance-type", "m5.large"),
        (
            "/latest/meta-data/block-device-mapping/",
            "ami\nroot\nebs1\nephemeral0",
        ),
        (
            "/latest/meta-data/network/interfaces/macs/",
            "0e:00:00:00:00:01/\n0e:00:00:00:00:02/",
        ),
    ]))
    .await;
    let p = node_provider(format!("[node]\nimds_endpoint = \"{}\"\n", stub.url))
        .await
        .unwrap();
    let info = p.node_info().await.unwrap();
    assert_eq!(info.node_id, "i-0123456789abcdef0");
    assert_eq!(
        info.topology.unwrap().segments,
        BTreeMap::from([(ZONE_KEY.to_owned(), "us-east-1c".to_owned())])
    );
    // m5 shares 28 slots: 2 ENIs, the root volume and ebs1 take 4.
    assert_eq!(info.max_volumes, 28 - 2 - 2);
    assert_eq!(stub.gets.load(Ordering::SeqCst), 5);
    assert_eq!(
        stub.unauthorized.load(Ordering::SeqCst),
        0,
        "a GET went without the session token"
    );
    // Cached: a second call asks IMDS nothing.
    p.node_info().await.unwrap();
    assert_eq!(stub.gets.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn settings_override_imds_and_unreachable_imds_is_an_error_not_a_crash() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = node_provider(format!(
        "[node]\nimds_endpoint = \"http://127.0.0.1:{port}\"\nimds_timeout_seconds = 1\n"
    ))
    .await
    .unwrap();
    let err = p.node_info().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.full_message().contains("instance-id"),
        "{}",
        err.full_message()
    );

    let p = node_provider(format!(
        "[node]\nimds_endpoint = \"http://127.0.0.1:{port}\"\nimds_timeout_seconds = 1\ninstance_id = \"i-0123456789abcdef0\"\nzone = \"eu-west-1b\"\ninstance_type = \"m7i.large\"\n"
    ))
    .await
    .unwrap();
    let info = p.node_info().await.unwrap();
    assert_eq!(info.node_id, "i-0123456789abcdef0");
    // No IMDS for the mapping: only the root volume is assumed.
    assert_eq!(info.max_volumes, 32 - 1);
}

#[tokio::test]
async fn find_device_verifies_serials_through_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let sys = dir.path().join("sys");
    std::fs::create_dir_all(dev.join("disk/by-id")).unwrap();
    for (name, serial) in [
        ("nvme1n1", "vol0aaaaaaaaaaaaaaaa"),
        ("nvme2n1", "vol0123456789abcdef0"),
    ] {
        std::fs::write(dev.join(name), b"").unwrap();
        std::fs::create_dir_all(sys.join("block").join(name).join("device")).unwrap();
        std::fs::write(
            sys.join("block").join(name).join("device/serial"),
            format!("{serial}\n"),
        )
        .unwrap();
    }
    // A stale link: the by-id name of our volume points at another volume's device.
    symlink(
        "../../nvme1n1",
        dev.join("disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0"),
    )
    .unwrap();
    let p = node_provider(format!(
        "[node]\ninstance_id = \"i-0123456789abcdef0\"\nzone = \"z\"\ninstance_type = \"m5.large\"\nmax_volumes_per_node = 5\ndev_root = \"{}\"\nsys_root = \"{}\"\ndevice_wait_seconds = 1\n",
        dev.display(),
        sys.display()
    ))
    .await
    .unwrap();
    let found = p
        .find_device(FindDeviceRequest {
            volume_id: "vol-0123456789abcdef0".into(),
            publish_context: BTreeMap::from([(
                DEVICE_PATH_KEY.to_owned(),
                "/dev/xvdba".to_owned(),
            )]),
            ..FindDeviceRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(found.device_path, dev.join("nvme2n1").to_str().unwrap());

    let err = p
        .find_device(FindDeviceRequest {
            volume_id: "vol-0fffffffffffffff0".into(),
            ..FindDeviceRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    let err = p
        .find_device(FindDeviceRequest {
            volume_id: "../../sda".into(),
            ..FindDeviceRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

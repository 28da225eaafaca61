//! The Kubernetes manifests under `deploy/` agree with the driver.
//!
//! Runs `deploy/test/validate` (offline schema validation for the oldest and
//! newest supported Kubernetes, vendored CRD schemas, `helm lint`, yamllint,
//! hadolint, and Helm == kustomize for every overlay), then reads the
//! renderings it leaves as JSON and checks them against the real driver:
//! every `omnidisk` container's arguments go through the driver's own flag
//! parser, so renaming a flag breaks this test; the CSI socket is the same
//! file for the driver, the registrar and every sidecar; the images carry
//! the crate version.
//!
//! The script installs its tools from PyPI and npm. When it cannot, the
//! tests print SKIPPED, unless `OMNIDISK_REQUIRE_ALL=1`, where they fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::Parser;
use omnidisk::cli::{self, Args};
use omnidisk::config::Config;
use omnidisk::{DRIVER_NAME, Mode, VERSION};
use serde_json::Value;

/// `deploy/test/validate`'s exit status when its tools cannot be installed.
const TOOLS_UNAVAILABLE: i32 = 77;

/// Sidecar images the issue names (the versions the project is tested with).
const SIDECAR_IMAGES: &[(&str, &str)] = &[
    (
        "csi-provisioner",
        "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0",
    ),
    (
        "csi-attacher",
        "registry.k8s.io/sig-storage/csi-attacher:v4.12.0",
    ),
    (
        "csi-resizer",
        "registry.k8s.io/sig-storage/csi-resizer:v2.2.1",
    ),
    (
        "csi-snapshotter",
        "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0",
    ),
    (
        "node-driver-registrar",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
    ),
    (
        "liveness-probe",
        "registry.k8s.io/sig-storage/livenessprobe:v2.19.0",
    ),
];

enum Outcome {
    /// The script passed; its JSON renderings, by name (`helm-aws`, ...).
    Passed(BTreeMap<String, Vec<Value>>),
    /// The tools could not be installed.
    ToolsMissing(String),
    /// The script ran and something failed.
    Failed(String),
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ has a parent")
        .to_path_buf()
}

/// Runs the validation script once for all tests in this binary.
fn outcome() -> &'static Outcome {
    static OUTCOME: OnceLock<Outcome> = OnceLock::new();
    OUTCOME.get_or_init(|| {
        let out = tempfile::tempdir().expect("temporary directory");
        let script = repo_root().join("deploy/test/validate");
        let result = Command::new("bash")
            .arg(&script)
            .arg("--out")
            .arg(out.path())
            .output()
            .expect("bash runs");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        eprintln!("{log}");
        match result.status.code() {
            Some(0) => {}
            Some(TOOLS_UNAVAILABLE) => return Outcome::ToolsMissing(log),
            _ => return Outcome::Failed(log),
        }
        let mut renderings = BTreeMap::new();
        for entry in std::fs::read_dir(out.path().join("json")).expect("json output") {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_stem()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("readable JSON");
            let docs: Vec<Value> = serde_json::from_str(&text).expect("a JSON list of objects");
            renderings.insert(name, docs);
        }
        Outcome::Passed(renderings)
    })
}

/// The renderings, or `None` (after saying so) when the tools are missing
/// and the environment does not require every test to run.
fn renderings() -> Option<&'static BTreeMap<String, Vec<Value>>> {
    match outcome() {
        Outcome::Passed(r) => Some(r),
        Outcome::Failed(log) => panic!("deploy/test/validate failed:\n{log}"),
        Outcome::ToolsMissing(log) => {
            if std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() == Ok("1") {
                panic!(
                    "OMNIDISK_REQUIRE_ALL=1 but the deploy validation tools are unavailable:\n{log}"
                );
            }
            // Written past the test harness's capture, so a skip is never
            // mistaken for a pass.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: deploy validation tools unavailable (set OMNIDISK_REQUIRE_ALL=1 to fail instead)"
            );
            None
        }
    }
}

/// Every rendering the tests must cover; a missing one means the script and
/// this test disagree.
const EXPECTED_RENDERINGS: &[&str] = &[
    "helm-default",
    "helm-aws",
    "helm-aliyun",
    "helm-lvm",
    "helm-mixed",
    "kustomize-base",
    "kustomize-aws",
    "kustomize-aliyun",
    "kustomize-lvm",
    "kustomize-mixed",
];

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v}"))
}

fn list_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name(v: &Value) -> &str {
    str_at(v, "/name")
}

/// A Deployment or DaemonSet with the rendering it came from.
struct Workload<'a> {
    origin: String,
    kind: &'a str,
    pod: &'a Value,
}

impl<'a> Workload<'a> {
    fn containers(&self) -> &'a [Value] {
        list_at(self.pod, "/containers")
    }

    fn container(&self, wanted: &str) -> Option<&'a Value> {
        self.containers().iter().find(|c| name(c) == wanted)
    }

    fn volume(&self, wanted: &str) -> &'a Value {
        list_at(self.pod, "/volumes")
            .iter()
            .find(|v| name(v) == wanted)
            .unwrap_or_else(|| panic!("{}: no volume {wanted}", self.origin))
    }

    /// The volume mounted at `dir` in `container`.
    fn volume_at(&self, container: &Value, dir: &Path) -> Option<&'a str> {
        list_at(container, "/volumeMounts")
            .iter()
            .find(|m| Path::new(str_at(m, "/mountPath")) == dir)
            .map(|m| str_at(m, "/name"))
            .map(|n| {
                // Borrow from the pod, not from `container`.
                name(self.volume(n))
            })
    }
}

fn workloads(renderings: &BTreeMap<String, Vec<Value>>) -> Vec<Workload<'_>> {
    for expected in EXPECTED_RENDERINGS {
        assert!(
            renderings.contains_key(*expected),
            "rendering {expected} is missing"
        );
    }
    let mut out = Vec::new();
    for (origin, docs) in renderings {
        for doc in docs {
            let kind = str_at(doc, "/kind");
            if kind == "Deployment" || kind == "DaemonSet" {
                out.push(Workload {
                    origin: format!("{origin}: {kind}/{}", str_at(doc, "/metadata/name")),
                    kind,
                    pod: doc.pointer("/spec/template/spec").expect("a pod template"),
                });
            }
        }
    }
    out
}

fn args(container: &Value) -> Vec<String> {
    list_at(container, "/args")
        .iter()
        .map(|a| a.as_str().expect("string argument").to_owned())
        .collect()
}

/// The value of `--flag=value` (the manifests always use that form).
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn parse_driver_args(container: &Value) -> Result<Args, clap::Error> {
    let mut argv = vec!["omnidisk".to_owned()];
    argv.extend(args(container));
    Args::try_parse_from(argv)
}

fn container_port(container: &Value, port_name: &str) -> Option<u64> {
    list_at(container, "/ports")
        .iter()
        .find(|p| p.pointer("/name").and_then(Value::as_str) == Some(port_name))
        .and_then(|p| p.pointer("/containerPort"))
        .and_then(Value::as_u64)
}

fn port_of_endpoint(endpoint: &str) -> u64 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint:?}"))
}

#[test]
fn validation_script_passes() {
    let Some(renderings) = renderings() else {
        return;
    };
    for expected in EXPECTED_RENDERINGS {
        let docs = &renderings[*expected];
        assert!(!docs.is_empty(), "rendering {expected} is empty");
    }
}

#[test]
fn driver_args_parse_with_the_real_flag_parser() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut checked = 0;
    for w in workloads(renderings) {
        let driver = w
            .container("omnidisk")
            .unwrap_or_else(|| panic!("{}: no omnidisk container", w.origin));
        let parsed = parse_driver_args(driver).unwrap_or_else(|e| {
            panic!(
                "{}: the driver refuses its arguments {:?}:\n{e}",
                w.origin,
                args(driver)
            )
        });
        let expected_mode = if w.kind == "Deployment" {
            Mode::Controller
        } else {
            Mode::Node
        };
        assert_eq!(parsed.mode, expected_mode, "{}", w.origin);

        // The configuration file lies in the read-only Secret volume.
        let config = parsed
            .config
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no --config", w.origin));
        let config_dir = config.parent().expect("config file in a directory");
        let volume = w
            .volume_at(driver, config_dir)
            .unwrap_or_else(|| panic!("{}: nothing mounted at {}", w.origin, config_dir.display()));
        let secret = w.volume(volume);
        assert!(
            secret.pointer("/secret/secretName").is_some(),
            "{}: config is not a Secret",
            w.origin
        );
        let item_path = str_at(secret, "/secret/items/0/path");
        assert_eq!(config_dir.join(item_path), *config, "{}", w.origin);
        let mount = list_at(driver, "/volumeMounts")
            .iter()
            .find(|m| str_at(m, "/name") == volume)
            .expect("mounted");
        assert_eq!(
            mount.pointer("/readOnly"),
            Some(&Value::Bool(true)),
            "{}: config must be read-only",
            w.origin
        );

        // Node plugins identify themselves by the Kubernetes node name.
        if expected_mode == Mode::Node {
            assert_eq!(
                parsed.node_id.as_deref(),
                Some("$(NODE_NAME)"),
                "{}",
                w.origin
            );
            let env = list_at(driver, "/env")
                .iter()
                .find(|e| str_at(e, "/name") == "NODE_NAME")
                .unwrap_or_else(|| panic!("{}: no NODE_NAME", w.origin));
            assert_eq!(
                str_at(env, "/valueFrom/fieldRef/fieldPath"),
                "spec.nodeName",
                "{}",
                w.origin
            );
        }

        // The readiness probe reaches the driver's own health endpoint.
        let health = parsed
            .health_address
            .unwrap_or_else(|| panic!("{}: no --health-address", w.origin));
        let probe_port = str_at(driver, "/readinessProbe/httpGet/port");
        assert_eq!(
            container_port(driver, probe_port),
            Some(u64::from(health.port())),
            "{}: readinessProbe does not reach --health-address",
            w.origin
        );
        assert_eq!(
            str_at(driver, "/readinessProbe/httpGet/path"),
            "/readyz",
            "{}",
            w.origin
        );
        checked += 1;
    }
    // 7 renderings with a controller Deployment, 10 with a node DaemonSet.
    assert_eq!(checked, 17, "driver containers checked");
}

#[test]
fn a_renamed_flag_breaks_the_check() {
    let Some(renderings) = renderings() else {
        return;
    };
    let w = workloads(renderings)
        .into_iter()
        .find(|w| w.origin.starts_with("helm-default: DaemonSet"))
        .expect("the default node DaemonSet");
    let driver = w.container("omnidisk").expect("omnidisk container");
    let original = args(driver);
    assert!(parse_driver_args(driver).is_ok());
    // Each flag, renamed as a careless refactoring would, must be refused.
    for (i, arg) in original.iter().enumerate() {
        let (flag_name, value) = arg.split_once('=').expect("--flag=value");
        let mut renamed = vec!["omnidisk".to_owned()];
        renamed.extend(original.iter().cloned());
        renamed[i + 1] = format!("{flag_name}-renamed={value}");
        assert!(
            Args::try_parse_from(&renamed).is_err(),
            "renaming {flag_name} went unnoticed"
        );
    }
}

#[test]
fn socket_paths_agree_between_driver_registrar_and_sidecars() {
    let Some(renderings) = renderings() else {
        return;
    };
    for w in workloads(renderings) {
        let driver = w.container("omnidisk").expect("omnidisk container");
        let endpoint = parse_driver_args(driver).expect("parses").endpoint;
        let socket = cli::socket_path(&endpoint).unwrap_or_else(|e| panic!("{}: {e}", w.origin));
        let socket_dir = socket.parent().expect("socket in a directory");
        let socket_volume = w.volume_at(driver, socket_dir).unwrap_or_else(|| {
            panic!(
                "{}: the driver's socket directory is not a volume",
                w.origin
            )
        });

        let mut sidecars = 0;
        for c in w.containers() {
            if name(c) == "omnidisk" {
                continue;
            }
            let a = args(c);
            let address = flag(&a, "--csi-address")
                .unwrap_or_else(|| panic!("{}: {} has no --csi-address", w.origin, name(c)));
            assert_eq!(
                Path::new(address),
                socket,
                "{}: {} talks to another socket",
                w.origin,
                name(c)
            );
            assert_eq!(
                w.volume_at(c, socket_dir),
                Some(socket_volume),
                "{}: {} does not mount the driver's socket volume at {}",
                w.origin,
                name(c),
                socket_dir.display()
            );
            sidecars += 1;
        }
        assert!(sidecars >= 2, "{}: sidecars missing", w.origin);

        let volume = w.volume(socket_volume);
        if w.kind == "Deployment" {
            assert!(volume.pointer("/emptyDir").is_some(), "{}", w.origin);
            continue;
        }
        // The kubelet reaches the node plugin through the host path of the
        // socket volume, under its plugin directory for this driver name.
        let host_dir = PathBuf::from(str_at(volume, "/hostPath/path"));
        let registrar = w.container("node-driver-registrar").expect("registrar");
        let registrar_args = args(registrar);
        let registration =
            flag(&registrar_args, "--kubelet-registration-path").expect("registration path");
        assert_eq!(
            Path::new(registration),
            host_dir.join(socket.file_name().expect("socket file name")),
            "{}",
            w.origin
        );
        assert_eq!(
            host_dir.file_name().and_then(|n| n.to_str()),
            Some(DRIVER_NAME),
            "{}",
            w.origin
        );
        let kubelet_dir = host_dir
            .parent()
            .and_then(Path::parent)
            .expect("<kubelet>/plugins/<driver>");
        let kubelet_mount = list_at(driver, "/volumeMounts")
            .iter()
            .find(|m| Path::new(str_at(m, "/mountPath")) == kubelet_dir)
            .unwrap_or_else(|| panic!("{}: kubelet directory not mounted", w.origin));
        assert_eq!(
            str_at(kubelet_mount, "/mountPropagation"),
            "Bidirectional",
            "{}",
            w.origin
        );
        assert_eq!(
            str_at(w.volume(str_at(kubelet_mount, "/name")), "/hostPath/path"),
            kubelet_dir.to_str().expect("UTF-8"),
            "{}: the kubelet directory must be mounted at its host path",
            w.origin
        );
        assert_eq!(
            driver.pointer("/securityContext/privileged"),
            Some(&Value::Bool(true)),
            "{}",
            w.origin
        );
        let registration_dir = str_at(
            w.volume(
                w.volume_at(registrar, Path::new("/registration"))
                    .expect("registration volume"),
            ),
            "/hostPath/path",
        );
        assert_eq!(
            Path::new(registration_dir),
            kubelet_dir.join("plugins_registry"),
            "{}",
            w.origin
        );
    }
}

#[test]
fn liveness_probe_sidecar_serves_the_driver_liveness_probe() {
    let Some(renderings) = renderings() else {
        return;
    };
    for w in workloads(renderings) {
        let driver = w.container("omnidisk").expect("omnidisk container");
        let probe = w
            .container("liveness-probe")
            .unwrap_or_else(|| panic!("{}: no livenessprobe", w.origin));
        let probe_args = args(probe);
        let endpoint = flag(&probe_args, "--http-endpoint").expect("--http-endpoint");
        let port_name = str_at(driver, "/livenessProbe/httpGet/port");
        assert_eq!(
            container_port(driver, port_name),
            Some(port_of_endpoint(endpoint)),
            "{}",
            w.origin
        );
        assert_eq!(
            str_at(driver, "/livenessProbe/httpGet/path"),
            "/healthz",
            "{}",
            w.origin
        );
    }
}

#[test]
fn images_carry_the_crate_and_sidecar_versions() {
    let Some(renderings) = renderings() else {
        return;
    };
    for w in workloads(renderings) {
        for c in w.containers() {
            let image = str_at(c, "/image");
            if name(c) == "omnidisk" {
                assert_eq!(
                    image,
                    format!("ghcr.io/omnidisk/omnidisk:{VERSION}"),
                    "{}",
                    w.origin
                );
                continue;
            }
            let expected = SIDECAR_IMAGES
                .iter()
                .find(|(n, _)| *n == name(c))
                .unwrap_or_else(|| panic!("{}: unexpected container {}", w.origin, name(c)));
            assert_eq!(image, expected.1, "{}", w.origin);
        }
    }
    let root = repo_root();
    let chart =
        std::fs::read_to_string(root.join("deploy/helm/omnidisk/Chart.yaml")).expect("Chart.yaml");
    assert!(
        chart.lines().any(|l| l == format!("version: {VERSION}")),
        "chart version != {VERSION}"
    );
    assert!(
        chart
            .lines()
            .any(|l| l == format!("appVersion: \"{VERSION}\"")),
        "appVersion != {VERSION}"
    );
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{VERSION}\"")),
        "Dockerfile version label != {VERSION}"
    );
}

#[test]
fn classes_name_the_driver_and_configured_instances() {
    let Some(renderings) = renderings() else {
        return;
    };
    // The example configuration the README installs as the Secret.
    let config =
        Config::load(&repo_root().join("config/mixed.toml")).expect("example config loads");
    let instances: BTreeMap<&str, &str> = config
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.kind.as_deref().unwrap_or_default()))
        .collect();
    let mut storage_classes = 0;
    for (origin, docs) in renderings {
        for doc in docs {
            let what = format!(
                "{origin}: {}/{}",
                str_at(doc, "/kind"),
                str_at(doc, "/metadata/name")
            );
            match str_at(doc, "/kind") {
                "CSIDriver" => assert_eq!(str_at(doc, "/metadata/name"), DRIVER_NAME, "{what}"),
                "StorageClass" => {
                    assert_eq!(str_at(doc, "/provisioner"), DRIVER_NAME, "{what}");
                    let instance = str_at(doc, "/parameters/type");
                    assert!(
                        instances.contains_key(instance),
                        "{what}: type {instance} is not in config-mixed.toml"
                    );
                    assert_eq!(
                        str_at(doc, "/volumeBindingMode"),
                        "WaitForFirstConsumer",
                        "{what}"
                    );
                    assert_eq!(
                        doc.pointer("/allowVolumeExpansion"),
                        Some(&Value::Bool(true)),
                        "{what}"
                    );
                    storage_classes += 1;
                }
                "VolumeSnapshotClass" => assert_eq!(str_at(doc, "/driver"), DRIVER_NAME, "{what}"),
                "VolumeAttributesClass" => {
                    assert_eq!(str_at(doc, "/driverName"), DRIVER_NAME, "{what}")
                }
                _ => {}
            }
        }
    }
    assert!(
        storage_classes >= 8,
        "only {storage_classes} StorageClasses checked"
    );

    // The instances of compiled-in kinds accept their example settings.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut created = 0;
    for instance in &config.instances {
        let Some(factory) = omnidisk::providers::builtin()
            .into_iter()
            .find(|f| Some(f.kind) == instance.kind.as_deref())
        else {
            continue;
        };
        let init = omnidisk_provider_api::types::InitRequest {
            instance: instance.name.clone(),
            settings_toml: instance.settings_toml.clone(),
            node_name: "node-1".into(),
            mode: "node".into(),
        };
        if let Err(e) = runtime.block_on((factory.create)(init)) {
            panic!(
                "instance {} refuses its example settings: {}",
                instance.name,
                e.full_message()
            );
        }
        created += 1;
    }
    assert!(
        created >= 1,
        "no example instance of a compiled-in kind was created"
    );
}

//! The Kubernetes manifests under `deploy/` agree with the driver.
//!
//! Runs `deploy/test/validate` (offline schema validation for the oldest and
//! newest supported Kubernetes, vendored CRD schemas, `helm lint`, yamllint,
//! hadolint, and Helm == kustomize for every overlay), then reads the
//! renderings it leaves as JSON and checks them against the real driver:
//! every `omnidisk` container's arguments go through the driver's own flag
//! parser (after the `$(VAR)` expansion the kubelet does), so renaming a
//! flag breaks this test; the CSI socket is the same file for the driver,
//! the registrar and every sidecar; the images carry the crate version;
//! every HTTP endpoint listens on the pod IP; the driver gets the kubelet
//! directory it has mounted; the CSIDriver lists Ephemeral exactly where an
//! instance serves inline volumes; the API-gated objects (snapshot, group
//! snapshot and attributes classes, csi-snapshotter's group snapshot gate
//! and RBAC) appear exactly in the renderings whose cluster serves their
//! API; and the chart renders for the oldest supported Kubernetes, with
//! none of the optional APIs, and refuses the release before it.
//!
//! The script installs its tools from PyPI and (helm, kubectl) with
//! `scripts/fetch-helm`. When it cannot, the
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

/// One rendering: its objects and the cluster it was rendered for.
struct Rendering {
    /// The Kubernetes version (`helm template --kube-version`).
    kube_version: String,
    /// The optional kinds that cluster serves (`group/version/Kind`).
    apis: Vec<String>,
    docs: Vec<Value>,
}

impl Rendering {
    fn serves(&self, api: &str) -> bool {
        self.apis.iter().any(|a| a == api)
    }
}

/// The oldest Kubernetes the project supports: csi-snapshotter 8.x needs
/// 1.25 (the CEL validation rules of the v1 snapshot CRDs); the 1.34 of
/// csi-provisioner 6.x and csi-resizer 2.x is VolumeAttributesClass's alone.
const OLDEST_KUBERNETES: &str = "1.25.0";
/// The first release serving storage.k8s.io/v1 VolumeAttributesClass.
const ATTRIBUTES_CLASS_KUBERNETES: &str = "1.34.0";
/// The newest Kubernetes the project validates against.
const NEWEST_KUBERNETES: &str = "1.37.0";
/// The last release before the oldest: the chart must refuse it.
const TOO_OLD_KUBERNETES: &str = "1.24.17";

const ATTRIBUTES_CLASS_API: &str = "storage.k8s.io/v1/VolumeAttributesClass";
const SNAPSHOT_CLASS_API: &str = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass";
const GROUP_SNAPSHOT_CLASS_API: &str = "groupsnapshot.storage.k8s.io/v1/VolumeGroupSnapshotClass";
/// csi-snapshotter 8.6.0's switch for VolumeGroupSnapshots (off by default).
const GROUP_SNAPSHOT_GATE: &str = "--feature-gates=CSIVolumeGroupSnapshot=true";

/// What `helm template --kube-version` made of one Kubernetes version
/// (`kube-versions.tsv`).
struct KubeVersionProbe {
    version: String,
    rendered: bool,
    /// Helm's first error line when refused.
    error: String,
}

/// What the script leaves for the tests.
struct Validated {
    /// The renderings, by name (`helm-aws`, ...).
    renderings: BTreeMap<String, Rendering>,
    kube_versions: Vec<KubeVersionProbe>,
}

enum Outcome {
    /// The script passed.
    Passed(Validated),
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
        // One line per rendering: name, Kubernetes version, served kinds.
        let index = std::fs::read_to_string(out.path().join("json/renderings.tsv"))
            .expect("renderings.tsv");
        let mut renderings = BTreeMap::new();
        for line in index.lines() {
            let mut fields = line.split('\t');
            let (Some(name), Some(kube_version), Some(apis)) =
                (fields.next(), fields.next(), fields.next())
            else {
                panic!("renderings.tsv: malformed line {line:?}");
            };
            let path = out.path().join("json").join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let docs: Vec<Value> = serde_json::from_str(&text).expect("a JSON list of objects");
            let apis = apis
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            let rendering = Rendering {
                kube_version: kube_version.to_owned(),
                apis,
                docs,
            };
            assert!(
                renderings.insert(name.to_owned(), rendering).is_none(),
                "rendering {name} listed twice"
            );
        }
        let probes = std::fs::read_to_string(out.path().join("json/kube-versions.tsv"))
            .expect("kube-versions.tsv");
        let kube_versions = probes
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let (Some(version), Some(result), error) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    panic!("kube-versions.tsv: malformed line {line:?}");
                };
                assert!(
                    ["rendered", "refused"].contains(&result),
                    "kube-versions.tsv: {line:?}"
                );
                KubeVersionProbe {
                    version: version.to_owned(),
                    rendered: result == "rendered",
                    error: error.unwrap_or_default().to_owned(),
                }
            })
            .collect();
        Outcome::Passed(Validated {
            renderings,
            kube_versions,
        })
    })
}

/// The renderings, or `None` (after saying so) when the tools are missing
/// and the environment does not require every test to run.
fn renderings() -> Option<&'static BTreeMap<String, Rendering>> {
    validated().map(|v| &v.renderings)
}

/// Everything the script left, or `None` as for [`renderings`].
fn validated() -> Option<&'static Validated> {
    match outcome() {
        Outcome::Passed(v) => Some(v),
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
    "helm-default-1.34",
    "helm-default-1.37",
    "helm-aws",
    "helm-aws-1.34",
    "helm-aws-1.37",
    "helm-aliyun",
    "helm-aliyun-1.34",
    "helm-aliyun-1.37",
    "helm-lvm",
    "helm-lvm-1.34",
    "helm-lvm-1.37",
    "helm-mixed",
    "helm-mixed-1.34",
    "helm-mixed-1.37",
    "helm-lvm-no-ephemeral",
    "helm-metrics",
    "helm-options",
    "kustomize-base",
    "kustomize-aws",
    "kustomize-aws-all-apis",
    "kustomize-aliyun",
    "kustomize-aliyun-all-apis",
    "kustomize-lvm",
    "kustomize-lvm-all-apis",
    "kustomize-mixed",
    "kustomize-mixed-all-apis",
    "kustomize-mixed-metrics",
];

/// Renderings of deploy/test/values/options.yaml: host networking for both
/// workloads, metrics on, IPv6 pods, kubelet in /var/lib/k0s/kubelet.
const OPTIONS_RENDERING: &str = "helm-options";
const OPTIONS_KUBELET_DIR: &str = "/var/lib/k0s/kubelet";
/// Renderings with metrics enabled.
const METRICS_RENDERINGS: &[&str] = &[OPTIONS_RENDERING, "helm-metrics", "kustomize-mixed-metrics"];

/// The pod IP the tests expand `$(POD_IP)` to, as the kubelet would.
fn sample_pod_ip(origin: &str) -> std::net::IpAddr {
    if origin.starts_with(&format!("{OPTIONS_RENDERING}:")) {
        "2001:db8::10".parse().expect("IPv6 address")
    } else {
        "192.0.2.10".parse().expect("IPv4 address")
    }
}
const SAMPLE_NODE_NAME: &str = "node-1";

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

fn workloads(renderings: &BTreeMap<String, Rendering>) -> Vec<Workload<'_>> {
    for expected in EXPECTED_RENDERINGS {
        assert!(
            renderings.contains_key(*expected),
            "rendering {expected} is missing"
        );
    }
    let mut out = Vec::new();
    for (origin, rendering) in renderings {
        for doc in &rendering.docs {
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

/// The environment the kubelet gives `container`, with sample values for
/// the downward API fields the manifests use.
fn container_env(container: &Value, pod_ip: std::net::IpAddr) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in list_at(container, "/env") {
        let value = if let Some(v) = var.pointer("/value").and_then(Value::as_str) {
            v.to_owned()
        } else {
            match var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str)
            {
                Some("spec.nodeName") => SAMPLE_NODE_NAME.to_owned(),
                Some("status.podIP") => pod_ip.to_string(),
                Some("metadata.name") => "omnidisk-pod".to_owned(),
                Some("metadata.namespace") => "kube-system".to_owned(),
                // Secrets and the like: not needed for arguments.
                _ => continue,
            }
        };
        env.insert(str_at(var, "/name").to_owned(), value);
    }
    env
}

/// The arguments as the container sees them: `$(VAR)` replaced by the
/// container's variable, as the kubelet does (unknown ones stay).
fn expanded_args(container: &Value, pod_ip: std::net::IpAddr) -> Vec<String> {
    let env = container_env(container, pod_ip);
    args(container)
        .into_iter()
        .map(|mut arg| {
            for (name, value) in &env {
                arg = arg.replace(&format!("$({name})"), value);
            }
            arg
        })
        .collect()
}

/// The value of `--flag=value` (the manifests always use that form).
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn parse_driver_args(container: &Value, pod_ip: std::net::IpAddr) -> Result<Args, clap::Error> {
    let mut argv = vec!["omnidisk".to_owned()];
    argv.extend(expanded_args(container, pod_ip));
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
        let rendering = &renderings[*expected];
        assert!(!rendering.docs.is_empty(), "rendering {expected} is empty");
        assert!(
            [
                OLDEST_KUBERNETES,
                ATTRIBUTES_CLASS_KUBERNETES,
                NEWEST_KUBERNETES
            ]
            .contains(&rendering.kube_version.as_str()),
            "{expected}: rendered for Kubernetes {}",
            rendering.kube_version
        );
    }
    assert_eq!(
        renderings.len(),
        EXPECTED_RENDERINGS.len(),
        "renderings: {:?}",
        renderings.keys()
    );
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
        let pod_ip = sample_pod_ip(&w.origin);
        let parsed = parse_driver_args(driver, pod_ip).unwrap_or_else(|e| {
            panic!(
                "{}: the driver refuses its arguments {:?}:\n{e}",
                w.origin,
                expanded_args(driver, pod_ip)
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
                Some(SAMPLE_NODE_NAME),
                "{}: --node-id is not the node name",
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
    // 21 renderings with a controller Deployment (all but kustomize-base
    // and the six of LVM only), every one of the 28 with a node DaemonSet.
    assert_eq!(checked, 49, "driver containers checked");
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
    let original = expanded_args(driver, sample_pod_ip(&w.origin));
    assert!(
        Args::try_parse_from(std::iter::once("omnidisk".to_owned()).chain(original.clone()))
            .is_ok()
    );
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
        let endpoint = parse_driver_args(driver, sample_pod_ip(&w.origin))
            .expect("parses")
            .endpoint;
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
    for (origin, rendering) in renderings {
        for doc in &rendering.docs {
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

/// The value of a container's `--flag=value`, with `$(VAR)` expanded.
fn expanded_flag(container: &Value, pod_ip: std::net::IpAddr, name: &str) -> Option<String> {
    let args = expanded_args(container, pod_ip);
    flag(&args, name).map(str::to_owned)
}

fn env_field_path<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    list_at(container, "/env")
        .iter()
        .find(|e| str_at(e, "/name") == var)
        .and_then(|e| e.pointer("/valueFrom/fieldRef/fieldPath"))
        .and_then(Value::as_str)
}

#[test]
fn http_endpoints_listen_on_the_pod_ip_only() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut endpoints = 0;
    for w in workloads(renderings) {
        let pod_ip = sample_pod_ip(&w.origin);
        let metrics_on = METRICS_RENDERINGS
            .iter()
            .any(|r| w.origin.starts_with(&format!("{r}:")));
        for c in w.containers() {
            let flags: &[&str] = if name(c) == "omnidisk" {
                &["--health-address", "--metrics-address"]
            } else {
                &["--http-endpoint"]
            };
            for f in flags {
                let Some(raw) = flag(&args(c), f).map(str::to_owned) else {
                    continue;
                };
                // The pod IP from the downward API, never every interface.
                assert!(
                    raw.contains("$(POD_IP)"),
                    "{}: {} {f}={raw} does not listen on the pod IP",
                    w.origin,
                    name(c)
                );
                assert_eq!(
                    env_field_path(c, "POD_IP"),
                    Some("status.podIP"),
                    "{}: {} uses $(POD_IP) without defining it",
                    w.origin,
                    name(c)
                );
                let expanded = expanded_flag(c, pod_ip, f).expect("expanded flag");
                let addr: std::net::SocketAddr = expanded.parse().unwrap_or_else(|e| {
                    panic!(
                        "{}: {} {f}={expanded} is no address: {e}",
                        w.origin,
                        name(c)
                    )
                });
                assert_eq!(addr.ip(), pod_ip, "{}: {} {f}", w.origin, name(c));
                endpoints += 1;
            }
            // Metrics are opt-in: only the sidecars the kubelet probes
            // (registrar, livenessprobe) serve HTTP without them.
            let serves_http = flags.iter().any(|f| flag(&args(c), f).is_some());
            match name(c) {
                "omnidisk" => assert_eq!(
                    flag(&args(c), "--metrics-address").is_some(),
                    metrics_on,
                    "{}: driver metrics",
                    w.origin
                ),
                "node-driver-registrar" | "liveness-probe" => {
                    assert!(serves_http, "{}: {} has no endpoint", w.origin, name(c))
                }
                other => assert_eq!(
                    serves_http, metrics_on,
                    "{}: {other}'s metrics endpoint",
                    w.origin
                ),
            }
        }
        let driver = w.container("omnidisk").expect("omnidisk container");
        let parsed = parse_driver_args(driver, pod_ip).expect("parses");
        if let Some(metrics) = parsed.metrics_address {
            assert_eq!(
                container_port(driver, "metrics"),
                Some(u64::from(metrics.port())),
                "{}: no containerPort for --metrics-address",
                w.origin
            );
        }
    }
    assert!(endpoints >= 150, "only {endpoints} endpoints checked");
}

#[test]
fn the_driver_is_given_the_kubelet_directory_it_mounts() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut checked = 0;
    for w in workloads(renderings) {
        if w.kind != "DaemonSet" {
            continue;
        }
        let driver = w.container("omnidisk").expect("omnidisk container");
        let env = container_env(driver, sample_pod_ip(&w.origin));
        let kubelet_dir = env
            .get("OMNIDISK_KUBELET_DIR")
            .unwrap_or_else(|| panic!("{}: OMNIDISK_KUBELET_DIR not set", w.origin));
        let volume = w
            .volume_at(driver, Path::new(kubelet_dir))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {kubelet_dir}", w.origin));
        assert_eq!(
            str_at(w.volume(volume), "/hostPath/path"),
            kubelet_dir,
            "{}: the kubelet directory must be mounted at its host path",
            w.origin
        );
        let registrar = w.container("node-driver-registrar").expect("registrar");
        let registration = flag(&args(registrar), "--kubelet-registration-path")
            .map(str::to_owned)
            .expect("registration path");
        assert!(
            Path::new(&registration).starts_with(kubelet_dir),
            "{}: the plugin registers {registration}, outside {kubelet_dir}",
            w.origin
        );
        let expected = if w.origin.starts_with(&format!("{OPTIONS_RENDERING}:")) {
            OPTIONS_KUBELET_DIR
        } else {
            "/var/lib/kubelet"
        };
        assert_eq!(kubelet_dir, expected, "{}", w.origin);
        checked += 1;
    }
    assert_eq!(
        checked,
        EXPECTED_RENDERINGS.len(),
        "node DaemonSets checked"
    );
}

#[test]
fn host_network_only_where_asked_for() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut host = 0;
    for w in workloads(renderings) {
        let wanted = w.origin.starts_with(&format!("{OPTIONS_RENDERING}:"));
        let on = w.pod.pointer("/hostNetwork") == Some(&Value::Bool(true));
        assert_eq!(on, wanted, "{}: hostNetwork", w.origin);
        if on {
            // Cluster DNS still resolves from the host network.
            assert_eq!(
                w.pod.pointer("/dnsPolicy").and_then(Value::as_str),
                Some("ClusterFirstWithHostNet"),
                "{}",
                w.origin
            );
            host += 1;
        } else {
            assert!(w.pod.pointer("/dnsPolicy").is_none(), "{}", w.origin);
        }
    }
    assert_eq!(
        host, 2,
        "host-network workloads: the controller and the node plugin"
    );
}

/// Whether a rendering's instances serve inline ephemeral volumes: every
/// configuration with a local-lvm instance, unless it says otherwise.
fn expects_ephemeral(rendering: &str) -> bool {
    let lvm = ["-default", "-lvm", "-mixed", "-options", "-metrics"]
        .iter()
        .any(|k| rendering.contains(k));
    lvm && !rendering.contains("no-ephemeral")
}

#[test]
fn csidriver_lists_ephemeral_only_where_an_instance_serves_it() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut with = 0;
    for (origin, rendering) in renderings {
        let drivers: Vec<&Value> = rendering
            .docs
            .iter()
            .filter(|d| str_at(d, "/kind") == "CSIDriver")
            .collect();
        assert_eq!(drivers.len(), 1, "{origin}: CSIDriver objects");
        let modes: Vec<&str> = list_at(drivers[0], "/spec/volumeLifecycleModes")
            .iter()
            .map(|m| m.as_str().expect("mode"))
            .collect();
        let expected: &[&str] = if expects_ephemeral(origin) {
            with += 1;
            &["Persistent", "Ephemeral"]
        } else {
            &["Persistent"]
        };
        assert_eq!(modes, expected, "{origin}: volumeLifecycleModes");
    }
    assert!(
        with >= 10 && with < renderings.len(),
        "{with} with Ephemeral"
    );
}

fn count_kind(rendering: &Rendering, kind: &str) -> usize {
    rendering
        .docs
        .iter()
        .filter(|d| str_at(d, "/kind") == kind)
        .count()
}

/// The rules of every ClusterRole in a rendering that grant `group`.
fn cluster_roles_granting<'a>(rendering: &'a Rendering, group: &str) -> Vec<&'a str> {
    rendering
        .docs
        .iter()
        .filter(|d| str_at(d, "/kind") == "ClusterRole")
        .filter(|d| {
            list_at(d, "/rules").iter().any(|r| {
                list_at(r, "/apiGroups")
                    .iter()
                    .any(|g| g.as_str() == Some(group))
            })
        })
        .map(|d| str_at(d, "/metadata/name"))
        .collect()
}

#[test]
fn api_gated_objects_appear_exactly_where_their_api_is_served() {
    let Some(renderings) = renderings() else {
        return;
    };
    let mut served = 0;
    for (origin, rendering) in renderings {
        // Renderings whose values define no such class.
        let no_classes = origin.contains("no-ephemeral");
        for (api, kind) in [
            (ATTRIBUTES_CLASS_API, "VolumeAttributesClass"),
            (SNAPSHOT_CLASS_API, "VolumeSnapshotClass"),
            (GROUP_SNAPSHOT_CLASS_API, "VolumeGroupSnapshotClass"),
        ] {
            let count = count_kind(rendering, kind);
            // The LVM values define no VolumeAttributesClass.
            let none_defined =
                no_classes || (kind == "VolumeAttributesClass" && origin.contains("lvm"));
            if !rendering.serves(api) {
                assert_eq!(count, 0, "{origin}: {kind} without {api}");
            } else if !none_defined {
                assert!(count > 0, "{origin}: no {kind} although {api} is served");
                served += 1;
            }
        }

        // csi-snapshotter takes group snapshots exactly where their API is
        // served: with the gate on and the CRDs missing, 8.6.0 stops
        // serving plain VolumeSnapshots too.
        let groups = rendering.serves(GROUP_SNAPSHOT_CLASS_API);
        let mut snapshotters = 0;
        for doc in &rendering.docs {
            let kind = str_at(doc, "/kind");
            if kind != "Deployment" && kind != "DaemonSet" {
                continue;
            }
            for c in list_at(doc, "/spec/template/spec/containers") {
                if name(c) != "csi-snapshotter" {
                    continue;
                }
                let gate = args(c).iter().any(|a| a == GROUP_SNAPSHOT_GATE);
                assert_eq!(
                    gate, groups,
                    "{origin}: {kind} csi-snapshotter group snapshot gate"
                );
                snapshotters += 1;
            }
        }
        let granting = cluster_roles_granting(rendering, "groupsnapshot.storage.k8s.io");
        if groups {
            assert!(snapshotters > 0, "{origin}: no csi-snapshotter");
            assert_eq!(
                granting.len(),
                snapshotters,
                "{origin}: ClusterRoles granting group snapshots: {granting:?}"
            );
        } else {
            assert!(
                granting.is_empty(),
                "{origin}: {granting:?} grant group snapshots"
            );
        }
    }
    assert!(served >= 20, "only {served} served kinds checked");
}

/// `kubeVersion` from the chart's Chart.yaml.
fn chart_kube_version() -> String {
    let path = repo_root().join("deploy/helm/omnidisk/Chart.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("kubeVersion:"))
        .unwrap_or_else(|| panic!("{}: no kubeVersion", path.display()));
    line.trim().trim_matches('"').to_owned()
}

#[test]
fn chart_renders_from_the_oldest_supported_kubernetes_and_refuses_older() {
    let Some(validated) = validated() else {
        return;
    };
    // The chart states the floor the renderings and the README use; "-0"
    // admits vendor builds such as 1.25.0-eks-1.
    assert_eq!(
        chart_kube_version(),
        format!(">={OLDEST_KUBERNETES}-0"),
        "Chart.yaml kubeVersion"
    );

    let probe = |version: &str| {
        validated
            .kube_versions
            .iter()
            .find(|p| p.version == version)
            .unwrap_or_else(|| panic!("Kubernetes {version} was not probed"))
    };
    for version in [
        OLDEST_KUBERNETES,
        &format!("{OLDEST_KUBERNETES}-eks-1"),
        NEWEST_KUBERNETES,
    ] {
        let p = probe(version);
        assert!(
            p.rendered,
            "the chart refuses Kubernetes {version}: {}",
            p.error
        );
    }
    let too_old = probe(TOO_OLD_KUBERNETES);
    assert!(
        !too_old.rendered,
        "the chart renders for Kubernetes {TOO_OLD_KUBERNETES}, older than {OLDEST_KUBERNETES}"
    );
    assert!(
        too_old.error.contains("requires kubeVersion")
            && too_old.error.contains(&format!("v{TOO_OLD_KUBERNETES}")),
        "Kubernetes {TOO_OLD_KUBERNETES} refused for another reason: {}",
        too_old.error
    );

    // Every chart variant renders for the oldest with none of the optional
    // APIs, and nothing is rendered for an older cluster.
    let renderings = &validated.renderings;
    let oldest: Vec<&str> = renderings
        .iter()
        .filter(|(name, r)| name.starts_with("helm-") && r.kube_version == OLDEST_KUBERNETES)
        .map(|(name, r)| {
            assert!(
                r.apis.is_empty(),
                "{name}: the oldest cluster serves {:?}",
                r.apis
            );
            assert!(!r.docs.is_empty(), "{name} is empty");
            name.as_str()
        })
        .collect();
    for mix in [
        "helm-default",
        "helm-aws",
        "helm-aliyun",
        "helm-lvm",
        "helm-mixed",
    ] {
        assert!(
            oldest.contains(&mix),
            "{mix} is not rendered for Kubernetes {OLDEST_KUBERNETES}: {oldest:?}"
        );
    }
    for (name, r) in renderings {
        assert!(
            version_key(&r.kube_version) >= version_key(OLDEST_KUBERNETES),
            "{name}: rendered for Kubernetes {}, older than the oldest supported",
            r.kube_version
        );
    }
}

/// `major.minor.patch` as numbers, for ordering.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|e| panic!("version {version:?}: {e}"))
        })
        .collect()
}

//! Dylib providers through the real loader: this test builds the provider
//! libraries in `plugins/` with cargo, installs them in a root-owned temp
//! plugin directory and loads them as the driver would.
//!
//! Needs root (the loader only accepts root-owned files). Without root the
//! tests say so and pass, unless `OMNIDISK_REQUIRE_ALL=1`, where they fail.

#![allow(clippy::unwrap_used)]

// The loader is compiled in here until the crate exposes it as
// `omnidisk::plugin`; then this becomes `use omnidisk::plugin`.

#[allow(dead_code)]
use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use omnidisk::plugin::{PluginError, load};
use omnidisk_provider_api::ffi::abi::{ABI_MAJOR, ABI_MINOR, AbiVersion};
use omnidisk_provider_api::types::*;
use omnidisk_provider_api::{ErrorKind, Provider};
use tempfile::TempDir;

#[path = "conformance/dylibs.rs"]
#[allow(dead_code)]
mod dylibs;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The provider libraries this test loads, built once per test run.
struct Built {
    example: PathBuf,
    misbehaving: PathBuf,
    abi_v2: PathBuf,
    no_entry: PathBuf,
    newer_minor: PathBuf,
    abi_1_0: PathBuf,
    torn_table: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let lib = |name| dylibs::build_named(name, false);
        Built {
            example: lib("example"),
            misbehaving: lib("misbehaving"),
            abi_v2: lib("abi-v2"),
            no_entry: lib("no-entry"),
            newer_minor: lib("newer-minor"),
            abi_1_0: lib("abi-1-0"),
            torn_table: lib("torn-table"),
        }
    })
}

/// Log lines the driver emitted, provider lines included.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .init();
    });
}

fn logged() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// A root-owned 0700 plugin directory; `None` (after saying why) when this
/// process cannot make one, which fails the test under OMNIDISK_REQUIRE_ALL.
fn plugin_dir() -> Option<TempDir> {
    let dir = tempfile::tempdir().expect("temp dir");
    let uid = std::os::unix::fs::MetadataExt::uid(&fs::metadata(dir.path()).unwrap());
    if uid != 0 {
        assert!(
            std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() != Ok("1"),
            "dylib ABI tests need root (files must be root-owned), running as uid {uid}"
        );
        eprintln!("SKIPPED: dylib ABI tests need root, running as uid {uid}");
        return None;
    }
    capture_logs();
    Some(dir)
}

/// Copies `library` into `dir` as `name` with `mode`.
/// Goes through a new file and a rename, as an operator's upgrade should:
/// rewriting a library in place would change code this process has mapped.
fn install(dir: &Path, library: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    let fresh = dir.join(format!(".{name}.new"));
    fs::copy(library, &fresh).expect("install library");
    fs::set_permissions(&fresh, fs::Permissions::from_mode(mode)).expect("chmod");
    fs::rename(&fresh, &path).expect("move the library in place");
    path
}

fn init(instance: &str, settings: &str) -> InitRequest {
    InitRequest {
        instance: instance.into(),
        settings_toml: settings.into(),
        node_name: "node-a".into(),
        mode: "all".into(),
    }
}

/// Runs `f` on a single-threaded runtime, so a provider call that blocked the
/// executor would stall the test instead of passing, and drops the runtime
/// without waiting for abandoned blocking calls.
fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}

async fn load_misbehaving(
    dir: &Path,
    instance: &str,
    settings: &str,
    timeout: Duration,
) -> Arc<dyn Provider> {
    let misbehaving = &built().misbehaving;
    load_built(
        dir,
        misbehaving,
        "libmisbehaving.so",
        instance,
        settings,
        timeout,
    )
    .await
}

/// Installs `library` in `dir` as `file` and loads it.
async fn load_built(
    dir: &Path,
    library: &Path,
    file: &str,
    instance: &str,
    settings: &str,
    timeout: Duration,
) -> Arc<dyn Provider> {
    install(dir, library, file, 0o644);
    load(
        Path::new(file),
        dir,
        None,
        init(instance, settings),
        timeout,
    )
    .await
    .unwrap()
}

fn refused(result: Result<Arc<dyn Provider>, PluginError>) -> PluginError {
    match result {
        Ok(p) => panic!("loaded kind {:?}, expected an error", p.info().kind),
        Err(e) => e,
    }
}

fn volume_request(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        required_bytes: bytes,
        parameters: BTreeMap::new(),
        ..Default::default()
    }
}

const MIB: i64 = 1 << 20;

#[test]
fn example_provider_round_trips_every_trait_method() {
    let Some(dir) = plugin_dir() else { return };
    let data = tempfile::tempdir().unwrap();
    install(dir.path(), &built().example, "libexample.so", 0o755);
    let settings = format!("root = {:?}\ncapacity_bytes = {}", data.path(), 64 * MIB);
    run(async {
        let p = load(
            Path::new("libexample.so"),
            dir.path(),
            Some("example-files"),
            init("files-1", &settings),
            CALL_TIMEOUT,
        )
        .await
        .unwrap();

        let info = p.info();
        assert_eq!(info.kind, "example-files");
        assert!(info.attach_required && info.snapshots && info.expand);

        let node = p.node_info().await.unwrap();
        assert_eq!(node.node_id, "node-a");

        let v1 = p
            .create_volume(volume_request("pvc-1", 3 * MIB + 1))
            .await
            .unwrap();
        assert_eq!((v1.id.as_str(), v1.capacity_bytes), ("pvc-1", 4 * MIB));
        assert_eq!(
            p.create_volume(volume_request("pvc-1", 3 * MIB))
                .await
                .unwrap(),
            v1
        );
        let conflict = p
            .create_volume(volume_request("pvc-1", 5 * MIB))
            .await
            .unwrap_err();
        assert_eq!(conflict.kind(), ErrorKind::AlreadyExists, "{conflict}");
        let bad = p
            .create_volume(volume_request("../x", MIB))
            .await
            .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
        assert!(bad.message().contains("../x"), "{bad}");
        p.create_volume(volume_request("pvc-2", MIB)).await.unwrap();

        let page1 = p
            .list_volumes(ListRequest {
                max_entries: 1,
                starting_token: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(page1.entries.len(), 1);
        assert_eq!(page1.entries[0].volume.as_ref().unwrap().id, "pvc-1");
        let page2 = p
            .list_volumes(ListRequest {
                max_entries: 1,
                starting_token: page1.next_token,
            })
            .await
            .unwrap();
        assert_eq!(page2.entries[0].volume.as_ref().unwrap().id, "pvc-2");
        assert!(page2.next_token.is_empty());

        let grown = p
            .expand_volume(ExpandVolumeRequest {
                volume_id: "pvc-1".into(),
                required_bytes: 6 * MIB,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(grown.capacity_bytes, 6 * MIB);
        assert!(grown.node_expansion_required);

        // A method the dylib's provider leaves to the trait's default.
        let modify = p
            .modify_volume(ModifyVolumeRequest {
                volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(modify.kind(), ErrorKind::Unimplemented);

        let attached = p
            .attach_volume(AttachRequest {
                volume_id: "pvc-1".into(),
                node_id: "node-a".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let image = data.path().join("volumes/pvc-1.img");
        assert_eq!(
            attached.publish_context.get("image").map(String::as_str),
            image.to_str()
        );
        let other = p
            .attach_volume(AttachRequest {
                volume_id: "pvc-1".into(),
                node_id: "node-b".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(other.kind(), ErrorKind::FailedPrecondition);
        let status = p
            .get_volume(VolumeRef {
                volume_id: "pvc-1".into(),
            })
            .await
            .unwrap();
        assert_eq!(status.published_nodes, vec!["node-a".to_owned()]);
        assert_eq!(status.volume.unwrap().capacity_bytes, 6 * MIB);
        let busy = p
            .delete_volume(VolumeRef {
                volume_id: "pvc-1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::FailedPrecondition);

        let device = p
            .find_device(FindDeviceRequest {
                volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(Path::new(&device.device_path), image);
        let healthy = p
            .volume_condition(VolumeRef {
                volume_id: "pvc-1".into(),
            })
            .await
            .unwrap();
        assert!(!healthy.abnormal);
        let gone = p
            .volume_condition(VolumeRef {
                volume_id: "pvc-none".into(),
            })
            .await
            .unwrap();
        assert!(
            gone.abnormal && gone.message.contains("pvc-none"),
            "{gone:?}"
        );

        p.detach_volume(DetachRequest {
            volume_id: "pvc-1".into(),
            node_id: "node-a".into(),
        })
        .await
        .unwrap();
        assert!(
            p.get_volume(VolumeRef {
                volume_id: "pvc-1".into()
            })
            .await
            .unwrap()
            .published_nodes
            .is_empty()
        );

        let snap = p
            .create_snapshot(CreateSnapshotRequest {
                name: "snap-1".into(),
                source_volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (snap.source_volume_id.as_str(), snap.size_bytes),
            ("pvc-1", 6 * MIB)
        );
        assert!(snap.ready_to_use);
        assert_eq!(
            p.get_snapshot(SnapshotRef {
                snapshot_id: "snap-1".into()
            })
            .await
            .unwrap(),
            snap
        );
        let listed = p
            .list_snapshots(ListSnapshotsRequest {
                source_volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.entries, vec![snap.clone()]);
        let mut restore = volume_request("pvc-3", 6 * MIB);
        restore.source = Some(create_volume_request::Source::SourceSnapshotId(
            "snap-1".into(),
        ));
        let restored = p.create_volume(restore).await.unwrap();
        assert_eq!(
            restored.source,
            Some(volume::Source::SourceSnapshotId("snap-1".into()))
        );

        let capacity = p.get_capacity(CapacityRequest::default()).await.unwrap();
        assert_eq!(capacity.available_bytes, 64 * MIB - (6 + 1 + 6) * MIB);

        p.delete_snapshot(SnapshotRef {
            snapshot_id: "snap-1".into(),
        })
        .await
        .unwrap();
        let missing = p
            .get_snapshot(SnapshotRef {
                snapshot_id: "snap-1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        for id in ["pvc-1", "pvc-2", "pvc-3"] {
            p.delete_volume(VolumeRef {
                volume_id: id.into(),
            })
            .await
            .unwrap();
        }
        p.delete_volume(VolumeRef {
            volume_id: "pvc-1".into(),
        })
        .await
        .unwrap();
        let missing = p
            .get_volume(VolumeRef {
                volume_id: "pvc-1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert!(missing.message().contains("pvc-1"), "{missing}");

        // Many calls at once: the instance is shared by blocking threads.
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let p = Arc::clone(&p);
                tokio::spawn(async move { p.get_capacity(CapacityRequest::default()).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().available_bytes, 64 * MIB);
        }
    });

    // The provider's own log lines came through, tagged with the instance.
    let logs = logged();
    let line = logs
        .lines()
        .find(|l| l.contains("created volume") && l.contains("files-1"))
        .unwrap_or_else(|| panic!("no forwarded provider log line in:\n{logs}"));
    assert!(line.contains("provider_instance=\"files-1\""), "{line}");
    assert!(line.contains("volume=pvc-1 size=4194304"), "{line}");
    assert!(
        line.contains("provider_target=omnidisk_plugin_example"),
        "{line}"
    );
}

#[test]
fn a_panicking_call_is_internal_and_the_instance_keeps_serving() {
    let Some(dir) = plugin_dir() else { return };
    // `panic` panics in the first poll, on the caller's thread; `panic-later`
    // after the call went pending, on the dylib's own threads.
    for (instance, behaviour, said) in [
        ("panicky", "panic", "on purpose in create_volume"),
        ("latepanic", "panic-later", "on purpose after waiting"),
    ] {
        run(async {
            let settings = format!("behaviour = \"{behaviour}\"");
            let p = load_misbehaving(dir.path(), instance, &settings, CALL_TIMEOUT).await;
            for _ in 0..2 {
                let err = p.create_volume(volume_request("v", MIB)).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Internal);
                assert!(
                    err.message().contains("panicked") && err.message().contains(said),
                    "{err}"
                );
                assert!(err.message().contains("libmisbehaving.so"), "{err}");
                assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
            }
        });
    }
}

#[test]
fn a_hung_call_ends_with_deadline_exceeded_and_the_executor_stays_free() {
    let Some(dir) = plugin_dir() else { return };
    run(async {
        let p = load_misbehaving(
            dir.path(),
            "hanging",
            "behaviour = \"hang\"",
            Duration::from_millis(300),
        )
        .await;
        let err = p.create_volume(volume_request("v", MIB)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(
            err.message().contains("create_volume") && err.message().contains("abandoned"),
            "{err}"
        );
        // The hung thread is still inside the dylib; other calls go on.
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
        let again = p.create_volume(volume_request("v", MIB)).await.unwrap_err();
        assert!(again.message().contains("2 calls"), "{again}");
    });
}

#[test]
fn a_first_poll_blocking_its_thread_leaves_the_driver_serving() {
    let Some(dir) = plugin_dir() else { return };
    // The driver's own runtime is multi-threaded; so is this one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let timeout = Duration::from_millis(400);
    rt.block_on(async {
        let p = load_misbehaving(
            dir.path(),
            "blocker",
            "behaviour = \"block\"\nblock_ms = 1500",
            timeout,
        )
        .await;
        let started = Instant::now();
        // Its first poll sleeps 1.5 s on whichever driver thread polls it.
        let blocked = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.create_volume(volume_request("v", MIB)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Other calls on the same instance answer meanwhile.
        for _ in 0..20 {
            let p = Arc::clone(&p);
            let info = tokio::spawn(async move { p.node_info().await });
            assert_eq!(info.await.unwrap().unwrap().node_id, "node-a");
        }
        let meanwhile = started.elapsed();
        assert!(
            meanwhile < Duration::from_millis(1000),
            "other calls waited for the blocked thread: {meanwhile:?}"
        );
        // The library is now known to block: a call that blocks again does so
        // on the blocking pool and fails within the call timeout.
        let again = Instant::now();
        let err = p.create_volume(volume_request("w", MIB)).await.unwrap_err();
        let took = again.elapsed();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(300),
            "the second blocked call took {took:?}"
        );
        // The first one could only end when its thread came back; it overran
        // the timeout and says so.
        let first = blocked.await.unwrap().unwrap_err();
        assert_eq!(first.kind(), ErrorKind::DeadlineExceeded, "{first}");
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
    });
    rt.shutdown_background();
    let logs = logged();
    assert!(
        logs.contains("blocked a driver thread in the first poll") && logs.contains("blocker"),
        "{logs}"
    );
}

#[test]
fn calls_that_wait_finish_on_the_dylibs_threads() {
    let Some(dir) = plugin_dir() else { return };
    run(async {
        // `slow` sleeps on the dylib's timer: its first poll is pending, so
        // the answer comes back through the completion callback while this
        // single-threaded executor keeps going.
        let p = load_misbehaving(dir.path(), "slow", "behaviour = \"slow\"", CALL_TIMEOUT).await;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..16 {
            let p = Arc::clone(&p);
            calls.spawn(async move {
                let volume = p
                    .create_volume(volume_request(&format!("v{i}"), MIB + i))
                    .await;
                (i, volume)
            });
        }
        let mut answered = 0;
        while let Some(joined) = calls.join_next().await {
            let (i, volume) = joined.unwrap();
            let volume = volume.unwrap();
            assert_eq!(volume.id, format!("v{i}"));
            assert_eq!(volume.capacity_bytes, MIB + i);
            answered += 1;
        }
        assert_eq!(answered, 16);
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
    });
}

#[test]
fn an_abi_1_0_library_is_served_through_its_blocking_entry() {
    let Some(dir) = plugin_dir() else { return };
    let old = &built().abi_1_0;
    run(async {
        let p = load_built(
            dir.path(),
            old,
            "libold.so",
            "old",
            "behaviour = \"slow\"",
            CALL_TIMEOUT,
        )
        .await;
        let v = p.create_volume(volume_request("v", MIB)).await.unwrap();
        assert_eq!((v.id.as_str(), v.capacity_bytes), ("v", MIB));
        let err = p
            .get_volume(VolumeRef {
                volume_id: "vol-x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        // The blocking path keeps its timeout.
        let hung = load_built(
            dir.path(),
            old,
            "liboldhang.so",
            "oldhang",
            "behaviour = \"hang\"",
            Duration::from_millis(300),
        )
        .await;
        let err = hung
            .create_volume(volume_request("v", MIB))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(hung.node_info().await.unwrap().node_id, "node-a");
    });
    assert!(logged().contains("abi=1.0"), "{}", logged());
}

#[test]
fn a_table_size_ending_inside_a_field_leaves_that_field_absent() {
    let Some(dir) = plugin_dir() else { return };
    let torn = &built().torn_table;
    run(async {
        // The library says 1.2 but its size stops 3 bytes short of the end
        // of `start`: reading those 5 bytes would make a torn pointer. The
        // host sees no `start` and serves it through the blocking `call`.
        let p = load_built(
            dir.path(),
            torn,
            "libtorn.so",
            "torn",
            "behaviour = \"slow\"",
            CALL_TIMEOUT,
        )
        .await;
        let v = p.create_volume(volume_request("v", MIB)).await.unwrap();
        assert_eq!((v.id.as_str(), v.capacity_bytes), ("v", MIB));
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
    });
}

#[test]
fn a_second_completion_or_one_after_answering_is_ignored() {
    let Some(dir) = plugin_dir() else { return };
    // `complete-twice` completes a pending call, then again with the same
    // (by then freed) buffer; `complete-after-answer` answers at once and
    // then completes too. Taking either as an answer would free twice.
    for (instance, behaviour) in [
        ("twice", "complete-twice"),
        ("afteranswer", "complete-after-answer"),
    ] {
        run(async {
            let settings = format!("behaviour = \"{behaviour}\"");
            let p = load_misbehaving(dir.path(), instance, &settings, CALL_TIMEOUT).await;
            for i in 0..20 {
                let name = format!("v{i}");
                let v = p
                    .create_volume(volume_request(&name, MIB + i))
                    .await
                    .unwrap();
                assert_eq!((v.id.as_str(), v.capacity_bytes), (name.as_str(), MIB + i));
            }
            // Let the late completions arrive before looking.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
        });
    }
    let logs = logged();
    assert!(
        logs.contains("completed a call that is not pending"),
        "{logs}"
    );
}

#[test]
fn unreadable_buffers_are_internal_errors_naming_the_library() {
    let Some(dir) = plugin_dir() else { return };
    for (instance, behaviour, said) in [
        ("nullbuf", "null-buffer", "a null buffer claiming 16 bytes"),
        ("hugebuf", "huge-buffer", "more than the 67108864"),
    ] {
        run(async {
            let settings = format!("behaviour = \"{behaviour}\"");
            let p = load_misbehaving(dir.path(), instance, &settings, CALL_TIMEOUT).await;
            let err = p.create_volume(volume_request("v", MIB)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Internal);
            assert!(
                err.message().contains(said)
                    && err.message().contains("libmisbehaving.so")
                    && err.message().contains("create_volume"),
                "{err}"
            );
            assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
        });
    }
}

#[test]
fn a_malformed_response_is_internal_and_says_so() {
    let Some(dir) = plugin_dir() else { return };
    run(async {
        let p = load_misbehaving(
            dir.path(),
            "garbled",
            "behaviour = \"garbage\"",
            CALL_TIMEOUT,
        )
        .await;
        let err = p.create_volume(volume_request("v", MIB)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(
            err.full_message().contains("malformed response"),
            "{}",
            err.full_message()
        );
        assert!(
            err.full_message().contains("create_volume"),
            "{}",
            err.full_message()
        );
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
    });
}

#[test]
fn errors_keep_their_kind_across_the_boundary() {
    let Some(dir) = plugin_dir() else { return };
    run(async {
        let p = load_misbehaving(dir.path(), "plain", "", CALL_TIMEOUT).await;
        let err = p
            .get_volume(VolumeRef {
                volume_id: "vol-x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.message(), "volume vol-x not found");
        // Methods the dylib's provider does not implement.
        let err = p
            .list_snapshots(ListSnapshotsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unimplemented);
        let v = p.create_volume(volume_request("v", 7)).await.unwrap();
        assert_eq!((v.id.as_str(), v.capacity_bytes), ("v", 7));
    });
}

#[test]
fn another_abi_major_is_refused_naming_both_versions() {
    let Some(dir) = plugin_dir() else { return };
    install(dir.path(), &built().abi_v2, "libv2.so", 0o644);
    let err = refused(run(load(
        Path::new("libv2.so"),
        dir.path(),
        None,
        init("v2", ""),
        CALL_TIMEOUT,
    )));
    assert!(
        matches!(err, PluginError::AbiMajorMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("libv2.so")
            && text.contains("ABI 2.0")
            && text.contains(&format!("ABI {}", AbiVersion::CURRENT)),
        "{text}"
    );
}

#[test]
fn a_newer_minor_version_with_a_larger_table_still_loads() {
    let Some(dir) = plugin_dir() else { return };
    install(dir.path(), &built().newer_minor, "libnewer.so", 0o644);
    run(async {
        let p = load(
            Path::new("libnewer.so"),
            dir.path(),
            Some("misbehaving"),
            init("newer", ""),
            CALL_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(p.node_info().await.unwrap().node_id, "node-a");
    });
    let claimed = format!("abi={ABI_MAJOR}.{}", ABI_MINOR + 7);
    assert!(logged().contains(&claimed), "{}", logged());
}

#[test]
fn insecure_files_and_directories_are_refused_before_loading() {
    let Some(dir) = plugin_dir() else { return };
    for (mode, reason) in [
        (0o646, "writable by group or others (mode 0646)"),
        (0o664, "mode 0664"),
    ] {
        install(dir.path(), &built().example, "libopen.so", mode);
        let err = refused(run(load(
            Path::new("libopen.so"),
            dir.path(),
            None,
            init("x", ""),
            CALL_TIMEOUT,
        )));
        assert!(matches!(err, PluginError::InsecureFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains(reason) && err.to_string().contains("libopen.so"),
            "{err}"
        );
    }

    let owned = install(dir.path(), &built().example, "libowned.so", 0o644);
    std::os::unix::fs::chown(&owned, Some(65534), None).unwrap();
    let err = refused(run(load(
        Path::new("libowned.so"),
        dir.path(),
        None,
        init("x", ""),
        CALL_TIMEOUT,
    )));
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");

    let open_dir = tempfile::tempdir().unwrap();
    install(open_dir.path(), &built().example, "libexample.so", 0o644);
    fs::set_permissions(open_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused(run(load(
        Path::new("libexample.so"),
        open_dir.path(),
        None,
        init("x", ""),
        CALL_TIMEOUT,
    )));
    assert!(
        matches!(err, PluginError::InsecurePluginDir { .. }),
        "{err:?}"
    );
}

#[test]
fn libraries_outside_the_plugin_dir_are_refused() {
    let Some(dir) = plugin_dir() else { return };
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = install(elsewhere.path(), &built().example, "libexample.so", 0o644);
    symlink(&outside, dir.path().join("liblink.so")).unwrap();
    for library in [Path::new("liblink.so"), outside.as_path()] {
        let err = refused(run(load(
            library,
            dir.path(),
            None,
            init("x", ""),
            CALL_TIMEOUT,
        )));
        assert!(
            matches!(err, PluginError::OutsidePluginDir { .. }),
            "{library:?}: {err:?}"
        );
    }
}

#[test]
fn missing_files_and_symbols_are_clear_errors() {
    let Some(dir) = plugin_dir() else { return };
    let err = refused(run(load(
        Path::new("libnothere.so"),
        dir.path(),
        None,
        init("x", ""),
        CALL_TIMEOUT,
    )));
    assert!(matches!(err, PluginError::MissingFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("libnothere.so") && err.to_string().contains("does not exist"),
        "{err}"
    );

    install(dir.path(), &built().no_entry, "libnoentry.so", 0o644);
    let err = refused(run(load(
        Path::new("libnoentry.so"),
        dir.path(),
        None,
        init("x", ""),
        CALL_TIMEOUT,
    )));
    assert!(
        matches!(
            err,
            PluginError::MissingSymbol {
                symbol: "omnidisk_provider_v1_entry",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("libnoentry.so"), "{err}");

    let junk = dir.path().join("libjunk.so");
    fs::File::create(&junk)
        .unwrap()
        .write_all(b"not an ELF file")
        .unwrap();
    fs::set_permissions(&junk, fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(run(load(
        Path::new("libjunk.so"),
        dir.path(),
        None,
        init("x", ""),
        CALL_TIMEOUT,
    )));
    assert!(matches!(err, PluginError::Open { .. }), "{err:?}");
}

#[test]
fn a_kind_other_than_configured_is_refused() {
    let Some(dir) = plugin_dir() else { return };
    install(dir.path(), &built().misbehaving, "libmis.so", 0o644);
    let err = refused(run(load(
        Path::new("libmis.so"),
        dir.path(),
        Some("aws-ebs"),
        init("ebs-prod", "kind = \"local-lvm\""),
        CALL_TIMEOUT,
    )));
    assert!(matches!(err, PluginError::KindMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("\"local-lvm\"") && text.contains("\"aws-ebs\"") && text.contains("ebs-prod"),
        "{text}"
    );
}

#[test]
fn a_provider_refusing_its_settings_is_an_init_error_with_the_cause() {
    let Some(dir) = plugin_dir() else { return };
    install(dir.path(), &built().example, "libexample.so", 0o644);
    let err = refused(run(load(
        Path::new("libexample.so"),
        dir.path(),
        None,
        init("files-bad", "root = \"/tmp\"\nbogus = 1"),
        CALL_TIMEOUT,
    )));
    match &err {
        PluginError::Init {
            instance, source, ..
        } => {
            assert_eq!(instance, "files-bad");
            assert_eq!(source.kind(), ErrorKind::InvalidArgument);
            assert!(source.message().contains("bogus"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

//! Provider cdylibs for the conformance suite: built with cargo from this
//! repository (no prebuilt binaries), once per test run, and installed
//! root-owned in a private plugin directory the way an operator would.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A provider library this repository can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Library {
    /// `plugins/fake`: the fake provider of provider-api's `testing` module.
    Fake,
    /// `plugins/example`: the out-of-tree example provider.
    Example,
    /// `providers/aliyun-disk` with feature `dylib`.
    AliyunDisk,
    /// `providers/local-lvm` with feature `dylib`.
    LocalLvm,
    /// `providers/aws-ebs` with feature `dylib`.
    AwsEbs,
}

impl Library {
    /// Manifest directory, relative to the repository root.
    fn crate_dir(self) -> &'static str {
        match self {
            Library::Fake => "plugins/fake",
            Library::Example => "plugins/example",
            Library::AliyunDisk => "providers/aliyun-disk",
            Library::LocalLvm => "providers/local-lvm",
            Library::AwsEbs => "providers/aws-ebs",
        }
    }

    /// The crate's library name (the `.so` is `lib<name>.so`).
    fn lib_name(self) -> &'static str {
        match self {
            Library::Fake => "omnidisk_plugin_fake",
            Library::Example => "omnidisk_plugin_example",
            Library::AliyunDisk => "omnidisk_provider_aliyun_disk",
            Library::LocalLvm => "omnidisk_provider_local_lvm",
            Library::AwsEbs => "omnidisk_provider_aws_ebs",
        }
    }

    /// Features that make the cdylib export the provider.
    fn features(self) -> &'static [&'static str] {
        match self {
            Library::Fake | Library::Example => &[],
            Library::AliyunDisk | Library::LocalLvm | Library::AwsEbs => &["dylib"],
        }
    }

    /// The file name it is installed under in a plugin directory.
    pub fn file_name(self) -> String {
        format!("lib{}.so", self.lib_name())
    }
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ has a parent")
        .to_owned()
}

/// `<target>/dylib-plugins`, next to the running test's own build output, so
/// the libraries share the caller's CARGO_TARGET_DIR and its cache.
pub fn plugin_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/debug/deps/<test>-<hash> (benches: <target>/<profile>/deps/...)
    exe.ancestors()
        .nth(3)
        .expect("test binary inside a target dir")
        .join("dylib-plugins")
}

/// Builds `library` (once per process and profile: release when `release`,
/// so the benchmark compares an optimised driver with an optimised library)
/// and returns a private copy of the `.so`, so later builds cannot change
/// it under us.
pub fn build(library: Library, release: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(Library, bool, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // One build at a time: they share a target dir (cargo would serialise
    // them anyway) and this machine has two cores.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, path)) = built
        .iter()
        .find(|(l, r, _)| *l == library && *r == release)
    {
        return path.clone();
    }
    let target_dir = plugin_target_dir();
    let manifest = repository_root()
        .join(library.crate_dir())
        .join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--lib")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    if !library.features().is_empty() {
        cmd.arg("--features").arg(library.features().join(","));
    }
    let started = std::time::Instant::now();
    let output = cmd.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "building {} {:?} failed:\n{}",
        library.crate_dir(),
        library.features(),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "built {} as a cdylib ({}) in {:.1} s",
        library.crate_dir(),
        if release { "release" } else { "dev" },
        started.elapsed().as_secs_f64()
    );
    let stash = target_dir.join("stash");
    fs::create_dir_all(&stash).expect("stash dir");
    let profile = if release { "release" } else { "debug" };
    let copy = stash.join(format!("conformance-{profile}-{}", library.file_name()));
    fs::copy(target_dir.join(profile).join(library.file_name()), &copy)
        .expect("copy the built library");
    built.push((library, release, copy.clone()));
    copy
}

/// A plugin directory the loader accepts: root-owned, mode 0700 (a fresh
/// temp dir), holding `libraries` (built in the release profile when
/// `release`) with mode 0644. The caller has checked that it runs as root.
pub fn plugin_dir(libraries: &[Library], release: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let meta = fs::metadata(dir.path()).expect("stat plugin dir");
    assert_eq!(meta.uid(), 0, "the plugin dir must be root-owned");
    for library in libraries {
        let source = build(*library, release);
        let path = dir.path().join(library.file_name());
        fs::copy(&source, &path).expect("install library");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod library");
    }
    dir
}

//! Provider cdylibs for the dylib tests: built with cargo from this
//! repository by `scripts/build-dylibs` (no prebuilt binaries), once per test
//! run, and installed root-owned in a private plugin directory the way an
//! operator would.

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
    /// Its name in `scripts/build-dylibs`, which holds the list of
    /// libraries and how each is built.
    pub fn name(self) -> &'static str {
        match self {
            Library::Fake => "fake",
            Library::Example => "example",
            Library::AliyunDisk => "aliyun-disk",
            Library::LocalLvm => "local-lvm",
            Library::AwsEbs => "aws-ebs",
        }
    }

    /// The file name it is installed under in a plugin directory.
    pub fn file_name(self) -> String {
        format!("lib{}.so", self.name().replace('-', "_"))
    }
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core/ has a parent")
        .to_owned()
}

/// `<target>/dylib-plugins`, next to the running test's own build output
/// (cargo holds the test build's own directory while the tests run).
pub fn plugin_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/debug/deps/<test>-<hash> (benches: <target>/<profile>/deps/...)
    exe.ancestors()
        .nth(3)
        .expect("test binary inside a target dir")
        .join("dylib-plugins")
}

/// The library `name` of `scripts/build-dylibs` (release profile when
/// `release`), built once per process and profile.
///
/// With `OMNIDISK_DYLIB_DIR` set (scripts/test builds the debug libraries
/// there before the tests, in the test build's own target directory), the
/// debug libraries are taken from it and must be there. Otherwise the script
/// builds them into `<target>/dylib-plugins`: cargo holds the test build's
/// target directory while the tests run.
pub fn build_named(name: &str, release: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, bool, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    // One build at a time: they share a target dir (cargo would serialise
    // them anyway) and this machine has two cores.
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, path)) = built.iter().find(|(n, r, _)| n == name && *r == release) {
        return path.clone();
    }
    let prebuilt = std::env::var_os("OMNIDISK_DYLIB_DIR").filter(|_| !release);
    let path = if let Some(dir) = prebuilt {
        let path = PathBuf::from(dir).join(format!("{name}.so"));
        assert!(
            path.is_file(),
            "OMNIDISK_DYLIB_DIR is set but holds no {}: run scripts/build-dylibs <dir> first",
            path.display()
        );
        path
    } else {
        let target_dir = plugin_target_dir();
        let out = target_dir
            .join("stash")
            .join(if release { "release" } else { "debug" });
        let mut cmd = Command::new(repository_root().join("scripts/build-dylibs"));
        if release {
            cmd.arg("--release");
        }
        cmd.arg(&out).arg(name).env("CARGO_TARGET_DIR", &target_dir);
        if let Some(cargo) = std::env::var_os("CARGO") {
            // The cargo that runs this test, first on PATH for the script.
            if let Some(bin) = Path::new(&cargo).parent() {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![bin.to_owned()];
                paths.extend(std::env::split_paths(&path));
                cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
            }
        }
        let output = cmd.output().expect("scripts/build-dylibs runs");
        assert!(
            output.status.success(),
            "scripts/build-dylibs {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        out.join(format!("{name}.so"))
    };
    built.push((name.to_owned(), release, path.clone()));
    path
}

/// `library` built as [`build_named`] does.
pub fn build(library: Library, release: bool) -> PathBuf {
    build_named(library.name(), release)
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

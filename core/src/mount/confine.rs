//! Node paths confined beneath the kubelet directory.
//!
//! Every path a CO hands the node service (`staging_target_path`,
//! `target_path`, `volume_path`) must lie under the configured kubelet
//! directory. [`KubeletDir::confine`] checks that lexically (absolute, under
//! the root, only normal components), and [`ConfinedPath::check`] resolves
//! it with `openat2(2)` from the root with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so no component can be a
//! symbolic link that leads elsewhere. Directories and files the node
//! creates are made one component at a time beneath the root the same way.
//!
//! The kubelet directory itself may be a symbolic link (a relocated
//! `/var/lib/kubelet`): it is trusted configuration, resolved once, and
//! requests may name paths under either spelling.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// Longest path accepted from the CO (PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfineError {
    /// Not an absolute path.
    #[error("is not an absolute path")]
    NotAbsolute,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// `.`/`..` components or control characters.
    #[error("contains `..`, `.` or control characters")]
    BadComponent,
    /// Not under the kubelet directory.
    #[error("does not lie under the kubelet directory {0}")]
    Outside(PathBuf),
    /// The kubelet directory itself.
    #[error("is the kubelet directory itself")]
    IsRoot,
    /// A component is a symbolic link (or the resolution left the root).
    #[error("crosses a symbolic link or leaves the kubelet directory")]
    Symlink,
}

/// The configured kubelet directory.
#[derive(Debug, Clone)]
pub struct KubeletDir {
    configured: PathBuf,
    real: PathBuf,
}

impl KubeletDir {
    /// The directory `dir`, resolved once (it may be a symlink itself; when
    /// it does not exist yet, it is used as written).
    pub fn new(dir: &Path) -> Self {
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self {
            configured: dir.to_path_buf(),
            real,
        }
    }

    /// The directory as configured.
    pub fn path(&self) -> &Path {
        &self.configured
    }

    /// Checks `raw` lexically: absolute, at most [`MAX_PATH_BYTES`], no
    /// `.`/`..` or control characters, strictly under the kubelet directory.
    pub fn confine(&self, raw: &str) -> Result<ConfinedPath, ConfineError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(ConfineError::TooLong);
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(ConfineError::NotAbsolute);
        }
        // Checked on the raw text: `Path::components` drops inner `.`.
        if raw.chars().any(char::is_control)
            || raw.split('/').any(|part| part == "." || part == "..")
        {
            return Err(ConfineError::BadComponent);
        }
        let rel = path
            .strip_prefix(&self.configured)
            .or_else(|_| path.strip_prefix(&self.real))
            .map_err(|_| ConfineError::Outside(self.configured.clone()))?;
        if rel.as_os_str().is_empty() {
            return Err(ConfineError::IsRoot);
        }
        Ok(ConfinedPath {
            root: self.real.clone(),
            rel: rel.to_path_buf(),
            full: self.real.join(rel),
        })
    }
}

/// A path beneath the kubelet directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfinedPath {
    root: PathBuf,
    rel: PathBuf,
    full: PathBuf,
}

/// True for the errors `openat2` gives when resolution would cross a
/// symlink or leave the root.
fn is_escape(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::LOOP || *e == rustix::io::Errno::XDEV
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// An `io::Error` for a confinement violation, recognisable with
/// [`is_confinement_error`].
fn escape_error(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        ConfinedEscape(path.to_path_buf()),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("{0} crosses a symbolic link or leaves the kubelet directory")]
struct ConfinedEscape(PathBuf);

/// True when `err` says a path crossed a symlink or left the kubelet directory.
pub fn is_confinement_error(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<ConfinedEscape>())
}

impl ConfinedPath {
    /// The full path, as the mount table shows it.
    pub fn path(&self) -> &Path {
        &self.full
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        rustix::fs::open(
            &self.root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
    }

    fn open_rel(&self, root: &OwnedFd, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        rustix::fs::openat2(
            root,
            rel,
            // No O_NOFOLLOW: with O_PATH it would hand back a trailing
            // symlink itself; without it RESOLVE_NO_SYMLINKS refuses it.
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| {
            if is_escape(&e) {
                escape_error(&self.full)
            } else if e == rustix::io::Errno::NOTDIR {
                // A file where a directory component should be: the path
                // does not exist as named.
                io::Error::new(io::ErrorKind::NotFound, "a component is not a directory")
            } else {
                io::Error::from(e)
            }
        })
    }

    /// Resolves the path beneath the root without following symlinks:
    /// `Ok(Some(fd))` (an `O_PATH` handle), `Ok(None)` when some component
    /// does not exist, an error recognised by [`is_confinement_error`] when
    /// a component is a symlink.
    pub fn check(&self) -> io::Result<Option<OwnedFd>> {
        let root = self.open_root()?;
        match self.open_rel(&root, &self.rel, OFlags::PATH) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The missing part must not hide a symlink before it.
                let mut existing = self.rel.as_path();
                while let Some(parent) = existing.parent() {
                    if parent.as_os_str().is_empty() {
                        break;
                    }
                    match self.open_rel(&root, parent, OFlags::PATH) {
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => existing = parent,
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the path for reading beneath the root (a block device bound on
    /// a target file, say).
    pub fn open_read(&self) -> io::Result<OwnedFd> {
        let root = self.open_root()?;
        self.open_rel(&root, &self.rel, OFlags::RDONLY)
    }

    fn split(&self) -> io::Result<(&Path, &OsStr)> {
        let name = self.rel.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "path has no last component")
        })?;
        Ok((self.rel.parent().unwrap_or(Path::new("")), name))
    }

    /// Opens (creating as needed, mode 0750) every directory of `rel`
    /// beneath the root, one component at a time; returns the last one.
    fn make_dirs(&self, root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
        let mut dir = rustix::io::dup(root)?;
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(escape_error(&self.full));
            };
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o750)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = rustix::fs::openat2(
                &dir,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                resolve_flags(),
            )
            .map_err(|e| {
                if is_escape(&e) || e == rustix::io::Errno::NOTDIR {
                    escape_error(&self.full)
                } else {
                    io::Error::from(e)
                }
            })?;
        }
        Ok(dir)
    }

    /// Creates the directory and its parents beneath the root; true when
    /// the last component was created by this call.
    pub fn create_dir_all(&self) -> io::Result<bool> {
        let root = self.open_root()?;
        let (parent, name) = self.split()?;
        let parent = self.make_dirs(&root, parent)?;
        let created = match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o750)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        // What exists there must be a directory reached without symlinks.
        rustix::fs::openat2(
            &parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        )
        .map_err(|e| {
            if is_escape(&e) || e == rustix::io::Errno::NOTDIR {
                escape_error(&self.full)
            } else {
                io::Error::from(e)
            }
        })?;
        Ok(created)
    }

    /// Creates an empty regular file (mode 0640) and its parent directories
    /// beneath the root. Fails with `AlreadyExists` when something is there.
    pub fn create_file(&self) -> io::Result<()> {
        let root = self.open_root()?;
        let (parent, name) = self.split()?;
        let parent = self.make_dirs(&root, parent)?;
        rustix::fs::openat(
            &parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o640),
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// Removes the directory (only if empty) or file at the path, beneath
    /// the root. Absent is success.
    pub fn remove(&self) -> io::Result<()> {
        let root = self.open_root()?;
        let (parent, name) = self.split()?;
        let parent = match self.open_rel(&root, parent, OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let stat = match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let is_dir =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory;
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&parent, name, flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_lexically() {
        let root = tempfile::tempdir().unwrap();
        let kubelet = KubeletDir::new(root.path());
        let base = root.path().display().to_string();
        let ok = kubelet
            .confine(&format!("{base}/pods/x/volumes/v"))
            .unwrap();
        assert!(ok.path().ends_with("pods/x/volumes/v"));
        let cases = [
            ("relative/path".to_string(), ConfineError::NotAbsolute),
            ("/".to_string(), ConfineError::Outside(root.path().into())),
            (
                "/etc/passwd".to_string(),
                ConfineError::Outside(root.path().into()),
            ),
            (format!("{base}"), ConfineError::IsRoot),
            (format!("{base}/a/../../etc"), ConfineError::BadComponent),
            (format!("{base}/a/./b"), ConfineError::BadComponent),
            (format!("{base}/a\nb"), ConfineError::BadComponent),
            (
                format!("{base}/{}", "x".repeat(MAX_PATH_BYTES)),
                ConfineError::TooLong,
            ),
            (
                format!("{base}x/sibling"),
                ConfineError::Outside(root.path().into()),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(kubelet.confine(&raw).unwrap_err(), want, "{raw:?}");
        }
    }

    #[test]
    fn symlinks_in_any_component_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pods/a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("pods/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("pods/a/leaf")).unwrap();
        let kubelet = KubeletDir::new(root.path());
        let base = root.path().display();
        for raw in [
            format!("{base}/pods/link/x"),
            format!("{base}/pods/link"),
            format!("{base}/pods/a/leaf"),
            format!("{base}/pods/link/new/deeper"),
        ] {
            let p = kubelet.confine(&raw).unwrap();
            let err = p.check().unwrap_err();
            assert!(is_confinement_error(&err), "{raw}: {err}");
            let err = p.create_dir_all().unwrap_err();
            assert!(is_confinement_error(&err), "{raw}: {err}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let fresh = kubelet.confine(&format!("{base}/pods/b/c")).unwrap();
        assert!(fresh.check().unwrap().is_none());
        assert!(fresh.create_dir_all().unwrap());
        assert!(!fresh.create_dir_all().unwrap());
        assert!(fresh.check().unwrap().is_some());
        fresh.remove().unwrap();
        assert!(fresh.check().unwrap().is_none());
        let file = kubelet.confine(&format!("{base}/pods/b/dev")).unwrap();
        file.create_file().unwrap();
        assert_eq!(
            file.create_file().unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        file.remove().unwrap();
        // A symlinked kubelet directory itself is trusted.
        let alias = tempfile::tempdir().unwrap();
        let link = alias.path().join("kubelet");
        std::os::unix::fs::symlink(root.path(), &link).unwrap();
        let via = KubeletDir::new(&link);
        let p = via.confine(&format!("{}/pods/a", link.display())).unwrap();
        assert!(p.check().unwrap().is_some());
        assert!(
            p.path()
                .starts_with(std::fs::canonicalize(root.path()).unwrap())
        );
    }
}

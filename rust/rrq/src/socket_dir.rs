//! The private directory of the runner unix sockets.
//!
//! A spawned runner's listener is a unix socket (mode 0600) in a directory
//! only the orchestrator's user can enter (mode 0700, created fresh with a
//! random name, so nothing can be planted in it first): another user's process
//! cannot even connect, let alone send a hello. The directory is under
//! `$XDG_RUNTIME_DIR` when that is set, else the system temp directory, and is
//! removed when the orchestrator stops.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A created socket directory; removed (with its sockets) on drop.
#[derive(Debug)]
pub struct SocketDir {
    path: PathBuf,
}

impl SocketDir {
    /// Creates `rrq-<random>` (mode 0700) under `$XDG_RUNTIME_DIR` or the
    /// temp directory.
    pub fn create() -> std::io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        Self::create_in(&base)
    }

    /// Creates `rrq-<random>` (mode 0700) under `base`.
    pub fn create_in(base: &Path) -> std::io::Result<Self> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = base.join(format!("rrq-{name}"));
        // `create` (not `create_all`) fails if the name exists: the directory
        // is ours, with our mode, from the start.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        // The umask may have narrowed the mode further; never widened it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the socket of the `index`-th runner (short: unix socket paths
    /// are limited to about 100 bytes).
    pub fn socket(&self, index: usize) -> PathBuf {
        self.path.join(format!("r{index}.sock"))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_private_and_removed() {
        let dir = SocketDir::create_in(&std::env::temp_dir()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = dir.path().to_owned();
        assert!(dir.socket(3).starts_with(&path));
        drop(dir);
        assert!(!path.exists());
    }
}

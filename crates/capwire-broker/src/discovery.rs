//! The discovery file: how plugins on this machine find the broker and the
//! token it wants. Mode 0600, written atomically (a temporary file, fsync'd,
//! renamed), removed on clean shutdown; one left by a dead process is stale
//! and replaced.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The discovery file's name in the data directory.
pub const FILE_NAME: &str = "broker.json";

/// What the discovery file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The broker's process id.
    pub pid: u32,
    /// The Unix socket, as a capwire address (`unix:///…`).
    pub unix: String,
    /// The WebSocket URL (`ws://127.0.0.1:PORT/`); JSON-RPC over HTTP POST
    /// uses the same port (`http://…`).
    pub ws: String,
    /// The same port as an HTTP URL.
    pub http: String,
    /// The admin HTTP API's base URL (`http://127.0.0.1:PORT/admin/`:
    /// `GET status`, `endpoints`, `inbox`), when it runs.
    #[serde(default)]
    pub admin: Option<String>,
    /// The bearer token every connection must present.
    pub token: String,
    /// When the broker started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

impl Discovery {
    /// Reads the discovery file in `data_dir`.
    pub fn read(data_dir: &Path) -> std::io::Result<Discovery> {
        let bytes = std::fs::read(data_dir.join(FILE_NAME))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes it to `data_dir` atomically, mode 0600.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<PathBuf> {
        let path = data_dir.join(FILE_NAME);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        capwire::auth::write_secret(&path, &text)?;
        Ok(path)
    }
}

/// What was found where the discovery file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// No file.
    None,
    /// A file from a process that is gone (or unreadable): replace it.
    Stale,
    /// A broker with this pid is running.
    Live(u32),
}

/// Looks at the discovery file in `data_dir`.
pub fn existing(data_dir: &Path) -> Existing {
    match Discovery::read(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Existing::None,
        Err(_) => Existing::Stale,
        Ok(d) if d.pid != std::process::id() && crate::broker::pid_alive(d.pid) => {
            Existing::Live(d.pid)
        }
        Ok(_) => Existing::Stale,
    }
}

/// A new random bearer token (256 bits, hex).
pub fn new_token() -> std::io::Result<String> {
    capwire::auth::new_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_with_mode_0600_and_stale_files_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(existing(dir.path()), Existing::None);
        let d = Discovery {
            pid: std::process::id(),
            unix: "unix:///x.sock".into(),
            ws: "ws://127.0.0.1:1/".into(),
            http: "http://127.0.0.1:1/".into(),
            admin: None,
            token: new_token().unwrap(),
            started_at_ms: 1,
        };
        let path = d.write(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(Discovery::read(dir.path()).unwrap(), d);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        // Our own pid is not "another live broker".
        assert_eq!(existing(dir.path()), Existing::Stale);
        // A dead pid is stale; a live other pid is live.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        Discovery {
            pid: dead,
            ..d.clone()
        }
        .write(dir.path())
        .unwrap();
        assert_eq!(existing(dir.path()), Existing::Stale);
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        Discovery {
            pid: sleeper.id(),
            ..d.clone()
        }
        .write(dir.path())
        .unwrap();
        assert_eq!(existing(dir.path()), Existing::Live(sleeper.id()));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_ne!(new_token().unwrap(), d.token);
        assert_eq!(d.token.len(), 64);
    }
}

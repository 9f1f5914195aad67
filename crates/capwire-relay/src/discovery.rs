//! The discovery file: where devices on this machine find the relay and its
//! pairing token. Mode 0600, written atomically (a temporary file, synced,
//! renamed), removed when the relay stops. The broker writes the same kind
//! of file; the pattern is shared, the contents differ.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the discovery file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Discovery {
    /// The relay's process id.
    pub pid: u32,
    /// The WebSocket URL clients attach to.
    pub url: String,
    /// The pairing token (a bearer token).
    pub token: String,
    /// The agent's command line.
    pub agent: String,
    /// When the relay started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

impl Discovery {
    /// Reads a discovery file.
    pub fn read(path: &Path) -> std::io::Result<Discovery> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes it to `path` atomically, mode 0600 (the directory is made if
    /// missing).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        capwire::auth::write_secret(path, &text)
    }
}

/// A new random pairing token (256 bits, hex).
pub(crate) fn new_token() -> std::io::Result<String> {
    capwire::auth::new_token()
}

/// A short random tag (64 bits, hex): ring epochs differ per relay start.
pub(crate) fn new_tag() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("relay.json");
        let d = Discovery {
            pid: 7,
            url: "ws://127.0.0.1:1/".into(),
            token: new_token().unwrap(),
            agent: "node agent.mjs".into(),
            started_at_ms: 1,
        };
        d.write(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(Discovery::read(&path).unwrap(), d);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("relay.json")]);
        assert_eq!(d.token.len(), 64);
        assert_ne!(new_token().unwrap(), d.token);
        assert_ne!(new_tag(), new_tag());
    }
}

//! Bearer tokens: a server that requires one admits a connection only when
//! it presents a token it knows, and the identity the token stands for
//! reaches the connection's [`Attestation`](crate::attestation::Attestation)
//! (and so every handler's `CallContext` and the policy hook).
//!
//! Where a connection presents its token:
//!
//! - WebSocket and HTTP: an `Authorization: Bearer TOKEN` header, or a
//!   `token=TOKEN` query parameter (browsers cannot set WebSocket headers);
//! - raw capwire/1 transports (TCP, Unix sockets, stdio): the `token` field of
//!   its `hello` ([`SessionConfig::token`](crate::SessionConfig::token)).
//!
//! A missing or wrong token gets `unauthenticated` in the peer's dialect and
//! the connection is closed: nothing is served. Tokens are compared in
//! constant time, against every known token, so the time taken does not say
//! how much of a guess was right or which token it resembled.
//!
//! ```
//! use capwire::auth::Tokens;
//!
//! let tokens = Tokens::new().with("s3cret-for-alice", "alice");
//! assert_eq!(tokens.identify("s3cret-for-alice"), Some("alice"));
//! assert_eq!(tokens.identify("s3cret-for-bob"), None);
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The tokens a server accepts, each with the identity it proves.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<(Vec<u8>, String)>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// No tokens (every connection is refused until one is added).
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// Adds `token`, which proves `identity`.
    pub fn with(mut self, token: impl AsRef<[u8]>, identity: impl Into<String>) -> Tokens {
        Arc::make_mut(&mut self.entries).push((token.as_ref().to_vec(), identity.into()));
        self
    }

    /// The identity `presented` proves, if it is one of the tokens. Every
    /// token is compared, in constant time.
    pub fn identify(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (token, identity) in self.entries.iter() {
            if bool::from(token.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(identity.as_str());
            }
        }
        found
    }
}

/// A token a peer presented, kept out of logs and serialized attestations.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented(pub(crate) String);

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Presented(<redacted>)")
    }
}

/// True for the codes a peer refuses a connection with (a token it does
/// not accept, a policy that says no): every pending call of the connection
/// fails with that status as it is, not as `unavailable`.
pub(crate) fn is_refusal(code: capwire_proto::Code) -> bool {
    matches!(
        code,
        capwire_proto::Code::Unauthenticated | capwire_proto::Code::PermissionDenied
    )
}

/// The token in an `Authorization: Bearer …` header value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `token` parameter of a request's query string.
pub(crate) fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "token").then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_and_refuse() {
        let t = Tokens::new().with("a", "alice").with("bb", "bob");
        assert_eq!(t.identify("a"), Some("alice"));
        assert_eq!(t.identify("bb"), Some("bob"));
        for wrong in ["", "b", "aa", "A", "bb "] {
            assert_eq!(t.identify(wrong), None, "{wrong:?}");
        }
        assert_eq!(Tokens::new().identify(""), None);
        assert_eq!(
            format!("{:?}", Presented("x".into())),
            "Presented(<redacted>)"
        );
    }

    #[test]
    fn tokens_are_found_in_headers_and_queries() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(query_token("a=1&token=x%2By+z").as_deref(), Some("x+y z"));
        assert_eq!(query_token("token=%zz").as_deref(), Some("%zz"));
        assert_eq!(query_token("tok=1"), None);
    }
}

/// A new random bearer token: 256 bits from the operating system's random
/// source, as 64 hex digits.
pub fn new_token() -> std::io::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret (a file holding a token, a private key) so that only its
/// owner can read it (mode 0600 on Unix) and nobody ever reads half of it:
/// written to a temporary file beside `path`, synced, then renamed over it.
/// The directory is made if missing.
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_are_private_and_replace_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.json");
        write_secret(&path, b"one").unwrap();
        write_secret(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        // A path whose directory cannot be made fails, and says why.
        let blocked = path.join("below-a-file");
        assert!(write_secret(&blocked, b"x").is_err());
    }
}

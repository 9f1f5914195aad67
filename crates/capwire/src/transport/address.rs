//! The one address syntax every command and API accepts.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::TransportError;

/// Where to connect or listen.
///
/// | form | meaning |
/// |---|---|
/// | `tcp://127.0.0.1:7000` | TCP |
/// | `tls://example.com:7000` | TCP with TLS |
/// | `unix:///run/x.sock` (or `unix:rel.sock`) | Unix domain socket |
/// | `ws://127.0.0.1:7000/path` | WebSocket |
/// | `wss://example.com:7000/path` | WebSocket with TLS |
/// | `http://127.0.0.1:7000/path` | HTTP POSTs, one message each (connecting); the same port as `ws://` (listening) |
/// | `https://example.com:7000/path` | the same with TLS, as `wss://` |
/// | `stdio:` | this process's stdin/stdout |
/// | `exec:CMD ARGS…` | a child process's stdin/stdout (shell-style quoting) |
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `tcp://HOST:PORT`.
    Tcp(String),
    /// `tls://HOST:PORT`: TCP with TLS.
    Tls(String),
    /// `unix://PATH`.
    Unix(PathBuf),
    /// `ws://HOST:PORT/PATH`, or `wss://` with TLS.
    Ws {
        /// `HOST:PORT`.
        authority: String,
        /// The request path, starting with `/`.
        path: String,
        /// `wss://`: over TLS.
        tls: bool,
    },
    /// `http://HOST:PORT/PATH`: to connect, each message is one `POST`
    /// (JSON-RPC over HTTP); to listen, the same as [`Address::Ws`].
    /// `https://` with TLS.
    Http {
        /// `HOST:PORT`.
        authority: String,
        /// The request path, starting with `/`.
        path: String,
        /// `https://`: over TLS.
        tls: bool,
    },
    /// `stdio:`.
    Stdio,
    /// `exec:PROGRAM ARGS…`.
    Exec {
        /// The program to run.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

fn bad(input: &str, reason: &str) -> TransportError {
    TransportError::Address {
        input: input.to_owned(),
        reason: reason.to_owned(),
    }
}

fn check_authority(input: &str, authority: &str) -> Result<(), TransportError> {
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(bad(input, "expected HOST:PORT"));
    };
    if host.is_empty() {
        return Err(bad(input, "missing host"));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| bad(input, "port must be a number from 0 to 65535"))
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(input: &str) -> Result<Address, TransportError> {
        if let Some(rest) = input.strip_prefix("tcp://") {
            let authority = rest.trim_end_matches('/');
            check_authority(input, authority)?;
            Ok(Address::Tcp(authority.to_owned()))
        } else if let Some(rest) = input.strip_prefix("tls://") {
            let authority = rest.trim_end_matches('/');
            check_authority(input, authority)?;
            Ok(Address::Tls(authority.to_owned()))
        } else if let Some(rest) = input.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(bad(input, "missing socket path"));
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else if let Some((scheme, rest)) = input
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "ws" | "wss" | "http" | "https"))
        {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            check_authority(input, authority)?;
            let (authority, path) = (authority.to_owned(), path.to_owned());
            Ok(match scheme {
                "ws" | "wss" => Address::Ws {
                    authority,
                    path,
                    tls: scheme == "wss",
                },
                _ => Address::Http {
                    authority,
                    path,
                    tls: scheme == "https",
                },
            })
        } else if input == "stdio:" || input == "stdio" {
            Ok(Address::Stdio)
        } else if let Some(rest) = input.strip_prefix("exec:") {
            let words = shlex::split(rest).ok_or_else(|| bad(input, "unbalanced quotes"))?;
            let mut words = words.into_iter();
            let program = words.next().ok_or_else(|| bad(input, "missing command"))?;
            Ok(Address::Exec {
                program,
                args: words.collect(),
            })
        } else {
            Err(bad(
                input,
                "expected tcp://HOST:PORT, tls://HOST:PORT, unix://PATH, ws[s]://HOST:PORT/PATH, \
                 http[s]://HOST:PORT/PATH, stdio: or exec:CMD",
            ))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Tls(a) => write!(f, "tls://{a}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Ws {
                authority,
                path,
                tls,
            } => {
                let s = if *tls { "s" } else { "" };
                write!(f, "ws{s}://{authority}{path}")
            }
            Address::Http {
                authority,
                path,
                tls,
            } => {
                let s = if *tls { "s" } else { "" };
                write!(f, "http{s}://{authority}{path}")
            }
            Address::Stdio => f.write_str("stdio:"),
            Address::Exec { program, args } => {
                let words = std::iter::once(program).chain(args);
                let quoted: Vec<String> = words
                    .map(|w| shlex::try_quote(w).map_or_else(|_| w.clone(), |q| q.into_owned()))
                    .collect();
                write!(f, "exec:{}", quoted.join(" "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_prints_it_back() {
        for s in [
            "tcp://127.0.0.1:7000",
            "tcp://[::1]:7000",
            "unix:///run/x.sock",
            "ws://127.0.0.1:7000/rpc",
            "ws://localhost:80/",
            "http://127.0.0.1:7000/rpc",
            "tls://localhost:7001",
            "wss://localhost:7002/rpc",
            "https://[::1]:7003/",
            "stdio:",
            "exec:my-agent --flag 'two words'",
        ] {
            let a: Address = s.parse().expect(s);
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "exec:node server.js --port=1"
                .parse::<Address>()
                .expect("exec"),
            Address::Exec {
                program: "node".into(),
                args: vec!["server.js".into(), "--port=1".into()]
            }
        );
        assert_eq!(
            "ws://h:1".parse::<Address>().expect("ws"),
            Address::Ws {
                authority: "h:1".into(),
                path: "/".into(),
                tls: false,
            }
        );
        assert_eq!(
            "unix:rel.sock".parse::<Address>().expect("unix"),
            Address::Unix("rel.sock".into())
        );
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for (s, want) in [
            ("tcp://127.0.0.1", "HOST:PORT"),
            ("tcp://:80", "missing host"),
            ("tcp://h:99999", "port"),
            ("unix:", "missing socket path"),
            ("ws://h:x/", "port"),
            ("wss://h/", "HOST:PORT"),
            ("tls://h", "HOST:PORT"),
            ("exec:", "missing command"),
            ("exec:'unterminated", "unbalanced"),
            ("ftp://h:1", "expected tcp://"),
            ("http://h/", "HOST:PORT"),
        ] {
            let err = s.parse::<Address>().expect_err(s).to_string();
            assert!(err.contains(want), "{s}: {err}");
        }
    }
}

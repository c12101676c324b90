//! What the short-lived `lifecycle-runc` calls ask a container's supervisor, over its socket: one
//! JSON line each way per connection. The socket is in a directory only root can enter.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Ask {
    /// From `create`, once runc has created the container: its init's pid.
    Created(i32),
    /// `start`: run the init sequence, start the entrypoint; answered once it runs.
    Start,
    /// `kill ID <signal>`: a stop with this signal number, if it is one the supervisor acts
    /// on ([`Answer::PassOn`] otherwise).
    Stop(i32),
    /// `kill ID 9` is on its way to the container: cut everything short.
    Kill,
    /// `delete` removed the container. Never answered: the connection closes when the
    /// supervisor has finished (the sidecars' stop, postStop) and exited.
    Delete,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Answer {
    Done,
    /// Not the supervisor's to handle: the caller passes the call on to the runtime.
    PassOn,
    Failed(String),
}

/// Where a container's supervisor keeps its socket and state:
/// `$LIFECYCLE_RUNC_STATE` (default `/run/lifecycle-runc`)`/<key>`, where `<key>` stands for
/// runc's `--root` and the container id (containers in two roots may share an id), short
/// enough for a socket path whatever the id's length.
pub fn state_dir(root: Option<&Path>, id: &str) -> PathBuf {
    let base = std::env::var_os("LIFECYCLE_RUNC_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/lifecycle-runc"));
    let root = root.unwrap_or(Path::new("/run/runc"));
    let key = [root.as_os_str().as_encoded_bytes(), b"\0", id.as_bytes()].concat();
    base.join(format!("{:016x}", fnv1a(&key)))
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("supervisor.sock")
}

/// FNV-1a, 64 bits: a short name for a path that stays the same across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A connection to a container's supervisor, if it has one that answers.
pub struct Connection {
    stream: UnixStream,
}

impl Connection {
    pub fn open(dir: &Path) -> Option<Connection> {
        UnixStream::connect(socket_path(dir))
            .ok()
            .map(|stream| Connection { stream })
    }

    pub fn send(&mut self, ask: &Ask) -> io::Result<()> {
        let mut line = serde_json::to_vec(ask)?;
        line.push(b'\n');
        self.stream.write_all(&line)
    }

    /// The answer; an error if the supervisor closed the connection without one.
    pub fn answer(&mut self) -> io::Result<Answer> {
        let mut line = String::new();
        BufReader::new(&self.stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the container's lifecycle supervisor ended without an answer",
            ));
        }
        Ok(serde_json::from_str(&line)?)
    }

    pub fn ask(mut self, ask: &Ask) -> io::Result<Answer> {
        self.send(ask)?;
        self.answer()
    }

    /// Waits until the supervisor closes the connection (it has exited).
    pub fn wait_closed(self) {
        let mut rest = Vec::new();
        let _ = io::Read::read_to_end(&mut &self.stream, &mut rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_differ_by_root_and_id() {
        let a = state_dir(Some(Path::new("/run/runc")), "x");
        assert_eq!(a, state_dir(None, "x"));
        assert_ne!(
            a,
            state_dir(Some(Path::new("/run/docker/runtime-runc/moby")), "x")
        );
        assert_ne!(a, state_dir(None, "y"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn asks_are_one_json_line() {
        let line = serde_json::to_string(&Ask::Stop(15)).unwrap();
        assert_eq!(line, r#"{"stop":15}"#);
        assert_eq!(
            serde_json::from_str::<Ask>(r#""start""#).unwrap(),
            Ask::Start
        );
    }
}

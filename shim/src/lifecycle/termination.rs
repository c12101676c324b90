//! The container's termination-message file (Kubernetes' `terminationMessagePath`, bind-mounted
//! by the kubelet from the pod's directory, `/dev/termination-log` by default): when a hook
//! failure ends the container and the container wrote no message of its own, the reason and the
//! tail of the hook's output go there, so `kubectl describe pod` and
//! `lastState.terminated.message` show why.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::bundle::Bundle;

/// Where the kubelet mounts the file unless the container says otherwise.
const DEFAULT_PATH: &str = "/dev/termination-log";
/// The kubelet's annotation naming the container's `terminationMessagePath`, when the runtime
/// handler passes container annotations on.
const PATH_ANNOTATION: &str = "io.kubernetes.container.terminationMessagePath";
/// The most the kubelet reads of the file (`maxContainerTerminationMessageLength`).
pub const MAX_MESSAGE: usize = 4096;

/// The host side of the container's termination-message mount.
#[derive(Debug, Clone)]
pub struct TerminationLog {
    source: PathBuf,
}

impl TerminationLog {
    /// The bind mount at the container's termination-message path, if the bundle has one.
    pub fn of(bundle: &Bundle) -> Option<TerminationLog> {
        let path = bundle.annotation(PATH_ANNOTATION).unwrap_or(DEFAULT_PATH);
        let source = bundle
            .binds
            .iter()
            .find(|(destination, _)| destination.as_path() == std::path::Path::new(path))
            .map(|(_, source)| source.clone())?;
        Some(TerminationLog { source })
    }

    /// Writes `message`, bounded, unless the file already holds the container's own. The file
    /// is the kubelet's: it is never created, and a symlink in its place is not followed.
    pub fn write(&self, message: &str) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.source)?;
        if file.metadata()?.len() > 0 {
            return Ok(());
        }
        file.write_all(bounded(message).as_bytes())
    }
}

/// `message` within [`MAX_MESSAGE`] bytes: its first line (the reason) and as much of its end
/// (the end of the hook's output) as fits.
fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    const CUT: &str = "\n[...]\n";
    let first = message.lines().next().unwrap_or_default();
    let first = &first[..first.floor_char_boundary(MAX_MESSAGE / 2)];
    let room = MAX_MESSAGE - first.len() - CUT.len();
    let start = message.ceil_char_boundary(message.len() - room);
    format!("{first}{CUT}{}", &message[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_keeps_its_reason_and_the_end_of_the_output() {
        let output: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let message = format!("FailedPostStartHook: postStart exec failed; output:\n{output}");
        let kept = bounded(&message);
        assert!(kept.len() <= MAX_MESSAGE, "{}", kept.len());
        assert!(kept.starts_with("FailedPostStartHook: postStart exec failed; output:\n[...]\n"));
        assert!(kept.ends_with("line 1999\n"));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn the_containers_own_message_is_kept_and_a_symlink_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("termination-log");
        std::fs::write(&file, "").unwrap();
        let log = TerminationLog {
            source: file.clone(),
        };
        log.write("FailedInitContainer: x").unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "FailedInitContainer: x"
        );
        log.write("FailedPostStartHook: y").unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "FailedInitContainer: x"
        );

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let linked = TerminationLog { source: link };
        assert!(linked.write("z").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
        let missing = TerminationLog {
            source: dir.path().join("missing"),
        };
        assert!(missing.write("z").is_err(), "never created");
    }
}

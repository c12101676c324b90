//! Files read with a bound, and files replaced atomically (written beside their name, then
//! renamed over it).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

/// The first `max + 1` bytes of `path` at most: more than `max` means the file is too large,
/// and a huge one (or `/dev/zero`) is never read further.
pub fn read_at_most(path: &std::path::Path, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replaces `path` with `bytes` atomically; see [`replace_in`].
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let dir = File::open(path.parent().unwrap_or(std::path::Path::new(".")))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no UTF-8 file"))?;
    replace_in(&dir, name, bytes)
}

/// Replaces `name` in directory `dir` with `bytes` atomically (written beside it as
/// `<name>.lifecycle-tmp`, then renamed over it), so a reader sees the old content or the new,
/// never half of it. A symlink in the temporary file's place is not followed.
pub fn replace_in(dir: &impl AsFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.lifecycle-tmp");
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW;
    let fd = openat(
        dir,
        tmp.as_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    File::from(fd).write_all(bytes)?;
    renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

//! Files read with a bound, and files replaced atomically (written beside their name, then
//! renamed over it).

// Unsafe: openat2 (RESOLVE_IN_ROOT) has no safe wrapper in nix.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;

/// The first `max + 1` bytes of `path` at most: more than `max` means the file is too large,
/// and a huge one (or `/dev/zero`) is never read further.
pub fn read_at_most(path: &std::path::Path, max: usize) -> io::Result<Vec<u8>> {
    read_bounded(File::open(path)?, max)
}

fn read_bounded(file: File, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Like [`read_at_most`], for `path` below `root` resolved as if `root` were `/`: no symlink
/// or `..` leads out of it (openat2's RESOLVE_IN_ROOT), and no magic link is followed.
pub fn read_in_root(
    root: &std::path::Path,
    path: &std::path::Path,
    max: usize,
) -> io::Result<Vec<u8>> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let dir = File::open(root)?;
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: open_how is plain integers, for which all zeroes is valid (and what the kernel
    // wants of the fields left unset).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `name` and `how`, both alive for the call, and returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    read_bounded(file, max)
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

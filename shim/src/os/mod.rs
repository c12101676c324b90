//! The OS layer: the one reaper of child processes, the runc command line, entering a
//! container's network namespace, runc's pid files, pidfds for processes that are not our
//! children, and files replaced atomically.

pub mod files;
pub mod netns;
pub mod pidfd;
pub mod pidfile;
pub mod reaper;
pub mod runc;

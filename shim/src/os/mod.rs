//! The OS layer: the one reaper of child processes, the runc command line, entering a
//! container's network namespace, runc's pid files, and files replaced atomically.

pub mod files;
pub mod netns;
pub mod pidfile;
pub mod reaper;
pub mod runc;

//! runc's command line as Podman (conmon), Docker 20.10 (its Go shim) and CRI-O write it:
//! global flags, then a command and its own flags. Only what the front end acts on is read;
//! everything is passed on to the real runtime as it was written, except `--lifecycle-runtime`,
//! which is ours.

use std::ffi::OsString;
use std::path::PathBuf;

/// runc's global flags that take a value (`--root X`, `--root=X`, or with one dash, as Go's
/// flag parsing allows).
const GLOBAL_VALUE_FLAGS: [&str; 5] = ["root", "log", "log-format", "criu", "rootless"];
/// Ours: the runtime to delegate to, e.g. from Docker's `runtimeArgs`.
const RUNTIME_FLAG: &str = "lifecycle-runtime";

#[derive(Debug, Default, PartialEq)]
pub struct Invocation {
    /// The global flags to pass on, as written.
    pub globals: Vec<OsString>,
    /// `--lifecycle-runtime`, if given.
    pub runtime: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    /// The command (`create`, `start`, ...) and its arguments, as written; none for
    /// `--version` or `--help` alone.
    pub command: Option<String>,
    pub args: Vec<OsString>,
}

impl Invocation {
    pub fn parse(args: &[OsString]) -> Invocation {
        let mut parsed = Invocation::default();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let text = arg.to_string_lossy();
            let Some(flag) = text.strip_prefix("--").or_else(|| text.strip_prefix('-')) else {
                parsed.command = Some(text.into_owned());
                parsed.args = rest.cloned().collect();
                break;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            let takes_value = name == RUNTIME_FLAG || GLOBAL_VALUE_FLAGS.contains(&name);
            let value = match (takes_value, inline) {
                (true, None) => rest
                    .next()
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                (_, inline) => inline.unwrap_or_default(),
            };
            match name {
                RUNTIME_FLAG => {
                    parsed.runtime = Some(value.into());
                    continue;
                }
                "root" => parsed.root = Some(value.clone().into()),
                "log" => parsed.log = Some(value.clone().into()),
                "log-format" => parsed.log_format = Some(value.clone()),
                _ => {}
            }
            parsed.globals.push(arg.clone());
            if takes_value && !text.contains('=') {
                parsed.globals.push(value.into());
            }
        }
        parsed
    }
}

/// A command's own arguments: its flags (with the values of those in `value_flags`) and its
/// positional arguments.
#[derive(Debug, Default, PartialEq)]
pub struct CommandArgs {
    flags: Vec<(String, Option<String>)>,
    pub positional: Vec<String>,
}

impl CommandArgs {
    pub fn parse(args: &[OsString], value_flags: &[&str]) -> CommandArgs {
        let mut parsed = CommandArgs::default();
        let mut rest = args.iter().map(|a| a.to_string_lossy().into_owned());
        while let Some(arg) = rest.next() {
            if arg == "--" {
                parsed.positional.extend(rest.by_ref());
                break;
            }
            let Some(flag) = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .filter(|f| !f.is_empty())
            else {
                parsed.positional.push(arg);
                continue;
            };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None if value_flags.contains(&flag) => (flag.to_owned(), rest.next()),
                None => (flag.to_owned(), None),
            };
            parsed.flags.push((name, value));
        }
        parsed
    }

    /// The value of the first of `names` given.
    pub fn value(&self, names: &[&str]) -> Option<&str> {
        self.flags
            .iter()
            .find(|(name, _)| names.contains(&name.as_str()))
            .and_then(|(_, value)| value.as_deref())
    }

    pub fn has(&self, names: &[&str]) -> bool {
        self.flags
            .iter()
            .any(|(name, _)| names.contains(&name.as_str()))
    }
}

/// `create`'s flags that take a value (runc 1.1).
pub const CREATE_VALUE_FLAGS: [&str; 5] =
    ["bundle", "b", "pid-file", "console-socket", "preserve-fds"];

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn global_flags_in_both_spellings_are_read_and_passed_on() {
        let globals = [
            "--root",
            "/r",
            "--log=/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "--new-flag=x",
        ];
        let parsed = Invocation::parse(&os(&[&globals[..], &["kill", "id", "15"]].concat()));
        assert_eq!(parsed.root, Some("/r".into()));
        assert_eq!(parsed.log, Some("/l.json".into()));
        assert_eq!(parsed.log_format.as_deref(), Some("json"));
        assert_eq!(parsed.globals, os(&globals));
        assert_eq!(parsed.command.as_deref(), Some("kill"));
        assert_eq!(parsed.args, os(&["id", "15"]));
    }

    #[test]
    fn the_lifecycle_runtime_flag_is_ours_and_not_passed_on() {
        let parsed = Invocation::parse(&os(&[
            "--lifecycle-runtime=/usr/bin/crun",
            "-root",
            "/r",
            "state",
            "x",
        ]));
        assert_eq!(parsed.runtime, Some("/usr/bin/crun".into()));
        assert_eq!(parsed.globals, os(&["-root", "/r"]));
        assert_eq!(parsed.root, Some("/r".into()));
        let parsed = Invocation::parse(&os(&["--version"]));
        assert_eq!(parsed.command, None);
        assert_eq!(parsed.globals, os(&["--version"]));
    }

    #[test]
    fn create_flags_are_found_in_any_order() {
        let args = CommandArgs::parse(
            &os(&[
                "--bundle",
                "/b",
                "--pid-file=/p",
                "--console-socket",
                "/s",
                "--no-pivot",
                "the-id",
            ]),
            &CREATE_VALUE_FLAGS,
        );
        assert_eq!(args.value(&["bundle", "b"]), Some("/b"));
        assert_eq!(args.value(&["pid-file"]), Some("/p"));
        assert!(args.has(&["no-pivot"]));
        assert_eq!(args.positional, ["the-id"]);
        let kill = CommandArgs::parse(&os(&["--all", "id", "KILL"]), &[]);
        assert!(kill.has(&["all", "a"]));
        assert_eq!(kill.positional, ["id", "KILL"]);
    }
}

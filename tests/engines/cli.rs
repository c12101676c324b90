//! `lifecycle-runc`'s command line, called as the engines call it (the calls of issue 13's
//! table), against a recording runc: what is passed on, in both flag spellings; what a
//! supervised container's calls become; a bad spec refused with nothing left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::recorder::Recorder;
use crate::support::{self, wait_for_line, wait_until, TestBundle, SHIM};

/// `lifecycle-runc` (a link to the binary under test) over a recording runc, with a private
/// supervisor state directory.
struct Cli {
    dir: tempfile::TempDir,
    recorder: Recorder,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::Builder::new()
            .prefix("lcs-cli-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::symlink(SHIM, dir.path().join("lifecycle-runc")).unwrap();
        let recorder = Recorder::new(&dir.path().join("recorder"));
        Cli { dir, recorder }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A call with stdin from /dev/null and output to files, as conmon makes it (the
    /// container keeps its stdio, so nothing may wait for their end).
    fn call(&self, args: &[&str]) -> Output {
        let out = self.dir.path().join("out");
        let err = self.dir.path().join("err");
        let status = Command::new(self.dir.path().join("lifecycle-runc"))
            .env("LIFECYCLE_RUNC_RUNTIME", self.recorder.binary())
            .env("LIFECYCLE_RUNC_STATE", self.state())
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        Output {
            status,
            stdout: fs::read(out).unwrap(),
            stderr: fs::read(err).unwrap(),
        }
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.call(args);
        assert!(
            out.status.success(),
            "lifecycle-runc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The calls that reached runc, each as its arguments.
    fn recorded(&self) -> Vec<Vec<String>> {
        self.recorder.calls().into_iter().map(|c| c.args).collect()
    }

    /// Supervisors of containers in this test's state directory.
    fn supervisors(&self) -> Vec<String> {
        let state = self.state().to_string_lossy().into_owned();
        crate::host::processes_mentioning(&state)
            .into_iter()
            .map(|p| format!("{p:?}"))
            .collect()
    }

    /// What is in the supervisors' state directory.
    fn state_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.state())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Nothing is left: no runc container in `root`, no supervisor, no state directory.
    #[track_caller]
    fn assert_clean(&self, root: &Path) {
        let list = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&list.stdout).trim(),
            "",
            "runc containers left"
        );
        assert_eq!(self.supervisors(), Vec::<String>::new(), "supervisors left");
        assert_eq!(
            self.state_entries(),
            Vec::<PathBuf>::new(),
            "supervisor state left"
        );
    }
}

/// `create` as conmon and Docker's shim write it, for `bundle` with its pid file beside it.
fn create_args(bundle: &TestBundle) -> Vec<String> {
    let pid_file = bundle.dir.path().join("init.pid");
    let (b, p) = (bundle.path(), pid_file);
    let args = [
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        p.to_str().unwrap(),
    ];
    strings(&[&args[..], &[&bundle.id]].concat())
}

/// The global flags Docker's shim puts before every call: `--log` and `--log-format json`.
fn docker_globals(root: &str, log: &Path) -> Vec<String> {
    let log = log.to_str().unwrap();
    strings(&["--root", root, "--log", log, "--log-format", "json"])
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn state_of(cli: &Cli, root: &str, id: &str) -> Value {
    serde_json::from_str(&cli.ok(&["--root", root, "state", id])).unwrap()
}

#[test]
fn without_a_spec_every_call_reaches_runc_as_written() {
    if !support::prerequisites() {
        return;
    }
    let cli = Cli::new();
    let bundle = TestBundle::new("trap 'exit 0' TERM; echo up > /markers/up; sleep 1000 & wait");
    let root = bundle.runc_root();
    let root = root.to_str().unwrap();
    let root_eq = format!("--root={root}");
    let pid_file = bundle.dir.path().join("init.pid");
    let id = bundle.id.as_str();
    let create = create_args(&bundle);
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let calls: Vec<Vec<&str>> = vec![
        [&["--root", root][..], &create].concat(),
        vec![&root_eq, "start", id],
    ];
    for call in &calls {
        cli.ok(call);
    }
    wait_for_line(&bundle.marker("up"), None);
    let state = state_of(&cli, root, id);
    assert_eq!(state["status"], "running");
    let pid = fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        state["pid"].to_string(),
        pid.trim(),
        "the pid file holds the init's pid"
    );
    // An unknown global flag is passed on, and runc's answer is the caller's.
    let unknown = cli.call(&["--future-flag=x", "--root", root, "state", id]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("future-flag"),
        "runc's own error: {}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    cli.ok(&["--root", root, "kill", id, "15"]);
    wait_until("the container exits on SIGTERM", || {
        state_of(&cli, root, id)["status"] == "stopped"
    });
    cli.ok(&["--root", root, "delete", id]);
    cli.ok(&["--root", root, "delete", "--force", "no-such-container"]);
    let expected: Vec<Vec<String>> = [
        calls[0].clone(),
        calls[1].clone(),
        vec!["--root", root, "state", id],
        vec!["--future-flag=x", "--root", root, "state", id],
        vec!["--root", root, "kill", id, "15"],
    ]
    .iter()
    .map(|c| strings(c))
    .collect();
    let recorded = cli.recorded();
    assert_eq!(recorded[..5], expected[..], "{recorded:#?}");
    // The polling `state` calls, then the deletes, as written.
    assert_eq!(
        recorded[recorded.len() - 2..],
        [
            strings(&["--root", root, "delete", id]),
            strings(&["--root", root, "delete", "--force", "no-such-container"])
        ]
    );
    cli.assert_clean(&bundle.runc_root());
}

#[test]
fn a_supervised_container_runs_its_hooks_through_the_calls_of_an_engine() {
    if !support::prerequisites() {
        return;
    }
    let cli = Cli::new();
    let bundle = TestBundle::new(
        "trap 'echo term >> /markers/order; exit 0' TERM; echo main >> /markers/order; sleep 1000 & wait",
    )
    .with_spec(json!({
        "initContainers": [{"name": "setup", "command": ["sh", "-c", "echo init >> /markers/order"]}],
        "postStart": {"exec": {"command": ["sh", "-c", "echo postStart > /markers/post"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo preStop >> /markers/order"]}},
        "terminationGracePeriodSeconds": 20
    }));
    let root = bundle.runc_root();
    let root = root.to_str().unwrap();
    let b = bundle.path();
    let pid_file = bundle.dir.path().join("init.pid");
    let log = bundle.dir.path().join("log.json");
    let id = bundle.id.as_str();
    let globals = docker_globals(root, &log);
    let globals: Vec<&str> = globals.iter().map(String::as_str).collect();
    fn with<'a>(globals: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        [globals, args].concat()
    }
    let create = create_args(&bundle);
    cli.ok(&with(
        &globals,
        &create.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(
        cli.supervisors().len(),
        1,
        "one supervisor, started by create"
    );
    assert_eq!(state_of(&cli, root, id)["status"], "created");
    cli.ok(&with(&globals, &["start", id]));
    wait_for_line(&bundle.marker("post"), Some("postStart"));
    assert_eq!(bundle.lines("order")[..2], ["init", "main"]);
    let state = state_of(&cli, root, id);
    assert_eq!(state["status"], "running");
    assert_eq!(
        state["pid"].to_string(),
        fs::read_to_string(&pid_file).unwrap().trim(),
        "the pid file holds the container's init, the gate that became the entrypoint"
    );
    // The stop: `kill` returns, then PreStop runs before the container's TERM trap.
    cli.ok(&with(&globals, &["kill", id, "15"]));
    wait_for_line(&bundle.marker("order"), Some("term"));
    assert_eq!(bundle.lines("order"), ["init", "main", "preStop", "term"]);
    wait_until("the container has stopped", || {
        state_of(&cli, root, id)["status"] == "stopped"
    });
    cli.ok(&with(&globals, &["delete", id]));
    cli.assert_clean(&bundle.runc_root());

    let recorded = cli.recorded();
    let create = &recorded[0];
    assert_eq!(create[..6], strings(&globals), "global flags passed on");
    assert_eq!(create[6..8], strings(&["create", "--bundle"]));
    assert_ne!(
        create[8],
        b.to_str().unwrap(),
        "a derived bundle, with the gate"
    );
    assert_eq!(
        create[9..],
        strings(&["--pid-file", pid_file.to_str().unwrap(), id])
    );
    let supervisor_calls: Vec<&Vec<String>> = recorded
        .iter()
        .filter(|c| c.iter().any(|a| a == "start" || a == "kill" || a == "exec"))
        .collect();
    assert!(
        supervisor_calls
            .iter()
            .any(|c| c[..] == strings(&["--root", root, "start", id])),
        "the supervisor starts the container: {supervisor_calls:#?}"
    );
    assert!(
        !recorded.iter().any(|c| c.contains(&"kill".to_owned())),
        "the stop signal went through the supervisor, not `runc kill`: {recorded:#?}"
    );
    assert!(
        recorded
            .last()
            .unwrap()
            .ends_with(&strings(&["delete", id])),
        "{recorded:#?}"
    );
}

#[test]
fn a_bad_spec_fails_create_naming_the_field_and_leaves_nothing() {
    if !support::prerequisites() {
        return;
    }
    let cli = Cli::new();
    let bundle = TestBundle::new("sleep 1000")
        .with_spec(json!({"preStop": {"httpGet": {"path": "/", "port": 0}}}));
    let root = bundle.runc_root();
    let root = root.to_str().unwrap();
    let log = bundle.dir.path().join("log.json");
    let globals = docker_globals(root, &log);
    let globals: Vec<&str> = globals.iter().map(String::as_str).collect();
    let create = create_args(&bundle);
    let out = cli.call(
        &[
            &globals[..],
            &create.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("preStop.httpGet.port: must be 1..65535"),
        "{stderr}"
    );
    let logged: Value = serde_json::from_str(fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(logged["level"], "error");
    let message = logged["msg"].as_str().unwrap();
    assert!(message.contains("preStop.httpGet.port"), "{message}");
    assert!(logged["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        cli.recorded().is_empty(),
        "runc never ran: {:?}",
        cli.recorded()
    );
    cli.assert_clean(&bundle.runc_root());
}

#[test]
fn a_second_create_with_the_id_fails_and_leaves_the_first_alone() {
    if !support::prerequisites() {
        return;
    }
    let cli = Cli::new();
    let bundle = TestBundle::new(
        "trap 'exit 0' TERM; echo main >> /markers/order; sleep 1000 & wait",
    )
    .with_spec(
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo preStop >> /markers/order"]}}}),
    );
    let root = bundle.runc_root();
    let root = root.to_str().unwrap();
    let create = create_args(&bundle);
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let with_root = [&["--root", root][..], &create].concat();
    cli.ok(&with_root);
    let again = cli.call(&with_root);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already has a lifecycle supervisor"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        cli.supervisors().len(),
        1,
        "the first one's supervisor is untouched"
    );
    cli.ok(&["--root", root, "start", &bundle.id]);
    wait_for_line(&bundle.marker("order"), Some("main"));
    cli.ok(&["--root", root, "kill", &bundle.id, "TERM"]);
    wait_until("the container has stopped", || {
        state_of(&cli, root, &bundle.id)["status"] == "stopped"
    });
    assert_eq!(bundle.lines("order"), ["main", "preStop"]);
    cli.ok(&["--root", root, "delete", &bundle.id]);
    cli.assert_clean(&bundle.runc_root());
}

#[test]
fn a_failed_runc_create_leaves_no_supervisor() {
    if !support::prerequisites() {
        return;
    }
    let cli = Cli::new();
    let mut bundle =
        TestBundle::new("true").with_spec(json!({"postStart": {"exec": {"command": ["true"]}}}));
    bundle.config["process"]["args"] = json!(["/no/such/program"]);
    bundle.save();
    let root = bundle.runc_root();
    let create = create_args(&bundle);
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let out = cli.call(&[&["--root", root.to_str().unwrap()][..], &create].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/no/such/program"),
        "runc's own error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli.ok(&[
        "--root",
        root.to_str().unwrap(),
        "delete",
        "--force",
        &bundle.id,
    ]);
    cli.assert_clean(&bundle.runc_root());
}

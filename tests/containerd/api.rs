//! The task API beyond hooks: exec, ps, metrics, pause/resume, terminals, log URIs, parity with
//! containerd's runc shim, a killed shim, and a containerd restart.

use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::lifecycle::args_ref;
use crate::support::wait_for_line;
use crate::{Env, LIFECYCLE, RUNC_RUNTIME};

const IDLE: &str = "echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

#[test]
fn exec_ps_metrics_pause_and_resume_work() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"terminationGracePeriodSeconds": 5});
    env.run_detached("api", &spec, IDLE);

    let out = env.containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "api",
        "sh",
        "-c",
        "echo from exec; exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");

    let ps = env.ctr_ok(&["task", "ps", "api"]);
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(pids.len() >= 2, "ctr task ps: {ps}");

    let metrics = env.ctr_ok(&["task", "metrics", "api"]);
    assert!(
        metrics.contains("memory.usage_in_bytes"),
        "ctr task metrics: {metrics}"
    );

    env.ctr_ok(&["task", "pause", "api"]);
    assert_eq!(env.containerd.task_status("api").as_deref(), Some("PAUSED"));
    env.ctr_ok(&["task", "resume", "api"]);
    assert_eq!(
        env.containerd.task_status("api").as_deref(),
        Some("RUNNING")
    );

    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "api"]);
    env.wait_for_status("api", "STOPPED");
    env.remove("api");
    env.assert_clean(&["api"]);
}

#[test]
fn ctr_run_t_gets_a_terminal() {
    let Some(env) = Env::new() else { return };
    let args = env.run_args(
        LIFECYCLE,
        "tty",
        Some(&json!({})),
        &["--rm", "-t"],
        "tty; exit 4",
    );
    let ctr = format!(
        "ctr -a {} -n {} {}",
        env.containerd.address().display(),
        env.containerd.namespace(),
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // ctr -t needs a terminal of its own: script gives it one.
    let out = Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/dev/pts/"),
        "no terminal in the container: {stdout}"
    );
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    env.assert_clean(&["tty"]);
}

#[test]
fn file_and_binary_log_uris_receive_the_output_and_hook_lines() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"postStart": {"exec": {"command": ["sh", "-c", "echo hook line"]}}});
    // The entrypoint outlives PostStart: it waits for the hook's line in its own log.
    let script = |log: &str| {
        format!("echo out-line; echo err-line >&2; while ! grep -q hook /markers/{log} 2>/dev/null; do sleep 0.05; done")
    };

    let file = env.marker("file.log");
    let uri = format!("file://{}", file.display());
    let args = env.run_args(
        LIFECYCLE,
        "filelog",
        Some(&spec),
        &["--rm", "--log-uri", &uri],
        &script("file.log"),
    );
    let out = env.ctr(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for line in ["out-line", "err-line", "[postStart] hook line"] {
        assert!(text.contains(line), "{line:?} not in the file log: {text}");
    }

    // A logging binary by containerd's protocol: stdout on fd 3, stderr on fd 4, ready when
    // fd 5 closes.
    let logger = env.marker("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2/who\"\nexec 5>&-\n\
         cat <&3 > \"$2/stdout.log\" &\ncat <&4 > \"$2/stderr.log\" &\nwait\n",
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&logger, executable).unwrap();
    let uri = format!(
        "binary://{}?dir={}",
        logger.display(),
        env.markers().display()
    );
    let args = env.run_args(
        LIFECYCLE,
        "binlog",
        Some(&spec),
        &["--rm", "--log-uri", &uri],
        &script("stderr.log"),
    );
    let out = env.ctr(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_line(&env.marker("stderr.log"), Some("[postStart] hook line"));
    assert_eq!(env.lines("stdout.log"), ["out-line"]);
    assert!(env.lines("stderr.log").contains(&"err-line".to_owned()));
    assert_eq!(
        env.lines("who"),
        [format!("{}/binlog", env.containerd.namespace())]
    );
    env.assert_clean(&["filelog", "binlog"]);
}

/// What a container without a spec shows under a runtime: exit status, stdout, stderr, an
/// exec's output and status, and the status after SIGTERM.
fn observe(
    env: &Env,
    runtime: &str,
    id: &str,
) -> (Option<i32>, String, String, String, Option<i32>, String) {
    let out = env.ctr(&env.run_args(
        runtime,
        id,
        None,
        &["--rm"],
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ));
    let (code, stdout, stderr) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let up = format!("{id}-up");
    // PID 1 ignores signals it has no handler for, so the trap makes SIGTERM's arrival visible.
    let script = format!(
        "trap 'exit 143' TERM; echo up > /markers/{up}; while :; do sleep 1000 & wait $!; done"
    );
    env.ctr_ok(&args_ref(&env.run_args(
        runtime,
        id,
        None,
        &["-d"],
        &script,
    )));
    wait_for_line(&env.marker(&up), Some("up"));
    env.wait_for_status(id, "RUNNING");
    let exec = env.containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        id,
        "sh",
        "-c",
        "echo in-exec; exit 6",
    ]);
    env.ctr_ok(&["task", "kill", id]);
    env.wait_for_status(id, "STOPPED");
    // ctr warns "task ID exit with non-zero exit code N" with a timestamp; keep the code.
    let removed = env.remove(id);
    let removed = removed
        .split("exit code ")
        .nth(1)
        .map(|rest| {
            rest.trim_end_matches(|c: char| !c.is_ascii_digit())
                .to_owned()
        })
        .unwrap_or_default();
    (
        code,
        stdout,
        stderr,
        String::from_utf8_lossy(&exec.stdout).into_owned(),
        exec.status.code(),
        removed,
    )
}

#[test]
fn containers_without_a_spec_behave_as_under_the_runc_shim() {
    let Some(env) = Env::new() else { return };
    let ours = observe(&env, LIFECYCLE, "ours");
    let theirs = observe(&env, RUNC_RUNTIME, "theirs");
    assert_eq!(ours.0, Some(3));
    assert_eq!(ours.1, "to-stdout\n");
    assert_eq!(ours.3, "in-exec\n");
    assert_eq!(ours.4, Some(6));
    assert_eq!(ours.5, "143", "SIGTERM passes straight through");
    assert_eq!(ours, theirs);
    env.assert_clean(&["ours", "theirs"]);
}

/// The `delete` action also removes the sidecars' containers, which containerd knows nothing of.
#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"preStop": {"exec": {"command": ["true"]}},
        "initContainers": [{"name": "idler", "command": ["sleep", "1000"], "restartPolicy": "Always"}]});
    env.run_detached("orphan", &spec, IDLE);
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    // containerd notices the lost shim, runs `containerd-shim-lifecycle-v2 delete` and drops
    // the task.
    crate::support::wait_until("containerd has dropped the task", || {
        env.containerd.task_status("orphan").is_none()
    });
    let _ = env.containerd.ctr(&["task", "rm", "-f", "orphan"]);
    env.ctr_ok(&["containers", "rm", "orphan"]);
    env.assert_clean(&["orphan"]);
}

#[test]
fn a_task_survives_a_containerd_restart_and_still_runs_prestop() {
    let Some(mut env) = Env::new() else { return };
    let spec =
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}}});
    let script = "trap 'echo term >> /markers/order; exit 0' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";
    env.run_detached("durable", &spec, script);
    env.containerd.restart();
    assert_eq!(
        env.containerd.task_status("durable").as_deref(),
        Some("RUNNING")
    );
    env.ctr_ok(&["task", "kill", "durable"]);
    env.wait_for_status("durable", "STOPPED");
    assert_eq!(env.lines("order"), ["prestop", "term"]);
    env.remove("durable");
    env.assert_clean(&["durable"]);
}

/// Events reach containerd in the order it requires: create, start, exec-added, exec-started,
/// the exec's exit, the task's exit, delete. An exec still running when the task is killed
/// (here by `kill --all`) ends first.
#[test]
fn events_are_published_in_order() {
    let Some(env) = Env::new() else { return };
    let mut events = env.containerd.spawn_ctr(&["events"]);
    let spec = json!({"terminationGracePeriodSeconds": 5});
    env.run_detached("ev", &spec, IDLE);
    let exec = env.containerd.spawn_ctr(&[
        "task",
        "exec",
        "--exec-id",
        "long",
        "ev",
        "sh",
        "-c",
        "echo exec-up > /markers/exec; while :; do sleep 1000 & wait $!; done",
    ]);
    wait_for_line(&env.marker("exec"), Some("exec-up"));
    env.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", "ev"]);
    env.wait_for_status("ev", "STOPPED");
    exec.wait();
    env.remove("ev");
    crate::support::wait_until("the delete event arrives", || {
        events.stdout().contains("/tasks/delete")
    });
    let _ = events.child.kill();
    let topics: Vec<String> = events
        .stdout()
        .lines()
        .filter(|line| line.contains("\"ev\""))
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with("/tasks/"))
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let log = events.stdout();
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/tasks/exit"))
        .map(|l| {
            if l.contains("\"long\"") {
                "exec"
            } else {
                "task"
            }
        })
        .collect();
    assert_eq!(exits, ["exec", "task"], "the exec's exit must come first");
    env.assert_clean(&["ev"]);
}

/// Calls containerd does not expose through ctr 1.6, made on the shim's own socket with
/// containerd's ttrpc client: Update, Connect, and an unsupported call.
#[test]
fn update_connect_and_unsupported_calls_on_the_shim_socket() {
    use containerd_shim_protos::api::{CheckpointTaskRequest, ConnectRequest, UpdateTaskRequest};
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::shim_sync::TaskClient;
    use containerd_shim_protos::ttrpc;

    let Some(env) = Env::new() else { return };
    env.run_detached("upd", &json!({}), IDLE);
    let socket = format!("unix://{}", env.containerd.shim_socket("upd").display());
    let tasks = TaskClient::new(ttrpc::Client::connect(&socket).unwrap());
    let ctx = || ttrpc::context::with_timeout(30_000_000_000);

    let resources = Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: br#"{"memory": {"limit": 67108864}}"#.to_vec(),
        ..Default::default()
    };
    let update = UpdateTaskRequest {
        id: "upd".into(),
        resources: Some(resources).into(),
        ..Default::default()
    };
    tasks.update(ctx(), &update).unwrap();
    let limit = format!(
        "/sys/fs/cgroup/memory/{}/upd/memory.limit_in_bytes",
        env.containerd.namespace()
    );
    assert_eq!(std::fs::read_to_string(&limit).unwrap().trim(), "67108864");

    let connect = ConnectRequest {
        id: "upd".into(),
        ..Default::default()
    };
    let connected = tasks.connect(ctx(), &connect).unwrap();
    assert!(
        connected.task_pid > 0 && connected.shim_pid > 0,
        "{connected:?}"
    );

    let checkpoint = CheckpointTaskRequest {
        id: "upd".into(),
        ..Default::default()
    };
    match tasks.checkpoint(ctx(), &checkpoint) {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED)
        }
        other => panic!("checkpoint answered {other:?}"),
    }

    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "upd"]);
    env.wait_for_status("upd", "STOPPED");
    env.remove("upd");
    env.assert_clean(&["upd"]);
}

/// From an image, the rootfs comes as snapshotter mounts that the shim mounts in Create and
/// unmounts in Delete; after a killed shim, the `delete` action unmounts it.
#[test]
fn an_image_rootfs_is_mounted_and_always_unmounted() {
    let Some(env) = Env::new() else { return };
    let image = "docker.io/library/lcs-busybox:test";
    crate::image::import(
        &env.containerd,
        image,
        std::path::Path::new(&env.rootfs),
        &["sh"],
    );
    let state = env.containerd.dir().to_owned();
    let spec = format!(
        "lifecycle-shim/spec={}",
        json!({"postStart": {"exec": {"command": ["true"]}}})
    );
    let out = env.containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        LIFECYCLE,
        "--annotation",
        &spec,
        image,
        "fromimage",
        "sh",
        "-c",
        "echo from-image; exit 9",
    ]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-image\n");
    assert_eq!(crate::image::mounts_under(&state), Vec::<String>::new());

    env.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        LIFECYCLE,
        image,
        "imagekill",
        "sh",
        "-c",
        "while :; do sleep 1000 & wait $!; done",
    ]);
    env.wait_for_status("imagekill", "RUNNING");
    assert_eq!(
        crate::image::mounts_under(&state).len(),
        1,
        "the rootfs is mounted"
    );
    let shims = env.containerd.shim_processes();
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    // containerd runs `containerd-shim-lifecycle-v2 delete` for the lost shim, which unmounts.
    crate::support::wait_until("the delete action has unmounted the rootfs", || {
        crate::image::mounts_under(&state).is_empty()
    });
    crate::support::wait_until("containerd has dropped the task", || {
        env.containerd.task_status("imagekill").is_none()
    });
    env.ctr_ok(&["containers", "rm", "imagekill"]);
    env.assert_clean(&["fromimage", "imagekill"]);
}

/// A foreground `ctr run` attaches stdin: the container reads what ctr writes, to the end.
/// (containerd's Go runc shim holds the stdin fifo open until CloseIO, which ctr 1.6 never
/// sends, so there the container would wait for more input forever; this shim passes the fifo
/// through, and the container sees the end when ctr closes its side.)
#[test]
fn stdin_reaches_the_container_to_its_end() {
    use std::io::Write;
    let Some(env) = Env::new() else { return };
    let args = env.run_args(
        LIFECYCLE,
        "stdin",
        None,
        &["--rm"],
        "cat; echo end-of-input",
    );
    let mut ctr = std::process::Command::new("ctr")
        .arg("-a")
        .arg(env.containerd.address())
        .args(["-n", env.containerd.namespace()])
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ctr.stdin.take().unwrap();
    stdin.write_all(b"first line\nsecond line\n").unwrap();
    drop(stdin);
    let out = ctr.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "first line\nsecond line\nend-of-input\n"
    );
    assert_eq!(out.status.code(), Some(0));
    env.assert_clean(&["stdin"]);
}

/// A regression guard for the shim's footprint, robust to a noisy machine: no timing, and
/// ceilings well above what is measured (1 thread; about 0.55 MiB of anonymous memory for an
/// idle release-built shim, 1.3 MiB for the debug build the tests run; `scripts/bench` has the
/// figures). `Anonymous` rather than
/// `Private_Dirty`: a freshly built binary's page cache is still dirty and would count.
#[test]
fn an_idle_shim_stays_small() {
    let Some(env) = Env::new() else { return };
    let spec = json!({"postStart": {"exec": {"command": ["true"]}}, "preStop": {"exec": {"command": ["true"]}}});
    env.run_detached("idle", &spec, IDLE);
    let shims = env.containerd.shim_processes();
    let pid: i32 = shims[0].split(':').next().unwrap().parse().unwrap();
    let field = |file: &str, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
            })
            .unwrap()
    };
    // Once PostStart is done and tokio's blocking pool has let its thread go.
    crate::support::wait_until("the shim is idle on at most 2 threads", || {
        field("status", "Threads:") <= 2
    });
    let anonymous_kib = field("smaps_rollup", "Anonymous:");
    assert!(
        anonymous_kib < 5 * 1024 / 2,
        "an idle shim holds {anonymous_kib} KiB of anonymous memory"
    );
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "idle"]);
    env.wait_for_status("idle", "STOPPED");
    env.remove("idle");
    env.assert_clean(&["idle"]);
}

//! A drop-in for `io.containerd.runc.v2`: the same scenarios through containerd's Go runc shim
//! and this shim (no hook spec), each with `BinaryName` pointing to a wrapper that records the
//! runtime calls and the config each `create` gets; they must be the same but for ids and the
//! files each shim picks. Also: runc's options reach every runtime call of a hooked container,
//! and a container without a PID namespace of its own leaves nothing when its init exits.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::containerd::{LIFECYCLE_RUNTIME, PATH_ENV, RUNC_RUNTIME};
use crate::recorder::{normalize, normalize_config, Call, Recorder};
use crate::support::{processes_with_args, wait_for_line, wait_until};
use crate::Env;

/// A container that says it is up and exits 3 on SIGTERM.
const TRAPS_TERM: &str =
    "trap 'exit 3' TERM; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";

/// The runtime flags of `ctr run` that give each shim the same runc options.
struct Runtime {
    name: &'static str,
    flags: Vec<String>,
    recorder: Recorder,
}

impl Runtime {
    /// containerd's Go shim, with the options `ctr` sends as runc's `Options`.
    fn go(env: &Env, root: &Path, extra: &[&str]) -> Runtime {
        let recorder = Recorder::new(&env.dir().join("go-recorder"));
        let mut flags: Vec<String> = vec![
            "--runtime".into(),
            RUNC_RUNTIME.into(),
            "--runc-binary".into(),
            recorder.binary().display().to_string(),
            "--runc-root".into(),
            root.display().to_string(),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        Runtime {
            name: RUNC_RUNTIME,
            flags,
            recorder,
        }
    }

    /// This shim, with the same options in a TOML file (`ctr --runtime-config-path`, which
    /// containerd sends as `runtimeoptions.v1.Options`).
    fn ours(env: &Env, root: &Path, extra_toml: &str) -> Runtime {
        let recorder = Recorder::new(&env.dir().join("our-recorder"));
        let config = env.dir().join("lifecycle-options.toml");
        std::fs::write(
            &config,
            format!(
                "BinaryName = {:?}\nRoot = {:?}\n{extra_toml}",
                recorder.binary().display().to_string(),
                root.display().to_string()
            ),
        )
        .unwrap();
        Runtime {
            name: LIFECYCLE_RUNTIME,
            flags: vec![
                "--runtime".into(),
                LIFECYCLE_RUNTIME.into(),
                "--runtime-config-path".into(),
                config.display().to_string(),
            ],
            recorder,
        }
    }
}

/// `ctr run` arguments for `sh -c script` under `runtime`, with `/markers` mounted.
fn run_args(env: &Env, runtime: &Runtime, id: &str, flags: &[&str], script: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--env".into(), PATH_ENV.into()];
    args.extend(runtime.flags.iter().cloned());
    args.push("--mount".into());
    args.push(format!(
        "type=bind,src={},dst=/markers,options=rbind:rw",
        env.markers().display()
    ));
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend(["--rootfs".into(), env.rootfs.clone(), id.into()]);
    args.extend(["sh".into(), "-c".into(), script.into()]);
    args
}

fn ctr_ok(env: &Env, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.ctr_ok(&args)
}

/// A task's life as ctr drives it: run, exec, pause, resume, ps, SIGTERM, delete.
fn lifecycle_scenario(env: &Env, runtime: &Runtime, id: &str) -> Vec<Call> {
    let _ = std::fs::remove_file(env.marker("up"));
    ctr_ok(env, &run_args(env, runtime, id, &["-d"], TRAPS_TERM));
    wait_for_line(&env.marker("up"), Some("up"));
    let said = env.ctr_ok(&["task", "exec", "--exec-id", "probe", id, "echo", "hi"]);
    assert_eq!(said.trim(), "hi", "{}", runtime.name);
    env.ctr_ok(&["task", "pause", id]);
    env.ctr_ok(&["task", "resume", id]);
    env.ctr_ok(&["task", "ps", id]);
    env.ctr_ok(&["task", "kill", id]);
    env.wait_for_status(id, "STOPPED");
    let stderr = env.remove(id);
    assert!(stderr.contains("exit code 3"), "{}: {stderr}", runtime.name);
    runtime.recorder.calls()
}

/// The calls with ids and the shims' own files normalized, and the normalized configs.
fn comparable(calls: &[Call], ids: &[&str]) -> (Vec<Vec<String>>, Vec<serde_json::Value>) {
    (
        calls.iter().map(|c| normalize(&c.args, ids)).collect(),
        calls
            .iter()
            .filter_map(|c| c.config.as_ref().map(|v| normalize_config(v, ids)))
            .collect(),
    )
}

#[track_caller]
fn assert_same(go: &[Call], ours: &[Call], ids: &[&str]) {
    let (go_args, go_configs) = comparable(go, ids);
    let (our_args, our_configs) = comparable(ours, ids);
    assert!(!go_args.is_empty(), "the Go shim made no recorded call");
    assert_eq!(our_args, go_args, "runtime calls differ from the Go shim's");
    assert_eq!(our_configs, go_configs, "create's config differs");
}

#[test]
fn runtime_calls_and_configs_match_the_go_shim_with_binary_name_and_root() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    let go = Runtime::go(&env, &root, &[]);
    let ours = Runtime::ours(&env, &root, "");
    let go_calls = lifecycle_scenario(&env, &go, "parity");
    let our_calls = lifecycle_scenario(&env, &ours, "parity");
    assert_same(&go_calls, &our_calls, &["parity"]);
    // Root is honoured: runc's state for the namespace lived under it.
    let namespace_root = root.join(env.containerd.namespace());
    assert!(our_calls
        .iter()
        .all(|c| c.args[..2] == ["--root".to_owned(), namespace_root.display().to_string()]));
    env.assert_clean(&["parity"]);
}

/// There is no systemd here: runc fails the create that asks for its cgroup manager, under
/// either shim. What is compared is the calls up to that failure and the cleanup after it.
#[test]
fn systemd_cgroup_reaches_runc_as_with_the_go_shim() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    let cgroup = ["--cgroup", "system.slice:lcs:systemd"];
    let go = Runtime::go(&env, &root, &["--runc-systemd-cgroup"]);
    let ours = Runtime::ours(&env, &root, "SystemdCgroup = true\n");
    let mut results = Vec::new();
    for runtime in [&go, &ours] {
        let args = run_args(
            &env,
            runtime,
            "sysd",
            &[&["-d"][..], &cgroup].concat(),
            "true",
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.containerd.ctr(&args);
        assert!(
            !out.status.success(),
            "{}: create succeeded without systemd",
            runtime.name
        );
        let _ = env.containerd.ctr(&["containers", "rm", "sysd"]);
        results.push(runtime.recorder.calls());
    }
    let create = &results[1][0].args;
    assert!(
        create.contains(&"--systemd-cgroup".to_owned()),
        "{create:?}"
    );
    assert_same(&results[0], &results[1], &["sysd"]);
    env.assert_clean(&["sysd"]);
}

/// With a spec, the hooks' own runtime calls (init container, sidecar, PostStart, PreStop,
/// postStop) go through the same BinaryName and Root; the default runc root is never used.
#[test]
fn hook_runtime_calls_use_binary_name_and_root() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    let ours = Runtime::ours(&env, &root, "NoNewKeyring = true\n");
    let spec = json!({
        "initContainers": [
            {"name": "init", "command": ["sh", "-c", "echo init >> /markers/order"]},
            {"name": "side", "restartPolicy": "Always", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done"]}
        ],
        "postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /markers/order"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /markers/order"]}},
        "postStop": {"exec": {"command": ["sh", "-c", "echo poststop >> /markers/order"]}}
    });
    let annotation = format!("lifecycle-shim/spec={spec}");
    let script = "trap 'exit 0' TERM; while [ $(wc -l < /markers/order) -lt 2 ]; do sleep 0.05; done; echo up > /markers/up; while :; do sleep 1000 & wait $!; done";
    ctr_ok(
        &env,
        &run_args(
            &env,
            &ours,
            "hooked",
            &["-d", "--annotation", &annotation],
            script,
        ),
    );
    wait_for_line(&env.marker("up"), Some("up"));
    env.stop("hooked");
    assert_eq!(
        env.lines("order"),
        ["init", "poststart", "prestop", "poststop"]
    );
    let calls = ours.recorder.calls();
    let namespace_root = root.join(env.containerd.namespace()).display().to_string();
    for call in &calls {
        assert_eq!(
            call.args[..2],
            ["--root".to_owned(), namespace_root.clone()],
            "{call:?}"
        );
    }
    let execs = calls
        .iter()
        .filter(|c| c.args.contains(&"exec".to_owned()))
        .count();
    assert_eq!(
        execs, 3,
        "init container, PostStart and PreStop through the wrapper: {calls:?}"
    );
    // `runc run`: the sidecar (detached) and the postStop run.
    let runs = calls
        .iter()
        .filter(|c| c.args.contains(&"run".to_owned()))
        .count();
    assert_eq!(
        runs, 2,
        "the sidecar and postStop through the wrapper: {calls:?}"
    );
    let create = calls
        .iter()
        .find(|c| c.args.contains(&"create".to_owned()))
        .unwrap();
    assert!(
        create.args.contains(&"--no-new-keyring".to_owned()),
        "{create:?}"
    );
    let default_root = Path::new("/run/containerd/lifecycle").join(env.containerd.namespace());
    assert!(
        !default_root.exists(),
        "the default runc root was used: {default_root:?}"
    );
    env.assert_clean(&["hooked"]);
}

/// The holder of a PID namespace the next containers join: a Go-shim container.
fn pid_namespace_holder(env: &Env) -> PathBuf {
    env.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNC_RUNTIME,
        "--env",
        PATH_ENV,
        "--rootfs",
        &env.rootfs,
        "holder",
        "sleep",
        "100000",
    ]);
    env.wait_for_status("holder", "RUNNING");
    let out = env.ctr_ok(&["task", "ls"]);
    let pid = out
        .lines()
        .find(|l| l.starts_with("holder "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the holder's pid");
    PathBuf::from(format!("/proc/{pid}/ns/pid"))
}

/// `ctr run --with-ns pid:...`: a background process outlives the init. Once the task has
/// stopped it is gone, the output written before the exit is all there, and runc was asked to
/// kill everything (`kill --all <id> 9`) before the task was deleted, exactly as the Go shim
/// does; with a private PID namespace nothing of that happens, under either shim.
#[test]
fn a_shared_pid_namespace_leaves_no_process_and_loses_no_output() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    let holder = pid_namespace_holder(&env);
    let with_ns = format!("pid:{}", holder.display());
    let sleeper = ["sleep", "4242"];
    let script = "echo before; sleep 4242 & echo started; sleep 1; echo last; exit 3";
    let runtimes = [
        Runtime::go(&env, &root, &[]),
        Runtime::ours(&env, &root, ""),
    ];
    let mut recorded = Vec::new();
    for runtime in &runtimes {
        for (id, flags) in [("shared", vec!["--with-ns", &with_ns]), ("private", vec![])] {
            runtime.recorder.clear();
            let out = env.ctr(&run_args(&env, runtime, id, &flags, script));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{} {id}: {stdout}",
                runtime.name
            );
            assert_eq!(
                stdout.lines().collect::<Vec<_>>(),
                ["before", "started", "last"],
                "{} {id}",
                runtime.name
            );
            if runtime.name == RUNC_RUNTIME {
                // The Go shim sends the SIGKILL and does not wait for it to take effect.
                wait_until("the Go shim's SIGKILL took effect", || {
                    processes_with_args(&sleeper).is_empty()
                });
            }
            assert!(
                processes_with_args(&sleeper).is_empty(),
                "{} {id}: sleep 4242 outlived the task",
                runtime.name
            );
            env.ctr_ok(&["containers", "rm", id]);
            let calls = runtime.recorder.calls();
            let kill_all = calls.iter().any(|c| c.args.contains(&"--all".to_owned()));
            assert_eq!(kill_all, id == "shared", "{} {id}: {calls:?}", runtime.name);
            recorded.push(calls);
        }
    }
    assert_same(&recorded[0], &recorded[2], &["shared"]);
    assert_same(&recorded[1], &recorded[3], &["private"]);
    assert!(!env.containerd.log().contains("Failed to pipe"));
    env.ctr_ok(&["task", "kill", "-s", "SIGKILL", "holder"]);
    env.wait_for_status("holder", "STOPPED");
    env.remove("holder");
    env.assert_clean(&["shared", "private", "holder"]);
}

/// `IoUid`/`IoGid`, as containerd 1.6's client sends them for `ctr run --uidmap` (a
/// `containerd.linux.runc.CreateOptions` to a runtime not named runc): the container's stdio
/// belongs to that group, as the Go shim's pipes do (runc itself then gives the owner to the
/// process's user). Without them it stays root's.
#[test]
fn io_uid_and_gid_own_the_container_stdio_as_with_the_go_shim() {
    let Some(env) = Env::new() else { return };
    let script = "stat -L -c %u:%g /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2";
    let owners = |runtime: &str| {
        let out = env.containerd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--env",
            PATH_ENV,
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "--rootfs",
            &env.rootfs,
            "owned",
            "sh",
            "-c",
            script,
        ]);
        assert!(
            out.status.success(),
            "{runtime}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let go = owners(RUNC_RUNTIME);
    assert_eq!(
        owners(LIFECYCLE_RUNTIME),
        go,
        "stdio owners differ from the Go shim's"
    );
    // ctr 1.6 sends IoUid/IoGid 100000 with --uidmap (later ctrs may not).
    if go.contains(":100000") {
        assert_eq!(go.lines().collect::<Vec<_>>(), ["0:100000"; 3]);
    }
    env.assert_clean(&["owned"]);
}

/// `ShimCgroup`: the shim moves into it at start.
#[test]
fn shim_cgroup_holds_the_shim() {
    let Some(env) = Env::new() else { return };
    let name = format!("lcs-shim-{}", std::process::id());
    let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .map(|p| p.join(&name))
        .collect();
    for dir in &hierarchies {
        std::fs::create_dir_all(dir).unwrap();
        // A new cpuset has no CPUs or memory nodes: it takes no process until it has some.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(dir.parent().unwrap().join(file)) {
                std::fs::write(dir.join(file), value).unwrap();
            }
        }
    }
    let root = env.dir().join("runc-root");
    let ours = Runtime::ours(&env, &root, &format!("ShimCgroup = \"/{name}\"\n"));
    ctr_ok(&env, &run_args(&env, &ours, "grouped", &["-d"], TRAPS_TERM));
    wait_for_line(&env.marker("up"), Some("up"));
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let pid = shims[0].split(':').next().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!(":/{name}\n")), "{cgroups}");
    env.stop("grouped");
    env.assert_clean(&["grouped"]);
    wait_until("the cgroups are removable", || {
        hierarchies
            .iter()
            .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
    });
}

/// An option that cannot be honoured, or an unknown key, fails Create naming it; nothing is
/// left.
#[test]
fn unknown_or_unsupported_options_fail_create_naming_them() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    for (toml, named) in [
        ("BinaryNmae = \"x\"\n", "BinaryNmae"),
        ("CriuWorkPath = \"/w\"\n", "CriuWorkPath"),
    ] {
        let ours = Runtime::ours(&env, &root, toml);
        let out = env.ctr(&run_args(&env, &ours, "refused", &["--rm"], "true"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(named), "{toml:?}: {stderr}");
        let _ = env.containerd.ctr(&["containers", "rm", "refused"]);
        assert!(ours.recorder.calls().is_empty(), "runc was called");
    }
    env.assert_clean(&["refused"]);
}

/// The shim shows as containerd invoked it: `pgrep containerd-shim` finds it.
#[test]
fn the_shim_shows_as_containerd_shim_lifecycle_v2() {
    let Some(env) = Env::new() else { return };
    let root = env.dir().join("runc-root");
    let ours = Runtime::ours(&env, &root, "");
    ctr_ok(&env, &run_args(&env, &ours, "named", &["-d"], TRAPS_TERM));
    wait_for_line(&env.marker("up"), Some("up"));
    let shims = env.containerd.shim_processes();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let pid = shims[0].split(':').next().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "containerd-shim");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let arg0 = cmdline.split(|&b| b == 0).next().unwrap();
    assert!(
        arg0.ends_with(b"/containerd-shim-lifecycle-v2"),
        "{}",
        String::from_utf8_lossy(arg0)
    );
    env.stop("named");
    env.assert_clean(&["named"]);
}

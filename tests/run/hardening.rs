//! Issue 7 with `run`: hooks reach no more than the container itself, and faults (a hook that
//! floods, daemonizes or ignores SIGTERM; a failing runtime) leak nothing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::support::{free_port, prerequisites, TestBundle};

/// Prints who and where the calling process is: user, capabilities, namespaces, cgroup, and
/// whether a host file is visible.
fn install_info(bundle: &TestBundle, host_probe: &std::path::Path) {
    bundle.add_script(
        "/bin/info",
        &format!(
            "#!/bin/sh
echo \"uid=$(id -u) gid=$(id -g)\"
grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status
for n in net pid mnt uts ipc; do echo \"$n=$(readlink /proc/self/ns/$n)\"; done
cat /proc/self/cgroup
if [ -e {probe} ]; then echo host-visible; else echo host-hidden; fi
",
            probe = host_probe.display()
        ),
    );
}

/// Exec handlers and init containers run as the container's user, with its capabilities, in
/// its namespaces and cgroup, and see its rootfs, not the host's.
#[test]
fn exec_hooks_run_as_the_container_user_in_its_namespaces_and_cgroup() {
    if !prerequisites() {
        return;
    }
    let probe = tempfile::NamedTempFile::new().unwrap();
    let mut bundle = TestBundle::new(
        "/bin/info > /markers/main; while [ ! -s /markers/hook ]; do sleep 0.05; done",
    )
    .with_spec(json!({
        "initContainers": [{"name": "init", "command": ["sh", "-c", "/bin/info > /markers/init"]}],
        "postStart": {"exec": {"command": ["sh", "-c", "/bin/info > /markers/hook.tmp; mv /markers/hook.tmp /markers/hook"]}}
    }));
    install_info(&bundle, probe.path());
    bundle.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    bundle.config["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "effective": ["CAP_KILL"]
    });
    bundle.save();
    std::fs::set_permissions(bundle.marker(""), std::fs::Permissions::from_mode(0o777)).unwrap();
    bundle.run().assert_code(0);
    let main = bundle.lines("main");
    assert_eq!(main[0], "uid=1000 gid=1000");
    assert!(main.contains(&"host-hidden".to_owned()), "{main:?}");
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        !main.contains(&format!("net={}", host_net.display())),
        "the container shares the host's network namespace: {main:?}"
    );
    assert_eq!(bundle.lines("hook"), main);
    assert_eq!(bundle.lines("init"), main);
    bundle.assert_clean();
}

/// A plain HTTP server on the host's loopback that answers 200, counts connections, and
/// creates `served` once it has answered.
fn host_server(served: std::path::PathBuf) -> (u16, Arc<AtomicUsize>) {
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
            drop(stream);
            std::fs::write(&served, "").unwrap();
        }
    });
    (port, count)
}

/// httpGet connects from inside the container's network namespace: a server on the host's
/// loopback is out of reach of a container with a network namespace of its own, and within
/// reach of one that shares the host's.
#[test]
fn http_get_cannot_reach_the_host_loopback_from_a_private_network_namespace() {
    if !prerequisites() {
        return;
    }
    let mut shared = TestBundle::new("until [ -e /markers/served ]; do sleep 0.05; done");
    let (port, connections) = host_server(shared.marker("served"));
    let spec = json!({"postStart": {"httpGet": {"port": port, "path": "/probe"}}});
    let private = TestBundle::new(crate::WAIT_FOR_TERM).with_spec(spec.clone());
    let done = private.run();
    // Stopped for the failed PostStart, which never counts as success: 1 from the TERM trap, or
    // 137 if the refusal was so quick that the stop came before the trap was set.
    assert!([1, 137].contains(&done.code()), "{}", done.code());
    done.assert_stderr_has("FailedPostStartHook");
    done.assert_stderr_has("Connection refused");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    private.assert_clean();

    // The same hook in a container without a network namespace of its own reaches it.
    shared.annotate("lifecycle-shim/spec", &spec.to_string());
    let namespaces = shared.config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    shared.save();
    shared.run().assert_code(0);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    shared.assert_clean();
}

/// Host processes whose root is the bundle's rootfs and whose command line is `argv`.
fn container_processes(bundle: &TestBundle, argv: &[&str]) -> Vec<String> {
    let wanted = format!("{} ", argv.join(" "));
    crate::support::processes_rooted_at(&bundle.rootfs())
        .into_iter()
        .filter(|p| {
            p.split_once(": ")
                .is_some_and(|(_, cmdline)| cmdline == wanted)
        })
        .collect()
}

/// A hook that ignores SIGTERM, daemonizes a child into a session of its own and hangs is
/// killed at its timeout with that child; the container lives on. A daemon left by a hook
/// that exited stays in the container until it stops.
#[test]
fn a_timed_out_hook_is_killed_with_the_daemon_it_started() {
    if !prerequisites() {
        return;
    }
    // The first attempt starts a daemon (sleep 1001) and hangs (sleep 1002); the retry
    // succeeds, leaving a daemon of its own (sleep 1003), so the container keeps running.
    let hook = "if [ -e /markers/tried ]; then setsid sleep 1003 & echo ok > /markers/retried; exit 0; fi; \
                touch /markers/tried; setsid sleep 1001 & trap '' TERM; sleep 1002";
    let entrypoint = format!(
        "until [ -s /markers/retried ]; do sleep 0.05; done; {}",
        crate::WAIT_FOR_TERM
    );
    let bundle = TestBundle::new(&entrypoint).with_spec(
        json!({"postStart": {"exec": {"command": ["sh", "-c", hook]},
        "timeoutSeconds": 1, "retries": 1, "backoffSeconds": 0}}),
    );
    let shim = bundle.spawn(&[]);
    crate::wait_for_line(&bundle.marker("up"), Some("up"));
    // The container's processes are seen: its entrypoint is (with, for a moment, a fork of it
    // that has not exec'd `sleep` yet).
    assert!(!container_processes(&bundle, &["sh", "-c", &entrypoint]).is_empty());
    assert_eq!(
        container_processes(&bundle, &["sleep", "1002"]),
        Vec::<String>::new()
    );
    assert_eq!(
        container_processes(&bundle, &["sleep", "1001"]),
        Vec::<String>::new()
    );
    assert_eq!(container_processes(&bundle, &["sleep", "1003"]).len(), 1);
    shim.signal(nix::sys::signal::Signal::SIGTERM);
    shim.wait().assert_code(0);
    bundle.assert_clean();
}

/// A hook that writes 100 MiB without a newline: its output is streamed in bounded pieces, so
/// the shim's memory stays small.
#[test]
fn a_hook_flooding_its_output_leaves_the_shim_small() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new(&format!(
        "until [ -e /markers/flooded ]; do sleep 0.05; done; {}",
        crate::WAIT_FOR_TERM
    ))
    .with_spec(json!({"postStart": {"exec": {"command": ["sh", "-c",
        "head -c 104857600 /dev/zero; touch /markers/flooded"]}}}));
    let shim = bundle.spawn(&[]);
    crate::wait_for_line(&bundle.marker("up"), Some("up"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", shim.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    // Generous: an idle shim peaks near 10 MiB; buffering the output would take 100 MiB.
    assert!(peak_kib < 48 * 1024, "the shim peaked at {peak_kib} KiB");
    shim.signal(nix::sys::signal::Signal::SIGTERM);
    let done = shim.wait();
    done.assert_code(0);
    assert!(
        std::fs::metadata(bundle.dir.path().join("shim.stderr"))
            .unwrap()
            .len()
            > 100 << 20,
        "the output was not passed on"
    );
    bundle.assert_clean();
}

/// A runtime wrapper that runs the real runc but fails `action` as runc does: an error in its
/// JSON log and on stderr, exit status 1.
fn failing_runtime(dir: &std::path::Path, action: &str) -> std::path::PathBuf {
    let path = dir.join(format!("runc-failing-{action}"));
    crate::support::write_executable(
        dir,
        &format!("/runc-failing-{action}"),
        &format!(
            "#!/bin/sh
log=; prev=
for a in \"$@\"; do [ \"$prev\" = --log ] && log=$a; prev=$a; done
for a in \"$@\"; do
  if [ \"$a\" = {action} ]; then
    [ -n \"$log\" ] && echo '{{\"level\":\"error\",\"msg\":\"injected {action} failure\"}}' >> \"$log\"
    echo 'injected {action} failure' >&2
    exit 1
  fi
done
exec runc \"$@\"
"
        ),
    );
    path
}

/// runc failing on create (or run), start or exec: a clear error, and nothing half-created.
#[test]
fn a_failing_runtime_is_a_clear_error_and_nothing_is_left() {
    if !prerequisites() {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let init = json!({"initContainers": [{"name": "a", "command": ["true"]}]});
    let hook = json!({"postStart": {"exec": {"command": ["true"]}}});
    // (failing action, spec, exit statuses). A failed PostStart stops the container: its TERM
    // trap exits 0 (status 1, as a hook failed), or, if the stop came before the trap was set,
    // the entrypoint as PID 1 ignores SIGTERM and is killed (137).
    let cases: [(&str, _, &[i32]); 5] = [
        ("run", json!({}), &[125]),
        ("create", init.clone(), &[125]),
        ("start", init.clone(), &[125]),
        ("exec", init.clone(), &[1]),
        ("exec", hook, &[1, 137]),
    ];
    for (action, spec, codes) in cases {
        let runtime = failing_runtime(tools.path(), action);
        let bundle = TestBundle::new(crate::WAIT_FOR_TERM).with_spec(spec);
        let done = bundle
            .spawn(&["--runtime", runtime.to_str().unwrap()])
            .wait();
        assert!(
            codes.contains(&done.code()),
            "{action}: {}\n{}",
            done.code(),
            done.stderr
        );
        done.assert_stderr_has(&format!("injected {action} failure"));
        bundle.assert_clean();
    }
}

/// 200 lifecycles, 20 at a time, each with a PostStart that succeeds, fails or times out at
/// random (the seed is printed): every exit status is the expected one, PostStart ran once,
/// PreStop once exactly when a failed PostStart stopped the container, and nothing is left.
/// (Zombies: `the_shim_leaves_no_zombies` and the containerd suite's long-lived shim.)
#[test]
fn two_hundred_lifecycles_with_random_outcomes_keep_every_status() {
    if !prerequisites() {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let workers: Vec<_> = (0..20u64)
        .map(|worker| {
            std::thread::spawn(move || {
                let mut state = seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = move || {
                    // xorshift64: reproducible from the seed.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for _ in 0..10 {
                    let outcome = next() % 3;
                    let code = (next() % 4) as i32;
                    lifecycle(outcome, code);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

/// One lifecycle: PostStart succeeds (0), fails (1) or times out (2); the entrypoint exits
/// with `code` once PostStart succeeded, and with 0 on SIGTERM.
fn lifecycle(outcome: u64, code: i32) {
    // Only the hook meant to time out has a short timeout: on a loaded machine a 1 s
    // timeout can cut short a hook meant to succeed.
    let (hook, timeout) = match outcome {
        0 => ("echo ran >> /markers/poststart; touch /markers/ok", 60),
        1 => ("echo ran >> /markers/poststart; exit 3", 60),
        _ => ("echo ran >> /markers/poststart; sleep 100", 1),
    };
    let bundle = TestBundle::new(&format!(
        "trap 'exit 0' TERM; until [ -e /markers/ok ]; do sleep 0.05; done; exit {code}"
    ))
    .with_spec(json!({
        "postStart": {"exec": {"command": ["sh", "-c", hook]}, "timeoutSeconds": timeout},
        "preStop": {"exec": {"command": ["sh", "-c", "echo ran >> /markers/prestop"]}}
    }));
    let done = bundle.run();
    let (expected, prestops) = if outcome == 0 { (code, 0) } else { (1, 1) };
    assert_eq!(done.code(), expected, "outcome {outcome}: {}", done.stderr);
    // A hook killed at its timeout may not have got as far as its first line on a loaded
    // machine; none runs twice.
    let runs = bundle.lines("poststart").len();
    match outcome {
        2 => assert!(runs <= 1, "PostStart ran {runs} times"),
        _ => assert_eq!(runs, 1, "outcome {outcome}"),
    }
    assert_eq!(bundle.lines("prestop").len(), prestops, "outcome {outcome}");
    bundle.assert_clean();
}

/// The shim, root on the host, never follows a symlink the container planted in a volume: a
/// `once` sentinel behind one is refused and nothing is written outside the volume.
#[test]
fn a_once_sentinel_behind_a_planted_symlink_is_refused() {
    if !prerequisites() {
        return;
    }
    let volume = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let mut bundle = TestBundle::new("echo main >> /markers/order");
    bundle.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": volume.path(), "options": ["rbind", "rw"]
    }));
    let plant = format!("ln -s {} /data/link", outside.path().display());
    let spec = json!({"initContainers": [
        {"name": "plant", "command": ["sh", "-c", plant]},
        {"name": "install", "command": ["sh", "-c", "echo install >> /markers/order"],
         "once": {"path": "/data/link/.installed", "key": "1"}}
    ]});
    bundle.annotate("lifecycle-shim/spec", &spec.to_string());
    let done = bundle.run();
    done.assert_code(1);
    done.assert_stderr_has("symlinks are not followed");
    assert!(bundle.lines("order").is_empty());
    let written: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(
        written.is_empty(),
        "written outside the volume: {written:?}"
    );
    bundle.assert_clean();
}

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
    std::fs::set_permissions(
        bundle.marker(""),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
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

/// A plain HTTP server on the host's loopback that answers 200 and counts connections.
fn host_server() -> (u16, Arc<AtomicUsize>) {
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
    let (port, connections) = host_server();
    let spec = json!({"postStart": {"httpGet": {"port": port, "path": "/probe"}}});
    let private = TestBundle::new(crate::WAIT_FOR_TERM).with_spec(spec.clone());
    let done = private.run();
    // Stopped for the failed PostStart, which never counts as success.
    done.assert_code(1);
    done.assert_stderr_has("FailedPostStartHook");
    done.assert_stderr_has("Connection refused");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    private.assert_clean();

    // The same hook in a container without a network namespace of its own reaches it.
    let mut shared = TestBundle::new("exit 0").with_spec(spec);
    let namespaces = shared.config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    shared.save();
    shared.run().assert_code(0);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    shared.assert_clean();
}

//! Where the spec comes from, and input `run` and `check` must refuse: each error names what is
//! wrong, exits 2 and creates nothing.

use serde_json::json;

use crate::support::{prerequisites, TestBundle, SHIM};

#[test]
fn spec_file_overrides_the_annotation() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("echo main >> /markers/order")
        .with_spec(json!({"initContainers": [{"name": "annotation", "command": ["sh", "-c", "echo annotation >> /markers/order"]}]}));
    let file = bundle.dir.path().join("spec.json");
    let spec = json!({"initContainers": [{"name": "file", "command": ["sh", "-c", "echo file >> /markers/order"]}]});
    std::fs::write(&file, spec.to_string()).unwrap();
    let done = bundle.spawn(&["--spec", file.to_str().unwrap()]).wait();
    done.assert_code(0);
    assert_eq!(bundle.lines("order"), ["file", "main"]);
    bundle.assert_clean();
}

#[test]
fn bad_input_is_refused_with_the_field_named_and_nothing_created() {
    if !prerequisites() {
        return;
    }
    let specs = [
        ("{", "EOF while parsing"),
        (
            r#"{"preStop": {"exec": {"command": "echo"}}}"#,
            "preStop.exec.command: invalid type: string",
        ),
        (
            r#"{"postStart": {"exec": {"command": ["x"]}, "onFailure": 3}}"#,
            "postStart.onFailure: unknown field `onFailure`",
        ),
        (
            r#"{"postStart": {"exec": {"command": ["x"]}, "httpGet": {"port": 80}}}"#,
            "postStart: must set exactly one of exec, httpGet, sleep, signal (found exec, httpGet)",
        ),
        (
            r#"{"preStop": {"httpGet": {"port": 0}}}"#,
            "preStop.httpGet.port: must be 1..65535",
        ),
        (
            r#"{"preStop": {"tcpSocket": {"port": 80}}}"#,
            "preStop.tcpSocket: is not supported",
        ),
        (
            r#"{"terminationGracePeriodSeconds": -1}"#,
            "terminationGracePeriodSeconds: must be 0..",
        ),
    ];
    for (spec, expected) in specs {
        let mut bundle = TestBundle::new("echo main >> /markers/order");
        bundle.annotate("lifecycle-shim/spec", spec);
        assert_refused(
            &bundle,
            &[],
            "annotation lifecycle-shim/spec: invalid lifecycle spec",
        );
        assert_refused(&bundle, &[], expected);
    }

    // A bundle that is not there, and a config.json that is not JSON.
    let bundle = TestBundle::new("true");
    let missing = bundle.dir.path().join("nowhere");
    std::fs::write(bundle.path().join("config.json"), "{ not json").unwrap();
    for (path, expected) in [
        (missing, "nowhere\": No such file or directory"),
        (bundle.path(), "config.json\": key must be a string"),
    ] {
        let out = std::process::Command::new(SHIM)
            .args(["run", "--root"])
            .arg(bundle.runc_root())
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
    bundle.assert_clean();
}

/// Both `run` and `check` refuse the bundle with exit status 2 and `expected` in their error;
/// the entrypoint never ran and nothing is left.
fn assert_refused(bundle: &TestBundle, extra: &[&std::ffi::OsStr], expected: &str) {
    for command in ["run", "check"] {
        let mut shim = std::process::Command::new(SHIM);
        shim.arg(command);
        if command == "run" {
            shim.arg("--root").arg(bundle.runc_root());
            shim.args(["--id", &bundle.id]);
        }
        let out = shim.args(extra).arg(bundle.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{command}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(bundle.lines("order").is_empty());
    bundle.assert_clean();
}

/// Issue 7: an oversized annotation or `--spec` file, a NUL in a command, numbers no field can
/// hold and a file that is not UTF-8 are refused by name before anything is created.
#[test]
fn hostile_input_is_refused_with_exit_2_and_nothing_created() {
    if !prerequisites() {
        return;
    }
    let mut bundle = TestBundle::new("echo main >> /markers/order");
    let oversized = format!(r#"{{"stopSignal": "TERM"{}}}"#, " ".repeat(64 * 1024));
    bundle.annotate("lifecycle-shim/spec", &oversized);
    assert_refused(
        &bundle,
        &[],
        "annotation lifecycle-shim/spec is larger than the 65536-byte (64 KiB) limit",
    );

    let cases = [
        (
            r#"{"postStart": {"exec": {"command": ["sh", "-c", "echo hi\u0000; touch /markers/ran"]}}}"#,
            "postStart.exec.command[2]: must not contain a NUL byte",
        ),
        (
            r#"{"preStop": {"exec": {"command": ["x"]}, "timeoutSeconds": 1e300}}"#,
            "preStop.timeoutSeconds: invalid type: floating point `1e+300`",
        ),
        (
            r#"{"terminationGracePeriodSeconds": 18446744073709551616}"#,
            "terminationGracePeriodSeconds: invalid type: floating point",
        ),
        (
            r#"{"preStop": {"sleep": {"seconds": -5}}}"#,
            "preStop.sleep.seconds: must be 0..31536000 seconds",
        ),
    ];
    for (spec, expected) in cases {
        bundle.annotate("lifecycle-shim/spec", spec);
        assert_refused(&bundle, &[], expected);
    }

    // `--spec FILE`: not UTF-8; endless (read only to the limit).
    let file = bundle.dir.path().join("spec.json");
    std::fs::write(&file, b"{\"stopSignal\": \"\xff\"}").unwrap();
    let flag = std::ffi::OsStr::new("--spec");
    assert_refused(
        &bundle,
        &[flag, file.as_os_str()],
        "is not UTF-8 text (invalid byte at offset 16)",
    );
    assert_refused(
        &bundle,
        &[flag, std::ffi::OsStr::new("/dev/zero")],
        "spec file \"/dev/zero\" is larger than the 65536-byte (64 KiB) limit",
    );
}

#[test]
fn check_prints_the_resolved_plan() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("true").with_spec(json!({
        "postStart": {"exec": {"command": ["touch", "/ready"]}},
        "initContainers": [{"name": "migrate", "command": ["/migrate"], "timeoutSeconds": 60}]
    }));
    let out = std::process::Command::new(SHIM)
        .arg("check")
        .arg(bundle.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("source: annotation lifecycle-shim/spec\nstop signal: SIGTERM\ntermination grace period: 30.0s\n"), "{stdout}");
    assert!(
        stdout.contains("  1. migrate: [\"/migrate\"], timeout 60.0s\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("postStart: exec [\"touch\", \"/ready\"], no timeout\n"),
        "{stdout}"
    );
    assert!(stdout.contains("preStop: none\n"), "{stdout}");
}

#[test]
fn check_with_lifecycle_runc_reads_the_image_spec_file() {
    if !prerequisites() {
        return;
    }
    let bundle = TestBundle::new("true");
    bundle.add_script(
        "/etc/lifecycle-shim/spec.json",
        r#"{"terminationGracePeriodSeconds": 7}"#,
    );
    let check = |extra: &[&str]| {
        std::process::Command::new(SHIM)
            .arg("check")
            .args(extra)
            .arg(bundle.path())
            .output()
            .unwrap()
    };
    let plain = String::from_utf8_lossy(&check(&[]).stdout).into_owned();
    assert!(plain.starts_with("source: no lifecycle spec"), "{plain}");
    let out = check(&["--lifecycle-runc"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("source: spec file /etc/lifecycle-shim/spec.json (on the host: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("termination grace period: 7.0s\n"),
        "{stdout}"
    );
}

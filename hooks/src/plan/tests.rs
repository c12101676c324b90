//! Parsing and validation of specs into plans.

use super::*;

fn plan(json: &str) -> Plan {
    Plan::from_json(json, &Defaults::default()).unwrap()
}

fn errors(json: &str) -> Vec<String> {
    Plan::from_json(json, &Defaults::default())
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn defaults_follow_kubernetes() {
    let p = plan("{}");
    assert_eq!(p, Plan::default());
    assert!(p.is_empty());
    assert_eq!(p.grace, Duration::from_secs(30));
    assert_eq!(p.stop_signal, Signal::SIGTERM);
}

#[test]
fn image_stop_signal_is_the_default_and_the_spec_wins() {
    let defaults = Defaults {
        stop_signal: Signal::SIGQUIT,
    };
    assert_eq!(
        Plan::from_json("{}", &defaults).unwrap().stop_signal,
        Signal::SIGQUIT
    );
    let p = Plan::from_json(r#"{"stopSignal": "INT"}"#, &defaults).unwrap();
    assert_eq!(p.stop_signal, Signal::SIGINT);
}

#[test]
fn http_get_defaults_to_the_container_loopback() {
    let p = plan(
        r#"{"preStop": {"httpGet": {"port": 8080, "path": "drain?now=1"}, "timeoutSeconds": 5}}"#,
    );
    let hook = &p.pre_stop[0][0];
    assert_eq!(hook.timeout, Some(Duration::from_secs(5)));
    let Action::HttpGet(get) = &hook.action else {
        panic!("not an httpGet")
    };
    assert_eq!(get.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(get.path, "/drain?now=1");
    assert_eq!(get.scheme, Scheme::Http);
}

#[test]
fn init_containers_join_command_and_args() {
    let p = plan(
        r#"{"initContainers": [{"name": "a", "command": ["sh"], "args": ["-c", "true"],
            "env": [{"name": "X", "value": "1"}], "workingDir": "/tmp", "timeoutSeconds": 3}]}"#,
    );
    let init = &p.init_containers[0];
    assert_eq!(init.argv, ["sh", "-c", "true"]);
    assert_eq!(init.env, [("X".to_owned(), "1".to_owned())]);
    assert_eq!(init.timeout, Some(Duration::from_secs(3)));
    assert!(!init.sidecar);
}

#[test]
fn restart_policy_always_makes_a_sidecar_without_timeout_or_once() {
    let p = plan(
        r#"{"initContainers": [{"name": "proxy", "command": ["/proxy"], "restartPolicy": "Always"}]}"#,
    );
    assert!(p.init_containers[0].sidecar);
    assert_eq!(p.init_containers[0].timeout, None);
    assert_eq!(
        errors(
            r#"{"initContainers": [{"name": "a", "command": ["x"], "restartPolicy": "OnFailure"},
                {"name": "b", "command": ["x"], "restartPolicy": "Always", "timeoutSeconds": 5,
                 "once": {"path": "/v/done"}}]}"#
        ),
        [
            "initContainers[0].restartPolicy: \"OnFailure\": only \"Always\" (a sidecar) is allowed",
            "initContainers[1].timeoutSeconds: a sidecar runs until the container stops; it has no timeout",
            "initContainers[1].once: a sidecar is restarted whenever it exits; it cannot run once",
        ]
    );
}

#[test]
fn each_bad_value_is_named_by_its_path() {
    let cases = [
        (
            r#"{"preStop": {"httpGet": {"port": 0}}}"#,
            "preStop.httpGet.port: must be 1..65535",
        ),
        (
            r#"{"preStop": {"httpGet": {"port": 70000}}}"#,
            "preStop.httpGet.port: must be 1..65535",
        ),
        (
            r#"{"preStop": {"httpGet": {"port": "http"}}}"#,
            "preStop.httpGet.port: named port",
        ),
        (
            r#"{"preStop": {"httpGet": {}}}"#,
            "preStop.httpGet.port: is required",
        ),
        (
            r#"{"postStart": {"httpGet": {"port": 1, "host": "example.com"}}}"#,
            "postStart.httpGet.host:",
        ),
        (
            r#"{"postStart": {"httpGet": {"port": 1, "scheme": "FTP"}}}"#,
            "postStart.httpGet.scheme:",
        ),
        (
            r#"{"postStart": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a b", "value": ""}]}}}"#,
            "postStart.httpGet.httpHeaders[0].name:",
        ),
        (
            r#"{"postStart": {"exec": {"command": ["a"]}, "sleep": {"seconds": 1}}}"#,
            "postStart: must set exactly one of exec, httpGet, sleep, signal (found exec, sleep)",
        ),
        (
            r#"{"postStart": {}}"#,
            "postStart: must set exactly one of exec, httpGet, sleep, signal (found none)",
        ),
        (
            r#"{"preStop": {"tcpSocket": {"port": 80}}}"#,
            "preStop.tcpSocket: is not supported",
        ),
        (
            r#"{"preStop": {"exec": {"command": []}}}"#,
            "preStop.exec.command: must name a program",
        ),
        (
            r#"{"preStop": {"exec": {"command": ["a", "b\u0000"]}}}"#,
            "preStop.exec.command[1]: must not contain a NUL",
        ),
        (
            r#"{"preStop": {"exec": {"command": ["a"]}, "timeoutSeconds": 0}}"#,
            "preStop.timeoutSeconds: must be 1..",
        ),
        (
            r#"{"preStop": {"sleep": {"seconds": -1}}}"#,
            "preStop.sleep.seconds: must be 0..",
        ),
        (
            r#"{"preStop": {"sleep": {"seconds": 1}, "timeoutSeconds": 3}}"#,
            "preStop.timeoutSeconds: cannot be combined",
        ),
        (
            r#"{"terminationGracePeriodSeconds": -5}"#,
            "terminationGracePeriodSeconds: must be 0..",
        ),
        (
            r#"{"terminationGracePeriodSeconds": 9223372036854775807}"#,
            "terminationGracePeriodSeconds: must be 0..",
        ),
        (r#"{"stopSignal": "SIGNOPE"}"#, "stopSignal: unknown signal"),
        (
            r#"{"initContainers": [{"name": "Bad_Name", "command": ["a"]}]}"#,
            "initContainers[0].name:",
        ),
        (
            r#"{"initContainers": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}"#,
            "initContainers[1].name: \"a\" is used twice",
        ),
        (
            r#"{"initContainers": [{"name": "a"}]}"#,
            "initContainers[0].command: must name a program",
        ),
        (
            r#"{"initContainers": [{"name": "a", "args": ["migrate"]}]}"#,
            "initContainers[0].command: must name a program",
        ),
        (
            r#"{"initContainers": [{"name": "a", "command": ["x"], "workingDir": "tmp"}]}"#,
            "initContainers[0].workingDir: must be an absolute path",
        ),
        (
            r#"{"initContainers": [{"name": "a", "command": ["x"], "env": [{"name": "A=B"}]}]}"#,
            "initContainers[0].env[0].name:",
        ),
    ];
    for (json, expected) in cases {
        let errs = errors(json);
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{json}: expected {expected:?}, got {errs:?}"
        );
    }
}

/// Issue 7: NUL bytes, numbers no field can hold, negative durations. Each is refused
/// with an error that starts with the field's path (never a panic, never a wrap-around).
#[test]
fn hostile_values_are_refused_naming_their_field() {
    let exec = |extra: &str| format!(r#"{{"preStop": {{"exec": {{"command": ["a"]}}{extra}}}}}"#);
    let init = |extra: &str| {
        format!(r#"{{"initContainers": [{{"name": "a", "command": ["x"]{extra}}}]}}"#)
    };
    let http = |extra: &str| format!(r#"{{"postStart": {{"httpGet": {{"port": 80{extra}}}}}}}"#);
    let nul = r#""a\u0000b""#;
    let mut cases: Vec<(String, &str)> = vec![
        (
            init(&format!(r#", "args": ["-c", {nul}]"#)),
            "initContainers[0].command[2]: must not contain a NUL",
        ),
        (
            init(&format!(r#", "env": [{{"name": "A", "value": {nul}}}]"#)),
            "initContainers[0].env[0].value: must not contain a NUL",
        ),
        (
            init(&format!(r#", "env": [{{"name": {nul}}}]"#)),
            "initContainers[0].env[0].name:",
        ),
        (
            init(r#", "workingDir": "/a\u0000""#),
            "initContainers[0].workingDir:",
        ),
        (
            init(r#", "once": {"path": "/d/\u0000x"}"#),
            "initContainers[0].once.path:",
        ),
        (
            format!(r#"{{"initContainers": [{{"name": {nul}, "command": ["x"]}}]}}"#),
            "initContainers[0].name:",
        ),
        (
            http(&format!(r#", "path": {nul}"#)),
            "postStart.httpGet.path:",
        ),
        (
            http(&format!(r#", "host": {nul}"#)),
            "postStart.httpGet.host:",
        ),
        (
            http(&format!(
                r#", "httpHeaders": [{{"name": "X", "value": {nul}}}]"#
            )),
            "postStart.httpGet.httpHeaders[0].value:",
        ),
        (
            http(&format!(
                r#", "httpHeaders": [{{"name": {nul}, "value": "v"}}]"#
            )),
            "postStart.httpGet.httpHeaders[0].name:",
        ),
        (
            format!(r#"{{"stopSignal": {nul}}}"#),
            "stopSignal: unknown signal",
        ),
        (
            format!(r#"{{"healthCheck": {{"exec": {{"command": [{nul}]}}}}}}"#),
            "healthCheck.exec.command[0]: must not contain a NUL",
        ),
        (
            format!(r#"{{"postStop": [[{{"exec": {{"command": ["a", {nul}]}}}}]]}}"#),
            "postStop[0][0].exec.command[1]: must not contain a NUL",
        ),
    ];
    // 1e300 and 2^64 only fit a float; 2^63 only an unsigned integer; -2^63 fits but is
    // negative; -1 is the plain negative duration.
    let numbers = [
        "1e300",
        "18446744073709551616",
        "9223372036854775808",
        "-9223372036854775808",
        "-1",
        "1.5",
    ];
    for n in numbers {
        cases.extend([
            (exec(&format!(r#", "timeoutSeconds": {n}"#)), "preStop.timeoutSeconds:"),
            (exec(&format!(r#", "retries": {n}"#)), "preStop.retries:"),
            (exec(&format!(r#", "backoffSeconds": {n}"#)), "preStop.backoffSeconds:"),
            (format!(r#"{{"preStop": {{"sleep": {{"seconds": {n}}}}}}}"#), "preStop.sleep.seconds:"),
            (format!(r#"{{"terminationGracePeriodSeconds": {n}}}"#), "terminationGracePeriodSeconds:"),
            (format!(r#"{{"shutdownDelaySeconds": {n}}}"#), "shutdownDelaySeconds:"),
            (init(&format!(r#", "timeoutSeconds": {n}"#)), "initContainers[0].timeoutSeconds:"),
            (format!(r#"{{"healthCheck": {{"exec": {{"command": ["c"]}}, "periodSeconds": {n}}}}}"#), "healthCheck.periodSeconds:"),
            (format!(r#"{{"healthCheck": {{"exec": {{"command": ["c"]}}, "onCritical": "kill", "criticalThreshold": {n}}}}}"#), "healthCheck.criticalThreshold:"),
            (format!(r#"{{"postStart": {{"httpGet": {{"port": {n}}}}}}}"#), "postStart.httpGet.port: must be 1..65535"),
        ]);
    }
    for (json, expected) in &cases {
        let errs = errors(json);
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "{json}: expected {expected:?}, got {errs:?}"
        );
    }
}

#[test]
fn stages_retries_and_the_shutdown_delay() {
    let p = plan(
        r#"{"postStart": [[{"exec": {"command": ["a"]}, "retries": 2, "backoffSeconds": 3},
                           {"exec": {"command": ["b"]}}],
                          [{"sleep": {"seconds": 1}}]],
            "shutdownDelaySeconds": 4}"#,
    );
    assert_eq!(p.post_start.len(), 2);
    assert_eq!(p.post_start[0].len(), 2);
    assert_eq!(
        (p.post_start[0][0].retries, p.post_start[0][0].backoff),
        (2, Duration::from_secs(3))
    );
    assert_eq!(
        (p.post_start[0][1].retries, p.post_start[0][1].backoff),
        (0, DEFAULT_BACKOFF)
    );
    assert_eq!(p.shutdown_delay, Duration::from_secs(4));
    let errs = errors(
        r#"{"preStop": [[], [{"exec": {"command": ["a"]}, "retries": 11}]], "shutdownDelaySeconds": -1}"#,
    );
    assert!(
        errs.contains(&"preStop[0]: a stage needs at least one handler".to_owned()),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"preStop[1][0].retries: must be 0..10".to_owned()),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("shutdownDelaySeconds: must be 0..")),
        "{errs:?}"
    );
}

#[test]
fn post_stop_takes_exec_and_sleep_but_not_http() {
    let p =
        plan(r#"{"postStop": [[{"exec": {"command": ["cleanup"]}}, {"sleep": {"seconds": 1}}]]}"#);
    assert_eq!(p.post_stop[0].len(), 2);
    let errs = errors(r#"{"postStop": {"httpGet": {"port": 80}}}"#);
    assert!(
        errs[0].starts_with("postStop.httpGet: is not supported"),
        "{errs:?}"
    );
}

#[test]
fn once_needs_an_absolute_file_path() {
    let p = plan(
        r#"{"initContainers": [{"name": "install", "command": ["i"], "once": {"path": "/data/.done", "key": "v1"}}]}"#,
    );
    let once = p.init_containers[0].once.clone().unwrap();
    assert_eq!(
        (once.path.as_str(), once.key.as_str()),
        ("/data/.done", "v1")
    );
    let errs = errors(
        r#"{"initContainers": [{"name": "install", "command": ["i"], "once": {"path": "data/"}}]}"#,
    );
    assert!(
        errs[0].starts_with("initContainers[0].once.path: must be an absolute file path"),
        "{errs:?}"
    );
}

#[test]
fn health_checks_take_exec_or_http_and_a_kill_policy() {
    let p = plan(
        r#"{"healthCheck": {"exec": {"command": ["check"]}, "periodSeconds": 5, "onCritical": "kill", "criticalThreshold": 3}}"#,
    );
    let check = p.health_check.unwrap();
    assert_eq!(
        (check.period, check.kill_after),
        (Duration::from_secs(5), Some(3))
    );
    let errs = errors(
        r#"{"healthCheck": {"exec": {"command": ["c"]}, "onCritical": "restart", "periodSeconds": 0}}"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("healthCheck.onCritical: must be \"kill\"")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("healthCheck.periodSeconds: must be 1..")),
        "{errs:?}"
    );
    let errs = errors(r#"{"healthCheck": {"periodSeconds": 5}}"#);
    assert!(
        errs[0].starts_with("healthCheck: must set exactly one of exec, httpGet"),
        "{errs:?}"
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let errs = errors(
        r#"{"preStop": {"httpGet": {"port": 0, "scheme": "FTP"}},
            "stopSignal": "NOPE", "terminationGracePeriodSeconds": -1}"#,
    );
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn signals_parse_by_name_or_number() {
    assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
    assert_eq!(parse_signal("quit"), Some(Signal::SIGQUIT));
    assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
    assert_eq!(parse_signal("SIGFOO"), None);
    assert_eq!(parse_signal("99"), None);
}

#[test]
fn reconfigure_takes_paths_a_handler_a_debounce_and_a_failure_policy() {
    let p = plan(
        r#"{"reconfigure": {"paths": ["/etc/nginx/conf.d", "/etc/app/app.conf"],
                            "signal": {"name": "HUP"}, "debounceSeconds": 0, "onFailure": "stop"}}"#,
    );
    let r = p.reconfigure.unwrap();
    assert_eq!(r.paths, ["/etc/nginx/conf.d", "/etc/app/app.conf"]);
    assert_eq!(r.hook.action, Action::Signal(Signal::SIGHUP));
    assert_eq!((r.debounce, r.stop_on_failure), (Duration::ZERO, true));
    let r = plan(r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["reload"]}, "timeoutSeconds": 5}}"#)
        .reconfigure
        .unwrap();
    assert_eq!((r.debounce, r.stop_on_failure), (DEFAULT_DEBOUNCE, false));
    assert_eq!(r.hook.timeout, Some(Duration::from_secs(5)));
}

#[test]
fn bad_reconfigure_entries_name_their_field() {
    let cases = [
        (
            r#"{"reconfigure": {"exec": {"command": ["x"]}}}"#,
            "reconfigure.paths: must name at least one path",
        ),
        (
            r#"{"reconfigure": {"paths": ["etc/x"], "exec": {"command": ["x"]}}}"#,
            "reconfigure.paths[0]: \"etc/x\" must be an absolute path",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c", "/c/../../etc"], "exec": {"command": ["x"]}}}"#,
            "reconfigure.paths[1]: \"/c/../../etc\" must be an absolute path without '..'",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"]}}"#,
            "reconfigure: must set exactly one of exec, httpGet, signal (found none)",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["x"]}, "debounceSeconds": -1}}"#,
            "reconfigure.debounceSeconds: must be 0..",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["x"]}, "onFailure": "restart"}}"#,
            "reconfigure.onFailure: must be \"stop\" or \"report\", not \"restart\"",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"], "signal": {"name": "SIGNOPE"}}}"#,
            "reconfigure.signal.name: unknown signal \"SIGNOPE\"",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"], "signal": {"name": "HUP"}, "timeoutSeconds": 3}}"#,
            "reconfigure.timeoutSeconds: cannot be combined with signal",
        ),
        (
            r#"{"reconfigure": {"paths": ["/c"], "sleep": {"seconds": 3}}}"#,
            "reconfigure.sleep: unknown field `sleep`",
        ),
    ];
    for (json, expected) in cases {
        let errors = errors(json);
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{json}: {errors:?}"
        );
    }
}

#[test]
fn a_signal_handler_is_refused_where_no_process_can_take_it() {
    assert_eq!(
        errors(r#"{"postStart": {"signal": {"name": "HUP"}}}"#),
        ["postStart.signal: is not supported: the entrypoint races PostStart and may not handle signals yet; use it in preStop or reconfigure"]
    );
    assert_eq!(
        errors(r#"{"postStop": [[{"exec": {"command": ["x"]}}], [{"signal": {"name": "HUP"}}]]}"#),
        ["postStop.signal: is not supported: the container has exited; use it in preStop or reconfigure"]
    );
    let p =
        plan(r#"{"preStop": [[{"signal": {"name": "SIGUSR1"}}], [{"sleep": {"seconds": 5}}]]}"#);
    assert_eq!(p.pre_stop[0][0].action, Action::Signal(Signal::SIGUSR1));
}

//! Hostile input for the spec parser and validator (issue 7): whatever the bytes, `Plan::from_json`
//! returns a plan or errors and never panics; a plan it returns keeps the invariants the engine
//! relies on; and a plausible spec with one field made hostile is refused naming that field.
//!
//! The committed corpus (`tests/spec-corpus/`) holds seeds with their expected verdict and is
//! also what the byte mutator starts from; proptest's failures are kept in
//! `tests/spec-corpus/proptest-regressions.txt` and replayed first. CI runs a fixed number of
//! cases (a few seconds); `PROPTEST_CASES=100000` runs more.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use lifecycle_hooks::plan::{Action, Hook, MAX_RETRIES, MAX_SECONDS};
use lifecycle_hooks::{Defaults, Plan, Stages};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};

const CORPUS: &str = "tests/spec-corpus";

/// `cases` unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/spec-corpus/proptest-regressions.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// A corpus file and its bytes.
type Seed = (PathBuf, Vec<u8>);

/// The seeds of one verdict (`valid` or `invalid`), read once.
fn seeds(verdict: &str) -> &'static [Seed] {
    static SEEDS: OnceLock<[Vec<Seed>; 2]> = OnceLock::new();
    let read = |verdict: &str| {
        let dir = Path::new(CORPUS).join(verdict);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect()
    };
    let [valid, invalid] = SEEDS.get_or_init(|| [read("valid"), read("invalid")]);
    match verdict {
        "valid" => valid,
        _ => invalid,
    }
}

/// Bytes arrive as a `--spec` file or an annotation; the shim refuses non-UTF-8 before parsing,
/// so the parser sees the lossy text.
fn parse(bytes: &[u8]) -> Result<Plan, lifecycle_hooks::InvalidSpec> {
    Plan::from_json(&String::from_utf8_lossy(bytes), &Defaults::default())
}

/// Checks a result: a plan keeps its invariants, an error names at least one problem and each
/// problem says something.
fn check(result: &Result<Plan, lifecycle_hooks::InvalidSpec>) {
    match result {
        Ok(plan) => assert_invariants(plan),
        Err(invalid) => {
            assert!(!invalid.errors.is_empty());
            for error in &invalid.errors {
                assert!(!error.message.is_empty(), "{error:?}");
            }
        }
    }
}

fn assert_seconds(what: &str, d: Duration, min: u64) {
    assert!(
        d >= Duration::from_secs(min) && d <= Duration::from_secs(MAX_SECONDS as u64),
        "{what}: {d:?}"
    );
}

fn assert_argv(argv: &[String]) {
    assert!(!argv.is_empty() && !argv[0].is_empty(), "{argv:?}");
    assert!(argv.iter().all(|a| !a.contains('\0')), "{argv:?}");
}

fn assert_hook(hook: &Hook) {
    if let Some(t) = hook.timeout {
        assert_seconds("timeout", t, 1);
    }
    assert_seconds("backoff", hook.backoff, 0);
    assert!(i64::from(hook.retries) <= MAX_RETRIES);
    match &hook.action {
        Action::Exec { command } => assert_argv(command),
        Action::Sleep(d) => assert_seconds("sleep", *d, 0),
        Action::HttpGet(get) => {
            assert!(get.port >= 1);
            assert!(get.path.starts_with('/'), "{get:?}");
            assert!(
                get.path.parse::<http::uri::PathAndQuery>().is_ok(),
                "{get:?}"
            );
            for (name, value) in &get.headers {
                assert!(http::HeaderName::from_bytes(name.as_bytes()).is_ok());
                assert!(http::HeaderValue::from_str(value).is_ok());
            }
        }
    }
}

fn assert_stages(stages: &Stages) {
    for stage in stages {
        assert!(!stage.is_empty());
        stage.iter().for_each(assert_hook);
    }
}

fn assert_invariants(plan: &Plan) {
    assert_seconds("grace", plan.grace, 0);
    assert_seconds("shutdown delay", plan.shutdown_delay, 0);
    assert_stages(&plan.post_start);
    assert_stages(&plan.pre_stop);
    assert_stages(&plan.post_stop);
    assert!(plan
        .post_stop
        .iter()
        .flatten()
        .all(|h| !matches!(h.action, Action::HttpGet(_))));
    if let Some(check) = &plan.health_check {
        assert_hook(&check.hook);
        assert!(!matches!(check.hook.action, Action::Sleep(_)));
        assert_seconds("period", check.period, 1);
        assert!(check.kill_after.is_none_or(|n| (1..=1000).contains(&n)));
    }
    for (i, init) in plan.init_containers.iter().enumerate() {
        assert!(
            plan.init_containers[..i]
                .iter()
                .all(|o| o.name != init.name),
            "{:?} twice",
            init.name
        );
        assert!(!init.name.is_empty() && init.name.len() <= 63);
        assert_argv(&init.argv);
        if let Some(t) = init.timeout {
            assert_seconds("init timeout", t, 1);
        }
        for (name, value) in &init.env {
            assert!(!name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0'));
        }
        assert!(init
            .working_dir
            .as_ref()
            .is_none_or(|d| d.starts_with('/') && !d.contains('\0')));
    }
    // Deadlines are computed by adding these to the clock: a year each cannot overflow it.
    let every = [plan.grace, plan.shutdown_delay]
        .into_iter()
        .chain(plan.pre_stop.iter().flatten().flat_map(|h| h.timeout));
    let now = tokio::time::Instant::now();
    for d in every {
        assert!(now.checked_add(d).is_some());
    }
    // What `check` prints.
    assert!(!plan.to_string().is_empty());
}

#[test]
fn corpus_seeds_get_their_verdict() {
    let valid = seeds("valid");
    let invalid = seeds("invalid");
    assert!(!valid.is_empty() && !invalid.is_empty());
    for (path, bytes) in valid {
        let result = parse(bytes);
        assert!(result.is_ok(), "{path:?}: {result:?}");
        check(&result);
    }
    for (path, bytes) in invalid {
        let result = parse(bytes);
        assert!(result.is_err(), "{path:?} was accepted: {result:?}");
        check(&result);
    }
}

/// One edit of a byte string, as a coverage-blind fuzzer makes them.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Copies a range of the input elsewhere (repeats structure: nesting, lists).
    Duplicate(Index, usize, Index),
}

/// Bytes that change JSON's structure or hit the validator's edges.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"-",
    b"1e300",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"0",
    b"65536",
    b"\xff",
    b"\xc3",
    b"\"exec\":{\"command\":[\"a\"]}",
    b"\"timeoutSeconds\":",
    b"[[",
    b"]]",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
                prop::collection::vec(any::<u8>(), 1..8),
            ]
        )
            .prop_map(|(i, bytes)| Edit::Insert(i, bytes)),
        (any::<Index>(), 1..32usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1..64usize, any::<Index>())
            .prop_map(|(i, n, to)| Edit::Duplicate(i, n, to)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match edit {
            Edit::Flip(i, b) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, new) => {
                let i = at(i, bytes.len());
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(i, bytes.len());
                bytes.drain(i..(i + n).min(bytes.len()));
            }
            Edit::Duplicate(i, n, to) => {
                let i = at(i, bytes.len());
                let copy = bytes[i..(i + n).min(bytes.len())].to_vec();
                let to = at(to, bytes.len());
                bytes.splice(to..to, copy);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&parse(&bytes));
    }

    #[test]
    fn mutated_seeds_never_panic(
        seed in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let all: Vec<_> = seeds("valid").iter().chain(seeds("invalid")).collect();
        let (_, bytes) = seed.get(&all);
        check(&parse(&apply(bytes.clone(), &edits)));
    }
}

/// Field names the spec knows, so that generated JSON often reaches the validator.
const KEYS: &[&str] = &[
    "postStart",
    "preStop",
    "postStop",
    "healthCheck",
    "stopSignal",
    "terminationGracePeriodSeconds",
    "shutdownDelaySeconds",
    "initContainers",
    "exec",
    "httpGet",
    "sleep",
    "tcpSocket",
    "timeoutSeconds",
    "retries",
    "backoffSeconds",
    "command",
    "args",
    "port",
    "host",
    "path",
    "scheme",
    "httpHeaders",
    "name",
    "value",
    "seconds",
    "env",
    "workingDir",
    "once",
    "key",
    "periodSeconds",
    "onCritical",
    "criticalThreshold",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            10,
            11,
            65535,
            65536,
            MAX_SECONDS,
            MAX_SECONDS + 1
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop::sample::select(KEYS).prop_map(Value::from),
        prop::sample::select(vec![
            "SIGTERM",
            "kill",
            "HTTPS",
            "127.0.0.1",
            "/x",
            "a\0b",
            ""
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
                        1 => any::<String>(),
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        check(&parse(value.to_string().as_bytes()));
        // The same keys at the top level, where the spec's own fields are.
        if let Value::Object(_) = &value {
            let wrapped = json!({"postStart": value, "initContainers": [value]});
            check(&parse(wrapped.to_string().as_bytes()));
        }
    }
}

// Plausible specs: valid by construction, then one field made hostile.

/// Text without NUL; may be empty, may be any Unicode.
fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

fn argv() -> impl Strategy<Value = Value> {
    (
        "[a-z/][a-z0-9/._-]{0,12}".prop_map(Value::from),
        prop::collection::vec(text().prop_map(Value::from), 0..4),
    )
        .prop_map(|(first, mut rest)| {
            rest.insert(0, first);
            Value::Array(rest)
        })
}

fn seconds(min: i64) -> impl Strategy<Value = i64> {
    prop_oneof![min..=MAX_SECONDS, Just(min), Just(MAX_SECONDS)]
}

fn http_get() -> impl Strategy<Value = Value> {
    (
        1..=65535u16,
        prop::option::of("[a-zA-Z0-9/._~%-]{0,16}(\\?[a-z0-9=&]{0,8})?"),
        prop::option::of(prop::sample::select(vec![
            "127.0.0.1",
            "localhost",
            "",
            "::1",
            "[::1]",
            "10.1.2.3",
        ])),
        prop::option::of(prop::sample::select(vec!["HTTP", "HTTPS", "http", "https"])),
        prop::collection::vec(("[A-Za-z0-9-]{1,12}", "[ -~]{0,16}"), 0..3),
    )
        .prop_map(|(port, path, host, scheme, headers)| {
            let mut get = Map::new();
            get.insert("port".into(), port.into());
            let fields = [("path", path), ("host", host.map(str::to_owned))];
            for (key, value) in fields {
                if let Some(value) = value {
                    get.insert(key.into(), value.into());
                }
            }
            if let Some(scheme) = scheme {
                get.insert("scheme".into(), scheme.into());
            }
            let headers: Vec<Value> = headers
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            get.insert("httpHeaders".into(), headers.into());
            Value::Object(get)
        })
}

#[derive(Debug, Clone, Copy)]
enum Kinds {
    /// exec, httpGet or sleep
    Any,
    /// exec or sleep (postStop)
    NoHttp,
}

fn handler(kinds: Kinds) -> impl Strategy<Value = Value> {
    let action = match kinds {
        Kinds::Any => prop_oneof![
            argv().prop_map(|c| json!({"exec": {"command": c}})),
            http_get().prop_map(|g| json!({"httpGet": g})),
            seconds(0).prop_map(|s| json!({"sleep": {"seconds": s}})),
        ]
        .boxed(),
        Kinds::NoHttp => prop_oneof![
            argv().prop_map(|c| json!({"exec": {"command": c}})),
            seconds(0).prop_map(|s| json!({"sleep": {"seconds": s}})),
        ]
        .boxed(),
    };
    (
        action,
        prop::option::of(seconds(1)),
        prop::option::of(0..=MAX_RETRIES),
        prop::option::of(seconds(0)),
    )
        .prop_map(|(mut handler, timeout, retries, backoff)| {
            let is_sleep = handler.get("sleep").is_some();
            let fields = [
                ("timeoutSeconds", timeout.filter(|_| !is_sleep)),
                ("retries", retries),
                ("backoffSeconds", backoff),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    handler[key] = value.into();
                }
            }
            handler
        })
}

fn phase(kinds: Kinds) -> impl Strategy<Value = Value> {
    prop_oneof![
        handler(kinds),
        prop::collection::vec(prop::collection::vec(handler(kinds), 1..3), 1..3)
            .prop_map(|stages| json!(stages)),
    ]
}

fn init_container(index: usize) -> impl Strategy<Value = Value> {
    (
        "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
        argv(),
        prop::collection::vec(text().prop_map(Value::from), 0..3),
        prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,8}", text()), 0..3),
        prop::option::of("/[a-z0-9/]{0,12}"),
        prop::option::of(seconds(1)),
        prop::option::of(("/[a-z]{1,8}/[a-z.]{1,8}", text())),
    )
        .prop_map(
            move |(name, command, args, env, dir, timeout, once)| {
                let env: Vec<Value> = env
                    .into_iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect();
                // The index keeps names unique.
                let mut init = json!({"name": format!("{name}-{index}"), "command": command, "args": args, "env": env});
                if let Some(dir) = dir {
                    init["workingDir"] = dir.into();
                }
                if let Some(timeout) = timeout {
                    init["timeoutSeconds"] = timeout.into();
                }
                if let Some((path, key)) = once {
                    init["once"] = json!({"path": path, "key": key});
                }
                init
            },
        )
}

fn health_check() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            argv().prop_map(|c| json!({"exec": {"command": c}})),
            http_get().prop_map(|g| json!({"httpGet": g})),
        ],
        prop::option::of(seconds(1)),
        prop::option::of(seconds(1)),
        prop::option::of(prop::option::of(1..=1000i64)),
    )
        .prop_map(|(mut check, period, timeout, kill)| {
            if let Some(period) = period {
                check["periodSeconds"] = period.into();
            }
            if let Some(timeout) = timeout {
                check["timeoutSeconds"] = timeout.into();
            }
            if let Some(threshold) = kill {
                check["onCritical"] = "kill".into();
                if let Some(threshold) = threshold {
                    check["criticalThreshold"] = threshold.into();
                }
            }
            check
        })
}

fn valid_spec() -> impl Strategy<Value = Value> {
    (
        prop::option::of(phase(Kinds::Any)),
        prop::option::of(phase(Kinds::Any)),
        prop::option::of(phase(Kinds::NoHttp)),
        prop::option::of(health_check()),
        prop::option::of(prop::sample::select(vec![
            "SIGTERM", "TERM", "sigquit", "9", "SIGUSR1",
        ])),
        prop::option::of(seconds(0)),
        prop::option::of(seconds(0)),
        (0..3usize).prop_flat_map(|n| (0..n).map(init_container).collect::<Vec<_>>()),
    )
        .prop_map(
            |(post_start, pre_stop, post_stop, health, signal, grace, delay, inits)| {
                let mut spec = Map::new();
                let fields = [
                    ("postStart", post_start),
                    ("preStop", pre_stop),
                    ("postStop", post_stop),
                    ("healthCheck", health),
                    ("stopSignal", signal.map(Value::from)),
                    ("terminationGracePeriodSeconds", grace.map(Value::from)),
                    ("shutdownDelaySeconds", delay.map(Value::from)),
                ];
                for (key, value) in fields {
                    if let Some(value) = value {
                        spec.insert(key.into(), value);
                    }
                }
                spec.insert("initContainers".into(), inits.into());
                Value::Object(spec)
            },
        )
}

/// A place in a spec that can be made hostile: its JSON pointer, the path errors use, and
/// values no field of its kind accepts.
struct Site {
    pointer: String,
    path: String,
    hostile: Vec<(Value, String)>,
}

/// Numbers no duration holds: negative, past a year, past i64, past u64, fractional, absurd.
fn bad_numbers(min: i64) -> Vec<Value> {
    let mut values = vec![
        json!(min - 1),
        json!(i64::MIN),
        json!(MAX_SECONDS + 1),
        json!(u64::MAX),
        json!(1.5),
        json!(1e300),
        json!(-1e300),
        json!("30"),
        json!(true),
        json!([]),
    ];
    // 2^64 and beyond only parse as floats.
    values.push(serde_json::from_str("18446744073709551616").unwrap());
    values
}

fn sites(value: &Value, pointer: &str, path: &str, key: &str, out: &mut Vec<Site>) {
    let bad = |values: Vec<Value>| values.into_iter().map(|v| (v, path.to_owned())).collect();
    let nul = || json!("a\0b");
    let hostile: Vec<(Value, String)> = match (key, value) {
        (_, Value::Object(map)) => {
            for (k, v) in map {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                sites(v, &format!("{pointer}/{k}"), &sub, k, out);
            }
            return;
        }
        ("command" | "args", Value::Array(items)) => {
            for (i, _) in items.iter().enumerate() {
                let element = format!("{path}[{i}]");
                let mut hostile = vec![(json!(7), element.clone())];
                if key == "command" {
                    // Argument i of the joined argv.
                    hostile.push((nul(), element.clone()));
                }
                if key == "command" && i == 0 {
                    hostile.push((json!(""), path.to_owned()));
                }
                out.push(Site {
                    pointer: format!("{pointer}/{i}"),
                    path: element,
                    hostile,
                });
            }
            if key == "command" {
                out.push(Site {
                    pointer: pointer.to_owned(),
                    path: path.to_owned(),
                    hostile: vec![
                        (json!([]), path.to_owned()),
                        (json!("sh -c x"), path.to_owned()),
                    ],
                });
            }
            return;
        }
        (_, Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                sites(
                    v,
                    &format!("{pointer}/{i}"),
                    &format!("{path}[{i}]"),
                    key,
                    out,
                );
            }
            return;
        }
        ("timeoutSeconds" | "periodSeconds", _) => bad(bad_numbers(1)),
        (
            "seconds" | "backoffSeconds" | "terminationGracePeriodSeconds" | "shutdownDelaySeconds",
            _,
        ) => bad(bad_numbers(0)),
        ("retries", _) => bad(vec![
            json!(-1),
            json!(MAX_RETRIES + 1),
            json!(1e300),
            json!(u64::MAX),
        ]),
        ("criticalThreshold", _) => bad(vec![json!(0), json!(1001), json!(-1), json!(1e300)]),
        ("port", _) => bad(vec![
            json!(0),
            json!(65536),
            json!(-1),
            json!(80.5),
            json!(1e300),
            json!(u64::MAX),
            json!("http"),
            json!(null),
            json!(true),
        ]),
        ("stopSignal", _) => bad(vec![json!("SIGNOPE"), json!("99"), nul(), json!(15)]),
        ("scheme", _) => bad(vec![json!("FTP"), nul()]),
        ("host", _) => bad(vec![json!("example.com"), nul(), json!("127.0.0.1:80")]),
        ("onCritical", _) => bad(vec![json!("restart"), nul()]),
        ("workingDir", _) => bad(vec![json!("relative"), json!("/a\0b")]),
        ("path", _) if path.ends_with(".once.path") => {
            bad(vec![json!("relative"), json!("/dir/"), json!("/a\0b")])
        }
        ("path", _) => bad(vec![json!("/a b"), json!("/a\0b"), json!("/\n")]),
        ("name", _) if path.contains(".env[") => bad(vec![json!(""), json!("A=B"), nul()]),
        ("name", _) if path.contains(".httpHeaders[") => bad(vec![json!("a b"), json!(""), nul()]),
        ("name", _) => bad(vec![
            json!("Upper"),
            json!(""),
            json!("-a"),
            json!("x".repeat(64)),
            nul(),
        ]),
        ("value", _) if path.contains(".env[") => bad(vec![nul(), json!(1)]),
        ("value", _) => bad(vec![json!("a\nb"), nul(), json!(1)]),
        ("key", _) => bad(vec![json!(1)]),
        _ => return,
    };
    out.push(Site {
        pointer: pointer.to_owned(),
        path: path.to_owned(),
        hostile,
    });
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn plausible_specs_are_accepted_and_keep_the_invariants(spec in valid_spec()) {
        let plan = parse(spec.to_string().as_bytes());
        prop_assert!(plan.is_ok(), "{spec}: {plan:?}");
        check(&plan);
    }

    #[test]
    fn one_hostile_field_is_refused_by_its_path(
        spec in valid_spec(),
        site in any::<Index>(),
        value in any::<Index>(),
    ) {
        let mut found = Vec::new();
        sites(&spec, "", "", "", &mut found);
        prop_assume!(!found.is_empty(), "nothing to make hostile");
        let site = site.get(&found);
        let (bad, expected) = value.get(&site.hostile);
        let mut spec = spec.clone();
        *spec.pointer_mut(&site.pointer).unwrap() = bad.clone();
        let text = spec.to_string();
        let result = parse(text.as_bytes());
        check(&result);
        let errors: Vec<String> = match &result {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.errors.iter().map(|e| e.path.clone()).collect(),
        };
        prop_assert!(
            errors.iter().any(|p| p.starts_with(expected.as_str())),
            "{} = {bad} in {text}: expected an error at {expected}, got {result:?}",
            site.path
        );
    }
}

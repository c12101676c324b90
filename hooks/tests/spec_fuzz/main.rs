//! Hostile input for the spec parser and validator (issue 7): whatever the bytes, `Plan::from_json`
//! returns a plan or errors and never panics; a plan it returns keeps the invariants the engine
//! relies on; and a plausible spec with one field made hostile is refused naming that field.
//!
//! The committed corpus (`corpus/`) holds seeds with their expected verdict and is also what the
//! byte mutator starts from; proptest's failures are kept in `corpus/proptest-regressions.txt`
//! and replayed first. CI runs a fixed number of
//! cases (a few seconds); `PROPTEST_CASES=100000` runs more.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use lifecycle_hooks::plan::{Action, Hook, MAX_RETRIES, MAX_SECONDS};
use lifecycle_hooks::{Defaults, Plan, Stages};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};

mod plausible;

const CORPUS: &str = "tests/spec_fuzz/corpus";

/// `cases` unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/spec_fuzz/corpus/proptest-regressions.txt",
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
        Action::Signal(_) => assert_eq!(hook.timeout, None, "a signal has no timeout"),
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
    let signals = |stages: &Stages| {
        stages
            .iter()
            .flatten()
            .any(|h| matches!(h.action, Action::Signal(_)))
    };
    assert!(!signals(&plan.post_start) && !signals(&plan.post_stop));
    if let Some(r) = &plan.reconfigure {
        assert_hook(&r.hook);
        assert!(!matches!(r.hook.action, Action::Sleep(_)));
        assert_seconds("debounce", r.debounce, 0);
        assert!(!r.paths.is_empty() && r.paths.len() <= 32);
        for path in &r.paths {
            assert!(path.starts_with('/') && !path.chars().any(char::is_control));
            assert!(path.split('/').all(|c| c != ".."), "{path:?}");
        }
    }
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
    "reconfigure",
    "paths",
    "signal",
    "debounceSeconds",
    "onFailure",
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

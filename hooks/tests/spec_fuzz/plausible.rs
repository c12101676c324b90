//! Plausible specs: valid by construction (they must be accepted), then one field made hostile
//! (the error must name it).

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Map, Value};

use lifecycle_hooks::plan::{MAX_RETRIES, MAX_SECONDS};

use crate::{check, config, parse};

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
    /// exec, httpGet, sleep or signal (preStop)
    Any,
    /// exec, httpGet or sleep (postStart)
    NoSignal,
    /// exec or sleep (postStop)
    NoHttp,
}

fn handler(kinds: Kinds) -> impl Strategy<Value = Value> {
    let action = match kinds {
        Kinds::Any => prop_oneof![
            argv().prop_map(|c| json!({"exec": {"command": c}})),
            http_get().prop_map(|g| json!({"httpGet": g})),
            seconds(0).prop_map(|s| json!({"sleep": {"seconds": s}})),
            signal().prop_map(|s| json!({"signal": {"name": s}})),
        ]
        .boxed(),
        Kinds::NoSignal => prop_oneof![
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
            let is_sleep = handler.get("sleep").is_some() || handler.get("signal").is_some();
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

fn signal() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["SIGHUP", "HUP", "sigusr1", "10", "SIGWINCH"])
}

fn reconfigure() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            argv().prop_map(|c| json!({"exec": {"command": c}})),
            http_get().prop_map(|g| json!({"httpGet": g})),
            signal().prop_map(|s| json!({"signal": {"name": s}})),
        ],
        prop::collection::vec("/[a-z0-9._/-]{0,16}", 1..4),
        prop::option::of(seconds(0)),
        prop::option::of(prop::sample::select(vec!["stop", "report"])),
    )
        .prop_map(|(mut r, paths, debounce, on_failure)| {
            // `..` never leaves a volume.
            let paths: Vec<String> = paths
                .into_iter()
                .map(|p| {
                    p.split('/')
                        .filter(|c| *c != "..")
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .map(|p| {
                    if p.starts_with('/') {
                        p
                    } else {
                        format!("/{p}")
                    }
                })
                .collect();
            r["paths"] = json!(paths);
            if let Some(debounce) = debounce {
                r["debounceSeconds"] = debounce.into();
            }
            if let Some(on_failure) = on_failure {
                r["onFailure"] = on_failure.into();
            }
            r
        })
}

fn valid_spec() -> impl Strategy<Value = Value> {
    (
        prop::option::of(phase(Kinds::NoSignal)),
        prop::option::of(phase(Kinds::Any)),
        prop::option::of(phase(Kinds::NoHttp)),
        prop::option::of(health_check()),
        prop::option::of(reconfigure()),
        prop::option::of(prop::sample::select(vec![
            "SIGTERM", "TERM", "sigquit", "9", "SIGUSR1",
        ])),
        prop::option::of(seconds(0)),
        prop::option::of(seconds(0)),
        (0..3usize).prop_flat_map(|n| (0..n).map(init_container).collect::<Vec<_>>()),
    )
        .prop_map(
            |(
                post_start,
                pre_stop,
                post_stop,
                health,
                reconfigure,
                signal,
                grace,
                delay,
                inits,
            )| {
                let mut spec = Map::new();
                let fields = [
                    ("postStart", post_start),
                    ("preStop", pre_stop),
                    ("postStop", post_stop),
                    ("healthCheck", health),
                    ("reconfigure", reconfigure),
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

//! The hook spec as users write it: Kubernetes-shaped JSON, parsed strictly.
//!
//! These types mirror the JSON one to one; nothing here is validated beyond JSON types. The
//! [`crate::plan`] module turns a [`Spec`] into a [`crate::Plan`] in which every value is checked.

use std::fmt;

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    pub post_start: Option<PhaseSpec>,
    pub pre_stop: Option<PhaseSpec>,
    pub post_stop: Option<PhaseSpec>,
    pub health_check: Option<HealthCheckSpec>,
    pub reconfigure: Option<ReconfigureSpec>,
    pub stop_signal: Option<String>,
    pub termination_grace_period_seconds: Option<i64>,
    pub shutdown_delay_seconds: Option<i64>,
    #[serde(default)]
    pub init_containers: Vec<InitContainer>,
}

/// A phase's handlers: one handler object, as in Kubernetes, or a list of stages, each a list
/// of handlers (stages in order, a stage's handlers concurrently).
#[derive(Debug)]
pub enum PhaseSpec {
    One(Box<Handler>),
    Stages(Vec<Vec<Handler>>),
}

impl<'de> Deserialize<'de> for PhaseSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PhaseSpec, D::Error> {
        // By hand rather than `untagged`, so errors inside keep their field paths.
        struct PhaseVisitor;
        impl<'de> serde::de::Visitor<'de> for PhaseVisitor {
            type Value = PhaseSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a handler object or a list of stages (lists of handlers)")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PhaseSpec, A::Error> {
                Handler::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|handler| PhaseSpec::One(Box::new(handler)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<PhaseSpec, A::Error> {
                Vec::<Vec<Handler>>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(PhaseSpec::Stages)
            }
        }
        deserializer.deserialize_any(PhaseVisitor)
    }
}

/// One of `exec`, `httpGet`, `sleep`, `signal`; which one is set is checked in validation so
/// that the error can name every field that was given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Handler {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    pub sleep: Option<SleepAction>,
    pub signal: Option<SignalAction>,
    /// Accepted by the parser only so that validation can refuse it with a useful message.
    pub tcp_socket: Option<IgnoredAny>,
    pub timeout_seconds: Option<i64>,
    /// Further attempts after a failure.
    pub retries: Option<i64>,
    pub backoff_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecAction {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetAction {
    pub path: Option<String>,
    /// A number; Kubernetes also allows a named port, which has no meaning without a Pod spec, so
    /// it is kept as raw JSON and refused in validation with that reason.
    pub port: Option<serde_json::Value>,
    pub host: Option<String>,
    pub scheme: Option<String>,
    #[serde(default)]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SleepAction {
    pub seconds: i64,
}

/// A signal sent to the container's init process, e.g. `{"name": "SIGHUP"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignalAction {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InitContainer {
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub timeout_seconds: Option<i64>,
    pub once: Option<OnceSpec>,
    /// `"Always"` makes it a sidecar (Kubernetes' restartable init container).
    pub restart_policy: Option<String>,
}

/// A periodic check (Habitat's health-check hook, with Kubernetes probe-style fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    pub period_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    /// `"kill"` stops the container after `criticalThreshold` critical results in a row.
    pub on_critical: Option<String>,
    pub critical_threshold: Option<i64>,
}

/// A handler run when files under `paths` change (Habitat's reconfigure hook, Nomad's
/// template `change_mode`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReconfigureSpec {
    #[serde(default)]
    pub paths: Vec<String>,
    pub exec: Option<ExecAction>,
    pub http_get: Option<HttpGetAction>,
    pub signal: Option<SignalAction>,
    pub timeout_seconds: Option<i64>,
    pub debounce_seconds: Option<i64>,
    /// `"stop"` stops the container (as a stop request does) when the handler fails.
    pub on_failure: Option<String>,
}

/// Run this init container once per `key` for the volume holding `path` (install and upgrade
/// steps shared by the containers that mount it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OnceSpec {
    pub path: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

impl Spec {
    /// Parses a spec, naming the field path of the first JSON or type error.
    pub fn parse(json: &str) -> Result<Spec, InvalidSpec> {
        // serde would also accept a struct written as an array, which no user means.
        if !json.trim_start().starts_with('{') {
            return Err(FieldError::new("", "the spec must be a JSON object").into());
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            FieldError::new(&path, err.into_inner().to_string())
        })?;
        de.end()
            .map_err(|err| FieldError::new("", err.to_string()))?;
        Ok(spec)
    }
}

/// One thing wrong with a spec, at a JSON path such as `preStop.httpGet.port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a spec, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec {
    pub errors: Vec<FieldError>,
}

impl From<FieldError> for InvalidSpec {
    fn from(error: FieldError) -> InvalidSpec {
        InvalidSpec {
            errors: vec![error],
        }
    }
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        Spec::parse(json).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_design_example() {
        let spec = Spec::parse(
            r#"{
  "postStart": {"exec": {"command": ["sh", "-c", "echo started > /tmp/ready"]}},
  "preStop":   {"httpGet": {"path": "/drain", "port": 8080, "scheme": "HTTP",
                            "httpHeaders": [{"name": "X-Reason", "value": "stop"}]},
                "timeoutSeconds": 20},
  "stopSignal": "SIGTERM",
  "terminationGracePeriodSeconds": 30,
  "initContainers": [
    {"name": "migrate", "command": ["/app/migrate"], "env": [{"name": "DB", "value": "x"}],
     "workingDir": "/app", "timeoutSeconds": 120}
  ]
}"#,
        )
        .unwrap();
        assert_eq!(spec.init_containers[0].name, "migrate");
        let Some(PhaseSpec::One(pre_stop)) = spec.pre_stop else {
            panic!("preStop is one handler")
        };
        assert_eq!(pre_stop.timeout_seconds, Some(20));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let msg = error(r#"{"preStop": {"exec": {"command": ["x"], "cmd": 1}}}"#);
        assert!(
            msg.starts_with("preStop.exec.cmd: unknown field `cmd`"),
            "{msg}"
        );
        let msg = error(r#"{"initContainers": [{"name": "a", "image": "busybox"}]}"#);
        assert!(
            msg.starts_with("initContainers[0].image: unknown field `image`"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let msg = error(r#"{"terminationGracePeriodSeconds": "30"}"#);
        assert!(
            msg.starts_with("terminationGracePeriodSeconds: invalid type"),
            "{msg}"
        );
        let msg = error(r#"{"postStart": {"exec": {"command": "echo hi"}}}"#);
        assert!(
            msg.starts_with("postStart.exec.command: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_json_and_trailing_data_are_refused() {
        assert!(error("{").contains("EOF"));
        assert!(error("{} {}").contains("trailing characters"));
        assert_eq!(error("[]"), "the spec must be a JSON object");
        assert_eq!(error(" 3"), "the spec must be a JSON object");
    }

    #[test]
    fn huge_numbers_are_refused() {
        let msg = error(r#"{"terminationGracePeriodSeconds": 99999999999999999999999}"#);
        assert!(msg.starts_with("terminationGracePeriodSeconds:"), "{msg}");
    }

    #[test]
    fn a_phase_is_one_handler_or_stages_and_errors_keep_their_path() {
        let spec = Spec::parse(
            r#"{"postStart": [[{"exec": {"command": ["a"]}}, {"sleep": {"seconds": 1}}], [{"exec": {"command": ["b"]}}]]}"#,
        )
        .unwrap();
        let Some(PhaseSpec::Stages(stages)) = spec.post_start else {
            panic!("not stages")
        };
        assert_eq!((stages.len(), stages[0].len()), (2, 2));
        let msg = error(r#"{"preStop": [[{"exec": {"command": ["a"]}, "retry": 1}]]}"#);
        assert!(
            msg.starts_with("preStop[0][0].retry: unknown field `retry`"),
            "{msg}"
        );
        let msg = error(r#"{"preStop": "drain"}"#);
        assert!(msg.starts_with("preStop: invalid type: string \"drain\", expected a handler object or a list of stages"), "{msg}");
    }
}

//! A validated plan: every default filled in, every value checked, so nothing invalid reaches
//! the engine. Errors carry the JSON path of the field they are about.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::spec::{self, Spec};
pub use crate::spec::{FieldError, InvalidSpec};

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// The longest duration accepted anywhere in a spec (a year), so arithmetic on deadlines cannot
/// overflow.
pub const MAX_SECONDS: i64 = 365 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub post_start: Stages,
    pub pre_stop: Stages,
    /// Run after the entrypoint has exited, each handler in a fresh container from the same
    /// bundle (Nomad's poststop, Habitat's post-stop).
    pub post_stop: Stages,
    pub health_check: Option<HealthCheck>,
    pub reconfigure: Option<Reconfigure>,
    pub stop_signal: Signal,
    pub grace: Duration,
    /// Waited on a stop request before PreStop, within the grace period (Nomad's
    /// `shutdown_delay`).
    pub shutdown_delay: Duration,
    pub init_containers: Vec<InitContainer>,
}

/// A phase's handlers: stages run in order, the handlers of a stage concurrently. A single
/// handler object in the spec is one stage of one handler; no handler is no stage.
pub type Stages = Vec<Vec<Hook>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// An exec or httpGet handler with its timeout.
    pub hook: Hook,
    pub period: Duration,
    /// Stop the container after this many critical results in a row; `None`: never.
    pub kill_after: Option<u32>,
}

/// A handler run when the files under `paths` change, once a burst of changes has been quiet
/// for `debounce`; never two runs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconfigure {
    /// Absolute paths inside the container, each a directory or a file in a bind-mounted
    /// volume.
    pub paths: Vec<String>,
    /// An exec, httpGet or signal handler with its timeout.
    pub hook: Hook,
    pub debounce: Duration,
    /// A failed run stops the container, as a stop request does; otherwise it is reported.
    pub stop_on_failure: bool,
}

/// The quiet time after a change before the reconfigure handler runs, unless the spec sets
/// `debounceSeconds`: long enough to take a kubelet's atomic update (four changes within
/// milliseconds) or an editor's save as one.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);
/// The most paths one reconfigure entry may watch.
pub const MAX_WATCHED_PATHS: usize = 32;

/// Habitat's default health-check interval.
pub const DEFAULT_HEALTH_PERIOD: Duration = Duration::from_secs(30);

/// The most further attempts a handler may ask for.
pub const MAX_RETRIES: i64 = 10;
/// The pause between attempts when `retries` is set without `backoffSeconds`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub action: Action,
    /// The handler's own limit; `None` means none (a PreStop is still bounded by the grace period).
    pub timeout: Option<Duration>,
    /// Further attempts after a failure, each after `backoff`.
    pub retries: u32,
    pub backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec {
        command: Vec<String>,
    },
    HttpGet(HttpGet),
    Sleep(Duration),
    /// Sent to the container's init process.
    Signal(Signal),
}

impl Action {
    /// The handler's kind, as the spec names it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Exec { .. } => "exec",
            Action::HttpGet(_) => "httpGet",
            Action::Sleep(_) => "sleep",
            Action::Signal(_) => "signal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    pub scheme: Scheme,
    pub host: IpAddr,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitContainer {
    pub name: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub timeout: Option<Duration>,
    pub once: Option<Once>,
    /// A sidecar (`restartPolicy: Always`): started rather than run to completion, kept running
    /// beside the entrypoint and restarted when it exits.
    pub sidecar: bool,
}

/// Run an init container once per `key`: `path` (absolute, inside a bind-mounted volume) is
/// its sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    pub path: String,
    pub key: String,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            post_start: Vec::new(),
            pre_stop: Vec::new(),
            post_stop: Vec::new(),
            health_check: None,
            reconfigure: None,
            stop_signal: Signal::SIGTERM,
            grace: DEFAULT_GRACE,
            shutdown_delay: Duration::ZERO,
            init_containers: Vec::new(),
        }
    }
}

impl Plan {
    /// Parses and validates a spec in one step.
    pub fn from_json(json: &str, defaults: &Defaults) -> Result<Plan, InvalidSpec> {
        Plan::from_spec(Spec::parse(json)?, defaults)
    }

    /// Validates a parsed spec, collecting every error rather than stopping at the first.
    pub fn from_spec(spec: Spec, defaults: &Defaults) -> Result<Plan, InvalidSpec> {
        let mut v = Validator::default();
        let post_start = spec
            .post_start
            .map_or_else(Vec::new, |p| v.phase("postStart", p));
        let pre_stop = spec
            .pre_stop
            .map_or_else(Vec::new, |p| v.phase("preStop", p));
        let post_stop = spec
            .post_stop
            .map_or_else(Vec::new, |p| v.phase("postStop", p));
        // After the entrypoint exits its network namespace is gone, and no process is left to
        // signal; before PostStart ends, the entrypoint may not handle signals yet.
        let signal_elsewhere = "; use it in preStop or reconfigure";
        v.refuse_in(
            "postStop",
            &post_stop,
            "httpGet",
            "the container's network is gone once it has exited; use exec",
        );
        v.refuse_in(
            "postStart",
            &post_start,
            "signal",
            &format!(
                "the entrypoint races PostStart and may not handle signals yet{signal_elsewhere}"
            ),
        );
        v.refuse_in(
            "postStop",
            &post_stop,
            "signal",
            &format!("the container has exited{signal_elsewhere}"),
        );
        let health_check = spec.health_check.and_then(|h| v.health_check(h));
        let reconfigure = spec.reconfigure.and_then(|r| v.reconfigure(r));
        let shutdown_delay = match spec.shutdown_delay_seconds {
            Some(s) => v.seconds("shutdownDelaySeconds", s, 0),
            None => Some(Duration::ZERO),
        };
        let stop_signal = match spec.stop_signal {
            Some(name) => v.signal("stopSignal", &name),
            None => Some(defaults.stop_signal),
        };
        let grace = match spec.termination_grace_period_seconds {
            Some(s) => v.seconds("terminationGracePeriodSeconds", s, 0),
            None => Some(DEFAULT_GRACE),
        };
        let init_containers = v.init_containers(spec.init_containers);
        if !v.errors.is_empty() {
            return Err(InvalidSpec { errors: v.errors });
        }
        Ok(Plan {
            post_start,
            pre_stop,
            post_stop,
            health_check,
            reconfigure,
            // Both are Some whenever no error was recorded.
            stop_signal: stop_signal.unwrap_or(Signal::SIGTERM),
            grace: grace.unwrap_or(DEFAULT_GRACE),
            shutdown_delay: shutdown_delay.unwrap_or_default(),
            init_containers,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.post_start.is_empty()
            && self.pre_stop.is_empty()
            && self.post_stop.is_empty()
            && self.init_containers.is_empty()
    }
}

/// Values that come from outside the spec, such as the image's stop signal.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub stop_signal: Signal,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            stop_signal: Signal::SIGTERM,
        }
    }
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or `15`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).ok()
}

/// The handlers of postStart, preStop and postStop.
const PHASE_HANDLERS: &str = "exec, httpGet, sleep, signal";

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn fail<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError::new(path, message));
        None
    }

    fn seconds(&mut self, path: &str, value: i64, min: i64) -> Option<Duration> {
        if value < min || value > MAX_SECONDS {
            return self.fail(path, format!("must be {min}..{MAX_SECONDS} seconds"));
        }
        Some(Duration::from_secs(value as u64))
    }

    fn optional_timeout(&mut self, path: &str, value: Option<i64>) -> Option<Option<Duration>> {
        match value {
            None => Some(None),
            Some(s) => self.seconds(path, s, 1).map(Some),
        }
    }

    fn signal(&mut self, path: &str, name: &str) -> Option<Signal> {
        parse_signal(name).or_else(|| {
            self.fail(
                path,
                format!("unknown signal {name:?} (use a name such as SIGTERM)"),
            )
        })
    }

    fn health_check(&mut self, h: spec::HealthCheckSpec) -> Option<HealthCheck> {
        let path = "healthCheck";
        let period = match h.period_seconds {
            None => Some(DEFAULT_HEALTH_PERIOD),
            Some(s) => self.seconds(&format!("{path}.periodSeconds"), s, 1),
        };
        let kill_after = match (h.on_critical.as_deref(), h.critical_threshold) {
            (None, None) => Some(None),
            (None, Some(_)) => self.fail(
                &format!("{path}.criticalThreshold"),
                "needs onCritical: \"kill\"",
            ),
            (Some("kill"), None) => Some(Some(1)),
            (Some("kill"), Some(n @ 1..=1000)) => Some(Some(n as u32)),
            (Some("kill"), Some(_)) => {
                self.fail(&format!("{path}.criticalThreshold"), "must be 1..1000")
            }
            (Some(other), _) => self.fail(
                &format!("{path}.onCritical"),
                format!("must be \"kill\", not {other:?}"),
            ),
        };
        let handler = spec::Handler {
            exec: h.exec,
            http_get: h.http_get,
            sleep: None,
            signal: None,
            tcp_socket: None,
            timeout_seconds: h.timeout_seconds,
            retries: None,
            backoff_seconds: None,
        };
        let hook = self.hook(path, handler, "exec, httpGet");
        Some(HealthCheck {
            hook: hook?,
            period: period?,
            kill_after: kill_after?,
        })
    }

    fn reconfigure(&mut self, r: spec::ReconfigureSpec) -> Option<Reconfigure> {
        let path = "reconfigure";
        let errors_before = self.errors.len();
        if r.paths.is_empty() {
            self.fail::<()>(
                &format!("{path}.paths"),
                "must name at least one path to watch",
            );
        } else if r.paths.len() > MAX_WATCHED_PATHS {
            self.fail::<()>(
                &format!("{path}.paths"),
                format!("at most {MAX_WATCHED_PATHS} paths"),
            );
        }
        for (i, watched) in r.paths.iter().enumerate() {
            let leaves = watched.split('/').any(|c| c == "..");
            let control = watched.chars().any(char::is_control);
            if !watched.starts_with('/') || control || leaves {
                self.fail::<()>(
                    &format!("{path}.paths[{i}]"),
                    format!("{watched:?} must be an absolute path without '..', inside a bind-mounted volume"),
                );
            }
        }
        let debounce = match r.debounce_seconds {
            None => Some(DEFAULT_DEBOUNCE),
            Some(s) => self.seconds(&format!("{path}.debounceSeconds"), s, 0),
        };
        let stop_on_failure = match r.on_failure.as_deref() {
            None | Some("report") => Some(false),
            Some("stop") => Some(true),
            Some(other) => self.fail(
                &format!("{path}.onFailure"),
                format!("must be \"stop\" or \"report\", not {other:?}"),
            ),
        };
        let handler = spec::Handler {
            exec: r.exec,
            http_get: r.http_get,
            sleep: None,
            signal: r.signal,
            tcp_socket: None,
            timeout_seconds: r.timeout_seconds,
            retries: None,
            backoff_seconds: None,
        };
        let hook = self.hook(path, handler, "exec, httpGet, signal");
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Reconfigure {
            paths: r.paths,
            hook: hook?,
            debounce: debounce?,
            stop_on_failure: stop_on_failure?,
        })
    }

    /// Refuses `kind` handlers (as the spec names them) in a phase, saying why.
    fn refuse_in(&mut self, path: &str, stages: &Stages, kind: &str, why: &str) {
        if stages.iter().flatten().any(|h| h.action.name() == kind) {
            self.fail::<()>(
                &format!("{path}.{kind}"),
                format!("is not supported: {why}"),
            );
        }
    }

    fn phase(&mut self, path: &str, phase: spec::PhaseSpec) -> Stages {
        match phase {
            spec::PhaseSpec::One(handler) => self
                .hook(path, *handler, PHASE_HANDLERS)
                .map(|h| vec![vec![h]])
                .unwrap_or_default(),
            spec::PhaseSpec::Stages(stages) => {
                let mut out = Vec::new();
                for (i, stage) in stages.into_iter().enumerate() {
                    if stage.is_empty() {
                        self.fail::<()>(
                            &format!("{path}[{i}]"),
                            "a stage needs at least one handler",
                        );
                        continue;
                    }
                    let hooks: Vec<Hook> = stage
                        .into_iter()
                        .enumerate()
                        .filter_map(|(j, h)| {
                            self.hook(&format!("{path}[{i}][{j}]"), h, PHASE_HANDLERS)
                        })
                        .collect();
                    out.push(hooks);
                }
                out
            }
        }
    }

    /// One handler; `kinds` names the handlers the place allows, for the error message.
    fn hook(&mut self, path: &str, h: spec::Handler, kinds: &str) -> Option<Hook> {
        if h.tcp_socket.is_some() {
            return self.fail(
                &format!("{path}.tcpSocket"),
                "is not supported for lifecycle hooks (Kubernetes deprecated it); use exec or httpGet",
            );
        }
        let given: Vec<&str> = [
            (h.exec.is_some(), "exec"),
            (h.http_get.is_some(), "httpGet"),
            (h.sleep.is_some(), "sleep"),
            (h.signal.is_some(), "signal"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(", ")
            };
            return self.fail(
                path,
                format!("must set exactly one of {kinds} (found {found})"),
            );
        }
        let timeout_path = format!("{path}.timeoutSeconds");
        let action = if let Some(exec) = h.exec {
            let path = format!("{path}.exec.command");
            self.argv(&path, exec.command)
                .map(|command| Action::Exec { command })
        } else if let Some(http) = h.http_get {
            self.http_get(&format!("{path}.httpGet"), http)
                .map(Action::HttpGet)
        } else if let Some(signal) = h.signal {
            if h.timeout_seconds.is_some() {
                return self.fail(
                    &timeout_path,
                    "cannot be combined with signal (it is sent at once)",
                );
            }
            self.signal(&format!("{path}.signal.name"), &signal.name)
                .map(Action::Signal)
        } else {
            let sleep = h.sleep?;
            if h.timeout_seconds.is_some() {
                return self.fail(
                    &timeout_path,
                    "cannot be combined with sleep (the sleep is its own duration)",
                );
            }
            self.seconds(&format!("{path}.sleep.seconds"), sleep.seconds, 0)
                .map(Action::Sleep)
        };
        let timeout = self.optional_timeout(&timeout_path, h.timeout_seconds);
        let retries = match h.retries {
            None => Some(0),
            Some(n @ 0..=MAX_RETRIES) => Some(n as u32),
            Some(_) => self.fail(
                &format!("{path}.retries"),
                format!("must be 0..{MAX_RETRIES}"),
            ),
        };
        let backoff = match h.backoff_seconds {
            None => Some(DEFAULT_BACKOFF),
            Some(s) => self.seconds(&format!("{path}.backoffSeconds"), s, 0),
        };
        Some(Hook {
            action: action?,
            timeout: timeout?,
            retries: retries?,
            backoff: backoff?,
        })
    }

    fn argv(&mut self, path: &str, argv: Vec<String>) -> Option<Vec<String>> {
        if argv.is_empty() || argv[0].is_empty() {
            return self.fail(path, "must name a program to run");
        }
        if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
            return self.fail(&format!("{path}[{i}]"), "must not contain a NUL byte");
        }
        Some(argv)
    }

    fn http_get(&mut self, path: &str, http: spec::HttpGetAction) -> Option<HttpGet> {
        let errors_before = self.errors.len();
        let port = match &http.port {
            None => self.fail(&format!("{path}.port"), "is required"),
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=65535) => Some(p as u16),
                _ => self.fail(&format!("{path}.port"), "must be 1..65535"),
            },
            Some(serde_json::Value::String(name)) => self.fail(
                &format!("{path}.port"),
                format!("named port {name:?} is not supported: give the port number"),
            ),
            Some(_) => self.fail(&format!("{path}.port"), "must be a number 1..65535"),
        };
        let scheme = match http.scheme.as_deref() {
            None => Some(Scheme::Http),
            Some(s) if s.eq_ignore_ascii_case("http") => Some(Scheme::Http),
            Some(s) if s.eq_ignore_ascii_case("https") => Some(Scheme::Https),
            Some(s) => self.fail(
                &format!("{path}.scheme"),
                format!("must be HTTP or HTTPS, not {s:?}"),
            ),
        };
        let host = match http.host.as_deref() {
            None | Some("") | Some("localhost") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(h) => h.trim_matches(['[', ']']).parse().ok().or_else(|| {
                self.fail(
                    &format!("{path}.host"),
                    format!(
                        "{h:?} is not an IP address (names are not resolved inside the container)"
                    ),
                )
            }),
        };
        let raw_path = http.path.unwrap_or_default();
        let request_path = if raw_path.starts_with('/') {
            raw_path
        } else {
            format!("/{raw_path}")
        };
        if request_path.parse::<http::uri::PathAndQuery>().is_err() {
            self.fail::<()>(
                &format!("{path}.path"),
                format!("{request_path:?} is not a valid URL path"),
            );
        }
        let mut headers = Vec::new();
        for (i, header) in http.http_headers.into_iter().enumerate() {
            let hpath = format!("{path}.httpHeaders[{i}]");
            if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                self.fail::<()>(
                    &format!("{hpath}.name"),
                    format!("{:?} is not a valid header name", header.name),
                );
            } else if http::HeaderValue::from_str(&header.value).is_err() {
                self.fail::<()>(
                    &format!("{hpath}.value"),
                    "is not a valid header value (control characters are not allowed)",
                );
            } else {
                headers.push((header.name, header.value));
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(HttpGet {
            scheme: scheme?,
            host: host?,
            port: port?,
            path: request_path,
            headers,
        })
    }

    fn init_containers(&mut self, inits: Vec<spec::InitContainer>) -> Vec<InitContainer> {
        let mut out: Vec<InitContainer> = Vec::new();
        for (i, init) in inits.into_iter().enumerate() {
            let path = format!("initContainers[{i}]");
            let errors_before = self.errors.len();
            if !is_dns_label(&init.name) {
                self.fail::<()>(
                    &format!("{path}.name"),
                    format!(
                        "{:?} must be a DNS label (lower-case letters, digits and '-', at most 63)",
                        init.name
                    ),
                );
            } else if out.iter().any(|o| o.name == init.name) {
                self.fail::<()>(
                    &format!("{path}.name"),
                    format!("{:?} is used twice", init.name),
                );
            }
            // Kubernetes passes `args` alone to the image's entrypoint; there is none here, and
            // running args[0] as the program would surprise (found by tests/spec_fuzz.rs).
            let argv = if init.command.is_empty() {
                self.fail(
                    &format!("{path}.command"),
                    "must name a program to run (args alone are not enough: no image entrypoint is used)",
                )
            } else {
                let mut argv = init.command;
                argv.extend(init.args);
                self.argv(&format!("{path}.command"), argv)
            };
            let mut env = Vec::new();
            for (j, var) in init.env.into_iter().enumerate() {
                if var.name.is_empty() || var.name.contains(['=', '\0']) {
                    self.fail::<()>(
                        &format!("{path}.env[{j}].name"),
                        "must be non-empty, without '=' or NUL",
                    );
                } else if var.value.contains('\0') {
                    self.fail::<()>(
                        &format!("{path}.env[{j}].value"),
                        "must not contain a NUL byte",
                    );
                } else {
                    env.push((var.name, var.value));
                }
            }
            if let Some(dir) = &init.working_dir {
                if !dir.starts_with('/') || dir.contains('\0') {
                    self.fail::<()>(&format!("{path}.workingDir"), "must be an absolute path");
                }
            }
            let timeout =
                self.optional_timeout(&format!("{path}.timeoutSeconds"), init.timeout_seconds);
            if let Some(once) = &init.once {
                if !once.path.starts_with('/')
                    || once.path.contains('\0')
                    || once.path.ends_with('/')
                {
                    self.fail::<()>(
                        &format!("{path}.once.path"),
                        "must be an absolute file path inside a mounted volume",
                    );
                }
            }
            let sidecar = match init.restart_policy.as_deref() {
                None => false,
                Some("Always") => true,
                Some(other) => {
                    self.fail::<()>(
                        &format!("{path}.restartPolicy"),
                        format!("{other:?}: only \"Always\" (a sidecar) is allowed"),
                    );
                    false
                }
            };
            if sidecar {
                // A sidecar runs until the container stops, and restarts whenever it exits.
                if init.timeout_seconds.is_some() {
                    self.fail::<()>(
                        &format!("{path}.timeoutSeconds"),
                        "a sidecar runs until the container stops; it has no timeout",
                    );
                }
                if init.once.is_some() {
                    self.fail::<()>(
                        &format!("{path}.once"),
                        "a sidecar is restarted whenever it exits; it cannot run once",
                    );
                }
            }
            if self.errors.len() > errors_before {
                continue;
            }
            if let (Some(argv), Some(timeout)) = (argv, timeout) {
                out.push(InitContainer {
                    name: init.name,
                    argv,
                    env,
                    working_dir: init.working_dir,
                    timeout,
                    once: init.once.map(|o| Once {
                        path: o.path,
                        key: o.key,
                    }),
                    sidecar,
                });
            }
        }
        out
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests;

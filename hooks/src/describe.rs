//! The plan as people read it: what `lifecycle-shim check` prints.

use std::fmt;

use crate::plan::{Action, Hook, Plan, Scheme, Stages};
use crate::seconds::Seconds;

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "stop signal: {}", self.stop_signal)?;
        writeln!(f, "termination grace period: {}", Seconds(self.grace))?;
        if self.init_containers.is_empty() {
            writeln!(f, "init containers: none")?;
        } else {
            writeln!(f, "init containers (in order):")?;
        }
        for (i, init) in self.init_containers.iter().enumerate() {
            write!(f, "  {}. {}: {:?}", i + 1, init.name, init.argv)?;
            if let Some(dir) = &init.working_dir {
                write!(f, " in {}", Shown(dir))?;
            }
            for (name, value) in &init.env {
                write!(f, " {}={value:?}", Shown(name))?;
            }
            match init.timeout {
                _ if init.sidecar => write!(
                    f,
                    ", sidecar: kept running beside the entrypoint, restarted when it exits"
                )?,
                Some(t) => write!(f, ", timeout {}", Seconds(t))?,
                None => write!(f, ", no timeout")?,
            }
            match &init.once {
                Some(once) => writeln!(
                    f,
                    ", once per key {:?} (sentinel {})",
                    once.key,
                    Shown(&once.path)
                )?,
                None => writeln!(f)?,
            }
        }
        if !self.shutdown_delay.is_zero() {
            writeln!(f, "shutdown delay: {}", Seconds(self.shutdown_delay))?;
        }
        write_phase(f, "postStart", &self.post_start, "no timeout")?;
        write_phase(f, "preStop", &self.pre_stop, "bounded by the grace period")?;
        if !self.post_stop.is_empty() {
            write_phase(
                f,
                "postStop (in a fresh container)",
                &self.post_stop,
                "no timeout",
            )?;
        }
        if let Some(check) = &self.health_check {
            write!(
                f,
                "healthCheck: every {}, the first at a random point within it; ",
                Seconds(check.period)
            )?;
            match check.kill_after {
                Some(n) => writeln!(f, "{n} critical results in a row stop the container")?,
                None => writeln!(f, "results are recorded, never acted on")?,
            }
            write!(f, "  runs ")?;
            write_hook(f, &check.hook, "no timeout")?;
        }
        if let Some(r) = &self.reconfigure {
            let on_failure = if r.stop_on_failure {
                "a failure stops the container"
            } else {
                "a failure is reported"
            };
            writeln!(
                f,
                "reconfigure: after {} without changes to {}, once at a time; {on_failure}",
                Seconds(r.debounce),
                r.paths
                    .iter()
                    .map(|p| Shown(p).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            write!(f, "  then ")?;
            write_hook(f, &r.hook, "no timeout")?;
        }
        Ok(())
    }
}

/// One line for a single handler, as Kubernetes writes it; a line per stage otherwise.
fn write_phase(
    f: &mut fmt::Formatter<'_>,
    phase: &str,
    stages: &Stages,
    unbounded: &str,
) -> fmt::Result {
    match stages.as_slice() {
        [] => writeln!(f, "{phase}: none"),
        [stage] if stage.len() == 1 => {
            write!(f, "{phase}: ")?;
            write_hook(f, &stage[0], unbounded)
        }
        _ => {
            writeln!(
                f,
                "{phase}: {} stages, in order; a stage's handlers at once",
                stages.len()
            )?;
            for (i, stage) in stages.iter().enumerate() {
                for hook in stage {
                    write!(f, "  stage {}: ", i + 1)?;
                    write_hook(f, hook, unbounded)?;
                }
            }
            Ok(())
        }
    }
}

/// Text from the spec, with control characters escaped: `check`'s output goes to a terminal,
/// and a spec must not be able to write escape sequences or fake lines there.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

fn write_hook(f: &mut fmt::Formatter<'_>, hook: &Hook, unbounded: &str) -> fmt::Result {
    match &hook.action {
        Action::Exec { command } => write!(f, "exec {command:?}")?,
        Action::Sleep(d) => write!(f, "sleep {}", Seconds(*d))?,
        Action::Signal(signal) => write!(f, "signal {signal} to the container's init")?,
        Action::HttpGet(get) => {
            let scheme = match get.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https (certificate not verified)",
            };
            let addr = std::net::SocketAddr::new(get.host, get.port);
            write!(
                f,
                "httpGet {scheme} {addr}{} from inside the container",
                Shown(&get.path)
            )?;
            for (name, value) in &get.headers {
                write!(f, ", {}: {}", Shown(name), Shown(value))?;
            }
        }
    }
    if !matches!(hook.action, Action::Sleep(_) | Action::Signal(_)) {
        match hook.timeout {
            Some(t) => write!(f, ", timeout {}", Seconds(t))?,
            None => write!(f, ", {unbounded}")?,
        }
    }
    if hook.retries > 0 {
        write!(
            f,
            ", {} retries {} apart",
            hook.retries,
            Seconds(hook.backoff)
        )?;
    }
    writeln!(f)
}

#[cfg(test)]
mod tests {
    use crate::plan::{Defaults, Plan};

    #[test]
    fn control_characters_from_the_spec_are_escaped() {
        let plan = Plan::from_json(
            r#"{"initContainers": [{"name": "a", "command": ["x"], "workingDir": "/\u001b[2J\nfake: line"}]}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        assert!(text.contains("in /\\u{1b}[2J\\nfake: line"), "{text}");
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn describes_stages_retries_and_the_shutdown_delay() {
        let plan = Plan::from_json(
            r#"{"postStart": [[{"exec": {"command": ["a"]}, "retries": 2}, {"sleep": {"seconds": 1}}],
                              [{"exec": {"command": ["b"]}}]],
                "shutdownDelaySeconds": 5}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let expected = "shutdown delay: 5.0s
postStart: 2 stages, in order; a stage's handlers at once
  stage 1: exec [\"a\"], no timeout, 2 retries 1.0s apart
  stage 1: sleep 1.0s
  stage 2: exec [\"b\"], no timeout
preStop: none
";
        assert!(text.ends_with(expected), "{text}");
    }

    #[test]
    fn describes_every_part_of_the_plan() {
        let plan = Plan::from_json(
            r#"{"postStart": {"exec": {"command": ["touch", "/ready"]}, "timeoutSeconds": 5},
                "preStop": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "/drain",
                            "httpHeaders": [{"name": "X-Why", "value": "stop"}]}},
                "terminationGracePeriodSeconds": 10, "stopSignal": "SIGQUIT",
                "initContainers": [{"name": "migrate", "command": ["/migrate"], "workingDir": "/app",
                                    "env": [{"name": "DB", "value": "x"}], "timeoutSeconds": 60},
                                   {"name": "proxy", "command": ["/proxy"], "restartPolicy": "Always"}]}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let expected = "stop signal: SIGQUIT
termination grace period: 10.0s
init containers (in order):
  1. migrate: [\"/migrate\"] in /app DB=\"x\", timeout 60.0s
  2. proxy: [\"/proxy\"], sidecar: kept running beside the entrypoint, restarted when it exits
postStart: exec [\"touch\", \"/ready\"], timeout 5.0s
preStop: httpGet https (certificate not verified) 127.0.0.1:8443/drain from inside the container, X-Why: stop, bounded by the grace period
";
        assert_eq!(text, expected);
    }

    #[test]
    fn describes_the_health_check() {
        let plan = Plan::from_json(
            r#"{"healthCheck": {"exec": {"command": ["check"]}, "periodSeconds": 10, "timeoutSeconds": 3,
                                "onCritical": "kill", "criticalThreshold": 2}}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let expected = "healthCheck: every 10.0s, the first at a random point within it; 2 critical results in a row stop the container
  runs exec [\"check\"], timeout 3.0s
";
        assert!(text.ends_with(expected), "{text}");
    }

    #[test]
    fn describes_reconfigure_and_signal_handlers() {
        let plan = Plan::from_json(
            r#"{"preStop": {"signal": {"name": "USR1"}},
                "reconfigure": {"paths": ["/etc/nginx/conf.d", "/etc/app/app.conf"],
                                "exec": {"command": ["nginx", "-s", "reload"]}, "timeoutSeconds": 10,
                                "debounceSeconds": 2, "onFailure": "stop"}}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let expected = "preStop: signal SIGUSR1 to the container's init
reconfigure: after 2.0s without changes to /etc/nginx/conf.d, /etc/app/app.conf, once at a time; a failure stops the container
  then exec [\"nginx\", \"-s\", \"reload\"], timeout 10.0s
";
        assert!(text.ends_with(expected), "{text}");
    }
}

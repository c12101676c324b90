//! The plan as people read it: what `lifecycle-shim check` prints.

use std::fmt;

use crate::engine::Seconds;
use crate::plan::{Action, Hook, Plan, Scheme};

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
                write!(f, " in {dir}")?;
            }
            for (name, value) in &init.env {
                write!(f, " {name}={value:?}")?;
            }
            match init.timeout {
                Some(t) => writeln!(f, ", timeout {}", Seconds(t))?,
                None => writeln!(f, ", no timeout")?,
            }
        }
        write_hook(f, "postStart", self.post_start.as_ref(), "no timeout")?;
        write_hook(
            f,
            "preStop",
            self.pre_stop.as_ref(),
            "bounded by the grace period",
        )
    }
}

fn write_hook(
    f: &mut fmt::Formatter<'_>,
    phase: &str,
    hook: Option<&Hook>,
    unbounded: &str,
) -> fmt::Result {
    let Some(hook) = hook else {
        return writeln!(f, "{phase}: none");
    };
    write!(f, "{phase}: ")?;
    match &hook.action {
        Action::Exec { command } => write!(f, "exec {command:?}")?,
        Action::Sleep(d) => return writeln!(f, "sleep {}", Seconds(*d)),
        Action::HttpGet(get) => {
            let scheme = match get.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https (certificate not verified)",
            };
            let addr = std::net::SocketAddr::new(get.host, get.port);
            write!(
                f,
                "httpGet {scheme} {addr}{} from inside the container",
                get.path
            )?;
            for (name, value) in &get.headers {
                write!(f, ", {name}: {value}")?;
            }
        }
    }
    match hook.timeout {
        Some(t) => writeln!(f, ", timeout {}", Seconds(t)),
        None => writeln!(f, ", {unbounded}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::{Defaults, Plan};

    #[test]
    fn describes_every_part_of_the_plan() {
        let plan = Plan::from_json(
            r#"{"postStart": {"exec": {"command": ["touch", "/ready"]}, "timeoutSeconds": 5},
                "preStop": {"httpGet": {"port": 8443, "scheme": "HTTPS", "path": "/drain",
                            "httpHeaders": [{"name": "X-Why", "value": "stop"}]}},
                "terminationGracePeriodSeconds": 10, "stopSignal": "SIGQUIT",
                "initContainers": [{"name": "migrate", "command": ["/migrate"], "workingDir": "/app",
                                    "env": [{"name": "DB", "value": "x"}], "timeoutSeconds": 60}]}"#,
            &Defaults::default(),
        )
        .unwrap();
        let text = plan.to_string();
        let expected = "stop signal: SIGQUIT
termination grace period: 10.0s
init containers (in order):
  1. migrate: [\"/migrate\"] in /app DB=\"x\", timeout 60.0s
postStart: exec [\"touch\", \"/ready\"], timeout 5.0s
preStop: httpGet https (certificate not verified) 127.0.0.1:8443/drain from inside the container, X-Why: stop, bounded by the grace period
";
        assert_eq!(text, expected);
    }
}

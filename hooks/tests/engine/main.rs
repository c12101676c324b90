//! The engine against an in-memory container: ordering, deadlines and the stop sequence under a
//! paused clock; and (in `http`) the httpGet handler against local servers.

mod http;
mod reconfigure;
mod supervisor;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use lifecycle_hooks::container::{
    Container, ExecOutput, ExecRequest, ExitStatus, InitHost, InitTicket, Phase,
};
use lifecycle_hooks::plan::InitContainer;
use lifecycle_hooks::{
    run_hook, run_init_containers, run_phase, terminate, Defaults, HookFailure, Plan,
};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};

/// Commands the fake understands: `ok`, `fail` (exit 3, prints "boom"), `hang` (runs until its
/// deadline), `take N` (runs N seconds), `flaky N` (fails its first N runs).
struct Fake {
    start: Instant,
    events: RefCell<Vec<(u64, String)>>,
    runs: RefCell<std::collections::HashMap<String, u32>>,
    /// Exit codes for `code`, one per run.
    codes: RefCell<std::collections::VecDeque<i32>>,
    /// Where `connect` goes, whatever address is asked for.
    server: Option<SocketAddr>,
    exited: bool,
    /// The entrypoint's exit, once it has one (see [`Fake::exit`]).
    exit: RefCell<Option<ExitStatus>>,
    exit_changed: tokio::sync::Notify,
    /// The entrypoint exits 0 on SIGTERM (and any stop signal) when set.
    traps_term: bool,
    /// `once` keys recorded as succeeded.
    once_done: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Changes to watched files: at these seconds, these paths (see `reconfigure`).
    changes: RefCell<Vec<(u64, Vec<String>)>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            start: Instant::now(),
            events: RefCell::new(Vec::new()),
            runs: RefCell::default(),
            codes: RefCell::default(),
            server: None,
            exited: false,
            exit: RefCell::new(None),
            exit_changed: tokio::sync::Notify::new(),
            traps_term: false,
            once_done: std::sync::Arc::default(),
            changes: RefCell::default(),
        }
    }

    /// Ends the entrypoint with `status` (the first end counts).
    fn end(&self, status: ExitStatus) {
        let mut exit = self.exit.borrow_mut();
        if exit.is_none() {
            self.record(format!("exit {}", status.code()));
            *exit = Some(status);
            self.exit_changed.notify_waiters();
        }
    }

    /// The entrypoint's exit: when something ends it, or by itself after `after`.
    async fn exit(&self, after: Option<Duration>) -> ExitStatus {
        let by_itself = async {
            match after {
                Some(after) => sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(by_itself);
        loop {
            let changed = self.exit_changed.notified();
            if let Some(status) = *self.exit.borrow() {
                return status;
            }
            tokio::select! {
                () = changed => {}
                () = &mut by_itself => self.end(ExitStatus::Exited(0)),
            }
        }
    }

    fn record(&self, what: String) {
        let at = self.start.elapsed().as_secs();
        self.events.borrow_mut().push((at, what));
    }

    fn events(&self) -> Vec<(u64, String)> {
        self.events.borrow().clone()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("fake error")]
struct FakeError;

impl Container for Fake {
    type Error = FakeError;

    fn id(&self) -> &str {
        "fake-1"
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<ExecOutput, FakeError> {
        let env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.record(format!("exec {} {}", request.label, request.argv.join(" ")));
        assert!(
            env.contains(&"LIFECYCLE_CONTAINER_ID=fake-1".to_owned()),
            "{env:?}"
        );
        let phase = request.label.split(':').next().unwrap();
        assert!(env.contains(&format!("LIFECYCLE_PHASE={phase}")), "{env:?}");
        let done = |status, output: &str| ExecOutput {
            status,
            timed_out: false,
            output: output.to_owned(),
        };
        match request.argv[0].as_str() {
            "ok" => Ok(done(ExitStatus::Exited(0), "")),
            "code" => {
                let code = self.codes.borrow_mut().pop_front().unwrap_or(0);
                Ok(done(ExitStatus::Exited(code), &format!("code {code}")))
            }
            "flaky" => {
                let key = request.argv.join(" ");
                let mut runs = self.runs.borrow_mut();
                let run = runs.entry(key).or_default();
                *run += 1;
                let failures: u32 = request.argv[1].parse().unwrap();
                let status = if *run <= failures { 1 } else { 0 };
                Ok(done(ExitStatus::Exited(status), ""))
            }
            "fail" => Ok(done(ExitStatus::Exited(3), "boom\n")),
            "take" => {
                sleep(Duration::from_secs(request.argv[1].parse().unwrap())).await;
                Ok(done(ExitStatus::Exited(0), ""))
            }
            "hang" => {
                sleep_until(request.deadline.expect("hang needs a deadline")).await;
                self.record(format!("killed {}", request.label));
                Ok(ExecOutput {
                    status: ExitStatus::Signaled(Signal::SIGKILL),
                    timed_out: true,
                    output: "partial\n".to_owned(),
                })
            }
            other => panic!("the fake does not know {other}"),
        }
    }

    async fn connect(&self, _addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(self.server.expect("no server")).await
    }

    fn has_exited(&self) -> bool {
        self.exited || self.exit.borrow().is_some()
    }

    async fn signal(&self, signal: Signal) -> Result<(), FakeError> {
        self.record(format!("signal {signal}"));
        match signal {
            Signal::SIGKILL => self.end(ExitStatus::Signaled(Signal::SIGKILL)),
            _ if self.traps_term => self.end(ExitStatus::Exited(0)),
            _ => {}
        }
        Ok(())
    }
}

/// Records a `once` key as succeeded when its step does.
struct FakeTicket {
    key: Option<String>,
    done: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl InitTicket for FakeTicket {
    fn finish(self: Box<Self>, succeeded: bool) -> io::Result<()> {
        if let Some(key) = self.key.filter(|_| succeeded) {
            self.done.lock().unwrap().push(key);
        }
        Ok(())
    }
}

/// Sidecars named `broken` cannot start.
impl InitHost for Fake {
    async fn start_sidecar(&self, init: &InitContainer) -> Result<(), FakeError> {
        self.record(format!("sidecar {}", init.name));
        match init.name.as_str() {
            "broken" => Err(FakeError),
            _ => Ok(()),
        }
    }

    /// Records `once` keys; other init containers always run.
    async fn begin_init(
        &self,
        init: &InitContainer,
    ) -> Result<Option<Box<dyn InitTicket>>, FakeError> {
        let key = init.once.as_ref().map(|once| once.key.clone());
        if key
            .as_ref()
            .is_some_and(|k| self.once_done.lock().unwrap().contains(k))
        {
            return Ok(None);
        }
        Ok(Some(Box::new(FakeTicket {
            key,
            done: self.once_done.clone(),
        })))
    }
}

fn plan(json: &str) -> Plan {
    Plan::from_json(json, &Defaults::default()).unwrap()
}

/// Runs the stop sequence of `json` against a fresh fake and returns what it saw.
async fn stop_events(json: &str) -> Vec<(u64, String)> {
    let fake = Fake::new();
    terminate(&fake, &plan(json)).await;
    // The sequence only, not the fake's end by SIGKILL.
    let mut events = fake.events();
    events.retain(|(_, e)| !e.starts_with("exit "));
    events
}

fn ev(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(t, s)| (*t, s.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn quick_prestop_then_signal_then_kill_at_the_end_of_grace() {
    assert_eq!(
        stop_events(r#"{"preStop": {"exec": {"command": ["take", "3"]}}, "terminationGracePeriodSeconds": 10}"#).await,
        ev(&[
            (0, "exec preStop take 3"),
            (3, "signal SIGTERM"),
            (10, "signal SIGKILL")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn prestop_outliving_grace_is_cut_and_kill_follows_two_seconds_later() {
    assert_eq!(
        stop_events(r#"{"preStop": {"exec": {"command": ["hang"]}}, "terminationGracePeriodSeconds": 5, "stopSignal": "SIGUSR1"}"#).await,
        ev(&[
            (0, "exec preStop hang"),
            (5, "killed preStop"),
            (5, "signal SIGUSR1"),
            (7, "signal SIGKILL")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn prestop_timeout_shorter_than_grace_applies() {
    assert_eq!(
        stop_events(r#"{"preStop": {"exec": {"command": ["hang"]}, "timeoutSeconds": 2}, "terminationGracePeriodSeconds": 30}"#).await,
        ev(&[
            (0, "exec preStop hang"),
            (2, "killed preStop"),
            (2, "signal SIGTERM"),
            (30, "signal SIGKILL")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn zero_grace_still_leaves_two_seconds_for_the_stop_signal() {
    assert_eq!(
        stop_events(r#"{"terminationGracePeriodSeconds": 0}"#).await,
        ev(&[(0, "signal SIGTERM"), (2, "signal SIGKILL")])
    );
}

#[tokio::test(start_paused = true)]
async fn prestop_sleep_is_bounded_by_grace() {
    assert_eq!(
        stop_events(
            r#"{"preStop": {"sleep": {"seconds": 3}}, "terminationGracePeriodSeconds": 10}"#
        )
        .await,
        ev(&[(3, "signal SIGTERM"), (10, "signal SIGKILL")])
    );

    assert_eq!(
        stop_events(
            r#"{"preStop": {"sleep": {"seconds": 60}}, "terminationGracePeriodSeconds": 4}"#
        )
        .await,
        ev(&[(4, "signal SIGTERM"), (6, "signal SIGKILL")])
    );
}

#[tokio::test(start_paused = true)]
async fn failing_prestop_does_not_stop_termination() {
    assert_eq!(
        stop_events(
            r#"{"preStop": {"exec": {"command": ["fail"]}}, "terminationGracePeriodSeconds": 3}"#
        )
        .await,
        ev(&[
            (0, "exec preStop fail"),
            (0, "signal SIGTERM"),
            (3, "signal SIGKILL")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_and_stop_at_the_first_failure() {
    let fake = Fake::new();
    let p = plan(
        r#"{"initContainers": [
            {"name": "one", "command": ["take", "1"]},
            {"name": "two", "command": ["fail"], "env": [{"name": "A", "value": "b"}]},
            {"name": "three", "command": ["ok"]}]}"#,
    );
    let failure = run_init_containers(&fake, &p.init_containers)
        .await
        .unwrap_err();
    assert_eq!(
        fake.events(),
        ev(&[(0, "exec init:one take 1"), (1, "exec init:two fail")])
    );
    assert_eq!(failure.exit_code(), 3);
    assert_eq!(failure.report.name.as_deref(), Some("two"));
    assert_eq!(failure.report.reason(), "FailedInitContainer");
    let text = failure.to_string();
    assert!(
        text.starts_with("init container init exec \"two\" failed: exited with exit code 3"),
        "{text}"
    );
    assert!(text.ends_with("output:\nboom"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn hung_init_container_is_killed_at_its_timeout() {
    let fake = Fake::new();
    let p = plan(
        r#"{"initContainers": [{"name": "slow", "command": ["hang"], "timeoutSeconds": 4}, {"name": "next", "command": ["ok"]}]}"#,
    );
    let failure = run_init_containers(&fake, &p.init_containers)
        .await
        .unwrap_err();
    assert_eq!(
        fake.events(),
        ev(&[(0, "exec init:slow hang"), (4, "killed init:slow")])
    );
    assert!(
        matches!(failure.report.result, Err(HookFailure::TimedOut(d)) if d == Duration::from_secs(4))
    );
    assert_eq!(failure.exit_code(), 137);
}

#[tokio::test(start_paused = true)]
async fn all_init_containers_succeeding_is_ok() {
    let fake = Fake::new();
    let p = plan(
        r#"{"initContainers": [{"name": "a", "command": ["ok"]}, {"name": "b", "command": ["ok"]}]}"#,
    );
    run_init_containers(&fake, &p.init_containers)
        .await
        .unwrap();
    assert_eq!(
        fake.events(),
        ev(&[(0, "exec init:a ok"), (0, "exec init:b ok")])
    );
}

#[tokio::test(start_paused = true)]
async fn failed_poststart_is_reported_with_its_reason_and_output() {
    let fake = Fake::new();
    let report = post_start(r#"{"postStart": {"exec": {"command": ["fail"]}}}"#, &fake).await;
    assert_eq!(report.reason(), "FailedPostStartHook");
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.output, "boom\n");
    assert!(matches!(
        report.result,
        Err(HookFailure::Exited(ExitStatus::Exited(3)))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_hook_cut_short_by_the_container_exit_is_not_a_failure() {
    let fake = Fake {
        exited: true,
        ..Fake::new()
    };
    let report = post_start(r#"{"postStart": {"exec": {"command": ["fail"]}}}"#, &fake).await;
    assert!(
        matches!(report.result, Err(HookFailure::ContainerExited)),
        "{report}"
    );
    assert!(!report.failed());

    let alive = Fake::new();
    let report = post_start(r#"{"postStart": {"exec": {"command": ["fail"]}}}"#, &alive).await;
    assert!(report.failed());
}

#[tokio::test(start_paused = true)]
async fn stages_run_in_order_and_a_stage_s_handlers_at_once() {
    let fake = Fake::new();
    let p = plan(
        r#"{"postStart": [[{"exec": {"command": ["take", "2"]}}, {"exec": {"command": ["take", "5"]}}],
                          [{"exec": {"command": ["ok"]}}]]}"#,
    );
    assert!(run_phase(&fake, Phase::PostStart, &p.post_start, None)
        .await
        .is_none());
    // Both of stage 1 start at 0; stage 2 only once the slower one finished, at 5.
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "exec postStart take 2"),
            (0, "exec postStart take 5"),
            (5, "exec postStart ok")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_stage_ends_the_phase() {
    let fake = Fake::new();
    let p = plan(
        r#"{"postStart": [[{"exec": {"command": ["fail"]}}, {"exec": {"command": ["ok"]}}], [{"exec": {"command": ["take", "1"]}}]]}"#,
    );
    let failed = run_phase(&fake, Phase::PostStart, &p.post_start, None)
        .await
        .unwrap();
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(
        fake.events(),
        ev(&[(0, "exec postStart fail"), (0, "exec postStart ok")])
    );
}

#[tokio::test(start_paused = true)]
async fn a_flaky_handler_succeeds_on_retry_after_its_backoff() {
    let fake = Fake::new();
    let p = plan(
        r#"{"postStart": {"exec": {"command": ["flaky", "2"]}, "retries": 3, "backoffSeconds": 4}}"#,
    );
    assert!(run_phase(&fake, Phase::PostStart, &p.post_start, None)
        .await
        .is_none());
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "exec postStart flaky 2"),
            (4, "exec postStart flaky 2"),
            (8, "exec postStart flaky 2")
        ])
    );
    // Retries run out: the last failure is the phase's.
    let fake = Fake::new();
    let p = plan(
        r#"{"postStart": {"exec": {"command": ["flaky", "5"]}, "retries": 1, "backoffSeconds": 0}}"#,
    );
    assert!(run_phase(&fake, Phase::PostStart, &p.post_start, None)
        .await
        .is_some());
    assert_eq!(fake.events().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_delay_comes_first_and_counts_in_the_grace_period() {
    assert_eq!(
        stop_events(r#"{"shutdownDelaySeconds": 3, "preStop": {"exec": {"command": ["ok"]}}, "terminationGracePeriodSeconds": 10}"#).await,
        ev(&[(3, "exec preStop ok"), (3, "signal SIGTERM"), (10, "signal SIGKILL")])
    );
    assert_eq!(
        stop_events(r#"{"shutdownDelaySeconds": 60, "preStop": {"exec": {"command": ["ok"]}}, "terminationGracePeriodSeconds": 5}"#).await,
        ev(&[(5, "signal SIGTERM"), (7, "signal SIGKILL")])
    );
}

#[tokio::test(start_paused = true)]
async fn health_checks_run_every_period_after_the_splay_and_map_exit_codes() {
    use lifecycle_hooks::health::{watch_health, Health};
    let fake = Fake::new();
    fake.codes.borrow_mut().extend([0, 1, 2, 3, 7, 0]);
    let p = plan(r#"{"healthCheck": {"exec": {"command": ["code"]}, "periodSeconds": 5}}"#);
    let mut seen = Vec::new();
    let watch = watch_health(
        &fake,
        p.health_check.as_ref().unwrap(),
        Duration::from_secs(2),
        |r| {
            seen.push((fake.start.elapsed().as_secs(), r.health, r.output.clone()));
        },
    );
    // It never ends by itself without a kill policy.
    assert!(tokio::time::timeout(Duration::from_secs(28), watch)
        .await
        .is_err());
    let statuses: Vec<(u64, Health)> = seen.iter().map(|(t, h, _)| (*t, *h)).collect();
    assert_eq!(
        statuses,
        [
            (2, Health::Ok),
            (7, Health::Warning),
            (12, Health::Critical),
            (17, Health::Unknown),
            (22, Health::Failed),
            (27, Health::Ok)
        ]
    );
    assert_eq!(seen[2].2, "code 2");
}

#[tokio::test(start_paused = true)]
async fn health_checks_stop_after_the_threshold_of_criticals_in_a_row() {
    use lifecycle_hooks::health::watch_health;
    let fake = Fake::new();
    fake.codes.borrow_mut().extend([2, 0, 2, 2]);
    let p = plan(
        r#"{"healthCheck": {"exec": {"command": ["code"]}, "periodSeconds": 1, "onCritical": "kill", "criticalThreshold": 2}}"#,
    );
    watch_health(
        &fake,
        p.health_check.as_ref().unwrap(),
        Duration::ZERO,
        |_| {},
    )
    .await;
    // The lone critical at 0 is forgiven by the ok at 1; the two at 2 and 3 end it.
    assert_eq!(fake.start.elapsed().as_secs(), 3);
}

async fn post_start(json: &str, fake: &Fake) -> lifecycle_hooks::HookReport {
    let p = plan(json);
    run_hook(fake, Phase::PostStart, &p.post_start[0][0], None).await
}

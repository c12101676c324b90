//! The per-container supervisor against the in-memory container, under a paused clock: every
//! decision of a container's life (the one `run` and the containerd task both use), each tested
//! once.

use std::time::Duration;

use lifecycle_hooks::container::ExitStatus;
use lifecycle_hooks::health::HealthResult;
use lifecycle_hooks::supervisor::{supervise, Ended, Outcome, Request, Supervised};
use lifecycle_hooks::{HookReport, Stages};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant};

use crate::{ev, plan, Fake, FakeError};

impl Supervised for Fake {
    async fn start_entrypoint(&self) -> Result<(), FakeError> {
        self.record("start".to_owned());
        Ok(())
    }

    async fn end_unstarted(&self, code: i32) -> Result<(), FakeError> {
        self.record(format!("end unstarted with {code}"));
        self.end(ExitStatus::Exited(code));
        Ok(())
    }

    async fn stop_sidecars(&self, deadline: Instant) {
        let at = deadline.duration_since(self.start).as_secs();
        self.record(format!("stop sidecars, SIGKILL at {at}"));
    }

    fn kill_sidecars(&self) {
        self.record("kill sidecars".to_owned());
    }

    async fn post_stop(&self, stages: &Stages) -> Option<HookReport> {
        self.record(format!("postStop ({} stages)", stages.len()));
        None
    }

    fn record_health(&self, _result: &HealthResult) {}

    type Changes = crate::reconfigure::FakeChanges;

    /// Watches from now on: changes scripted for earlier are never seen.
    fn watch(&self, paths: &[String]) -> Result<Self::Changes, FakeError> {
        self.record(format!("watch {}", paths.join(" ")));
        let now = self.start.elapsed().as_secs();
        let mut script = self.changes.borrow().clone();
        script.retain(|(at, _)| *at > now);
        Ok(crate::reconfigure::FakeChanges {
            start: self.start,
            script: script.into(),
        })
    }

    fn report(&self, message: &str) {
        let first = message.lines().next().unwrap_or_default();
        self.record(format!("report {first}"));
    }
}

/// A container's life under the supervisor: Start at 0, then `script` sends its requests at
/// the given seconds; the entrypoint exits by itself after `exits_after` seconds, if given.
pub(crate) async fn life(
    fake: &Fake,
    json: &str,
    exits_after: Option<u64>,
    script: Vec<(u64, Request<FakeError>)>,
) -> Outcome {
    let p = plan(json);
    let (requests, mut received) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let wait = Duration::from_secs(60);
    requests.send(Request::Start { reply, wait }).unwrap();
    let exit = fake.exit(exits_after.map(Duration::from_secs));
    let supervised = supervise(fake, &p, exit, &mut received, || {
        fake.record("started".into())
    });
    let driver = async {
        for (at, request) in script {
            tokio::time::sleep_until(fake.start + Duration::from_secs(at)).await;
            requests.send(request).unwrap();
        }
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        outcome = supervised => outcome,
        () = driver => unreachable!(),
    };
    assert!(
        answer.await.is_ok_and(|r| r.is_ok()),
        "Start was answered Ok"
    );
    outcome
}

#[tokio::test(start_paused = true)]
async fn a_stop_runs_prestop_then_the_stop_signal_then_sigkill_at_the_deadline() {
    let fake = Fake::new();
    let json =
        r#"{"preStop": {"exec": {"command": ["take", "3"]}}, "terminationGracePeriodSeconds": 10}"#;
    let outcome = life(&fake, json, None, vec![(1, Request::Stop(Signal::SIGTERM))]).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "start"),
            (0, "started"),
            (1, "exec preStop take 3"),
            (4, "signal SIGTERM"),
            (11, "signal SIGKILL"),
            (11, "exit 137"),
            (11, "stop sidecars, SIGKILL at 13"),
        ])
    );
    assert_eq!(outcome.code(), 137);
    assert!(outcome.entrypoint_started());
}

#[tokio::test(start_paused = true)]
async fn a_failed_poststart_runs_prestop_and_never_looks_like_success() {
    let mut fake = Fake::new();
    fake.traps_term = true;
    let json = r#"{"postStart": {"exec": {"command": ["fail"]}}, "preStop": {"exec": {"command": ["ok"]}}}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "start"),
            (0, "started"),
            (0, "exec postStart fail"),
            (0, "report FailedPostStartHook: postStart exec failed: exited with exit code 3 (0ms); output:"),
            (0, "exec preStop ok"),
            (0, "signal SIGTERM"),
            (0, "exit 0"),
            (0, "stop sidecars, SIGKILL at 30"),
        ])
    );
    // Its TERM trap exits 0, but a failed PostStart is a failure.
    assert_eq!(outcome.code(), 1);
    let failure = outcome.failure().unwrap();
    assert!(
        failure.starts_with("FailedPostStartHook: postStart exec failed"),
        "{failure}"
    );
    assert!(failure.ends_with("boom"), "the hook's output: {failure}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_poststart_without_prestop_sends_the_stop_signal_at_once() {
    let mut fake = Fake::new();
    fake.traps_term = true;
    let json = r#"{"postStart": {"exec": {"command": ["fail"]}}, "stopSignal": "SIGQUIT"}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    let events = fake.events();
    assert_eq!(events[4], (0, "signal SIGQUIT".to_owned()), "{events:?}");
    assert_eq!(outcome.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_ends_the_container_with_its_status_and_skips_poststop() {
    let fake = Fake::new();
    let json = r#"{"initContainers": [{"name": "one", "command": ["ok"]}, {"name": "two", "command": ["fail"]}],
                   "postStop": {"exec": {"command": ["ok"]}}}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "exec init:one ok"),
            (0, "exec init:two fail"),
            (0, "report init container init exec \"two\" failed: exited with exit code 3 (0ms); output:"),
            (0, "end unstarted with 3"),
            (0, "exit 3"),
            (0, "stop sidecars, SIGKILL at 30"),
        ])
    );
    assert!(matches!(outcome.ended, Ended::InitFailed(_)));
    assert_eq!(outcome.code(), 3, "the init container's own status");
    let failure = outcome.failure().unwrap();
    assert!(
        failure.starts_with("FailedInitContainer: init container"),
        "{failure}"
    );
    assert!(!outcome.entrypoint_started());
}

#[tokio::test(start_paused = true)]
async fn a_sidecar_that_cannot_start_ends_the_init_sequence() {
    let fake = Fake::new();
    let json = r#"{"initContainers": [
        {"name": "logger", "command": ["ok"], "restartPolicy": "Always"},
        {"name": "broken", "command": ["ok"], "restartPolicy": "Always"},
        {"name": "migrate", "command": ["ok"]}]}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    let Ended::InitFailed(failure) = &outcome.ended else {
        panic!("{outcome:?}");
    };
    assert_eq!(failure.report.handler, "sidecar");
    assert_eq!(failure.report.name.as_deref(), Some("broken"));
    assert_eq!(outcome.code(), 1, "it never ran: no status of its own");
    let events: Vec<String> = fake.events().into_iter().map(|(_, e)| e).collect();
    assert_eq!(events[..2], ["sidecar logger", "sidecar broken"]);
    assert!(
        !events.iter().any(|e| e.contains("migrate") || e == "start"),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_once_step_is_skipped_once_it_succeeded_for_its_key() {
    let json = r#"{"initContainers": [
        {"name": "migrate", "command": ["ok"], "once": {"path": "/data/.migrated", "key": "v1"}}]}"#;
    let first = Fake::new();
    life(&first, json, Some(1), vec![]).await;
    // A second container sharing the volume (the record).
    let mut second = Fake::new();
    second.once_done = first.once_done.clone();
    life(&second, json, Some(1), vec![]).await;
    let runs = |fake: &Fake| {
        fake.events()
            .into_iter()
            .filter(|(_, e)| e.starts_with("exec init:migrate"))
            .count()
    };
    assert_eq!((runs(&first), runs(&second)), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn the_entrypoint_exiting_during_prestop_cancels_it_and_sends_no_signal() {
    let fake = Fake::new();
    let json = r#"{"preStop": {"exec": {"command": ["hang"]}}, "terminationGracePeriodSeconds": 30,
                   "postStop": {"exec": {"command": ["ok"]}}}"#;
    let outcome = life(
        &fake,
        json,
        Some(5),
        vec![(2, Request::Stop(Signal::SIGTERM))],
    )
    .await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "start"),
            (0, "started"),
            (2, "exec preStop hang"),
            (5, "exit 0"),
            (5, "stop sidecars, SIGKILL at 32"),
            (5, "postStop (1 stages)"),
        ])
    );
    assert_eq!(outcome.code(), 0);
}

#[tokio::test(start_paused = true)]
async fn sigkill_during_prestop_cuts_it_short_and_kills_the_sidecars() {
    let fake = Fake::new();
    let json =
        r#"{"preStop": {"exec": {"command": ["hang"]}}, "terminationGracePeriodSeconds": 30}"#;
    let script = vec![(1, Request::Stop(Signal::SIGTERM)), (3, Request::Kill)];
    let exit_at_kill = async {
        // The front end's SIGKILL ends the entrypoint.
        sleep(Duration::from_secs(3)).await;
        tokio::task::yield_now().await;
        fake.end(ExitStatus::Signaled(Signal::SIGKILL));
    };
    let (outcome, ()) = tokio::join!(life(&fake, json, None, script), exit_at_kill);
    let events = fake.events();
    assert_eq!(
        events,
        ev(&[
            (0, "start"),
            (0, "started"),
            (1, "exec preStop hang"),
            (3, "kill sidecars"),
            (3, "exit 137"),
            (3, "stop sidecars, SIGKILL at 31"),
        ]),
        "no stop signal was sent and PreStop was not waited for"
    );
    assert_eq!(outcome.code(), 137);
}

#[tokio::test(start_paused = true)]
async fn repeated_stop_requests_run_prestop_once() {
    let mut fake = Fake::new();
    fake.traps_term = true;
    let json = r#"{"preStop": {"exec": {"command": ["take", "4"]}}}"#;
    let script = vec![
        (1, Request::Stop(Signal::SIGTERM)),
        (2, Request::Stop(Signal::SIGINT)),
        (3, Request::Stop(Signal::SIGTERM)),
    ];
    life(&fake, json, None, script).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "start"),
            (0, "started"),
            (1, "exec preStop take 4"),
            (5, "signal SIGTERM"),
            (5, "exit 0"),
            (5, "stop sidecars, SIGKILL at 31"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn poststop_runs_after_the_entrypoint_exits_by_itself() {
    let fake = Fake::new();
    let json = r#"{"postStop": {"exec": {"command": ["ok"]}}}"#;
    let outcome = life(&fake, json, Some(4), vec![]).await;
    let events: Vec<String> = fake.events().into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("postStop (1 stages)")
    );
    assert_eq!(outcome.code(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_init_containers_ends_them_without_starting_the_entrypoint() {
    let fake = Fake::new();
    let json = r#"{"initContainers": [{"name": "slow", "command": ["take", "60"]}],
                   "postStop": {"exec": {"command": ["ok"]}}}"#;
    let outcome = life(&fake, json, None, vec![(2, Request::Stop(Signal::SIGTERM))]).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "exec init:slow take 60"),
            (2, "signal SIGKILL"),
            (2, "exit 137"),
            (2, "stop sidecars, SIGKILL at 32"),
        ])
    );
    assert_eq!(outcome.code(), 128 + 15, "the stop request's signal");
    assert!(!outcome.entrypoint_started());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_container_is_stopped_and_says_why() {
    let mut fake = Fake::new();
    fake.traps_term = true;
    fake.codes.borrow_mut().extend([2, 2]);
    let json = r#"{"healthCheck": {"exec": {"command": ["code"]}, "periodSeconds": 1,
                   "onCritical": "kill", "criticalThreshold": 2}}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    assert_eq!(
        outcome.failure().as_deref(),
        Some("health check critical too many times in a row; stopping")
    );
    assert_eq!(
        outcome.code(),
        0,
        "the container's own status after its stop signal"
    );
    let events = fake.events();
    assert!(
        events.iter().any(|(_, e)| e == "signal SIGTERM"),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn start_is_answered_once_the_init_containers_are_done_or_at_its_wait() {
    for (take, wait, answered) in [(5, 60, 5), (100, 30, 30)] {
        let fake = Fake::new();
        let json =
            format!(r#"{{"initContainers": [{{"name": "slow", "command": ["take", "{take}"]}}]}}"#);
        let p = plan(&json);
        let (requests, mut received) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let wait = Duration::from_secs(wait);
        requests.send(Request::Start { reply, wait }).unwrap();
        // The entrypoint exits by itself a second after it started.
        let exit = fake.exit(Some(Duration::from_secs(take + 1)));
        let supervised = supervise(&fake, &p, exit, &mut received, || {});
        let answered_at = async {
            answer.await.unwrap().unwrap();
            fake.start.elapsed().as_secs()
        };
        let (outcome, at) = tokio::join!(supervised, answered_at);
        assert_eq!(at, answered, "init containers of {take} s, wait {wait:?}");
        assert!(outcome.entrypoint_started());
    }
}

//! Reconfigure runs under the supervisor, against scripted file changes and a paused clock:
//! the debounce, one run at a time, the run again after one, the watch's start after PostStart
//! and its end at a stop, and what a failure does.

use std::collections::VecDeque;
use std::time::Duration;

use lifecycle_hooks::reconfigure::Changes;
use lifecycle_hooks::supervisor::Request;
use nix::sys::signal::Signal;
use tokio::time::{sleep_until, Instant};

use crate::supervisor::life;
use crate::{ev, Fake};

/// The scripted changes from the moment the watch began.
pub struct FakeChanges {
    pub start: Instant,
    pub script: VecDeque<(u64, Vec<String>)>,
}

impl Changes for FakeChanges {
    async fn next(&mut self) -> Option<Vec<String>> {
        // A real watch goes on after the last change.
        let Some(&(at, _)) = self.script.front() else {
            return std::future::pending().await;
        };
        sleep_until(self.start + Duration::from_secs(at)).await;
        // Taken only once it is due: a dropped call loses nothing.
        self.script.pop_front().map(|(_, paths)| paths)
    }
}

fn changes(fake: &Fake, script: &[(u64, &[&str])]) {
    let script = script
        .iter()
        .map(|(at, paths)| (*at, paths.iter().map(|p| p.to_string()).collect()))
        .collect();
    fake.changes.replace(script);
}

/// The events with `reconfigure` in them, or `watch` (the watch's start).
fn reconfigure_events(fake: &Fake) -> Vec<(u64, String)> {
    let mut events = fake.events();
    events.retain(|(_, e)| e.contains("reconfigure") || e.starts_with("watch"));
    events
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_runs_the_handler_once_after_the_debounce() {
    let fake = Fake::new();
    changes(
        &fake,
        &[
            (10, &["/c/a"]),
            (11, &["/c/b"]),
            (12, &["/c/a"]),
            (20, &["/c/c"]),
        ],
    );
    let json =
        r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["ok"]}, "debounceSeconds": 2}}"#;
    life(&fake, json, Some(30), vec![]).await;
    assert_eq!(
        fake.events(),
        ev(&[
            (0, "start"),
            (0, "started"),
            (0, "watch /c"),
            (14, "exec reconfigure ok"),
            (22, "exec reconfigure ok"),
            (30, "exit 0"),
            (30, "stop sidecars, SIGKILL at 60"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn changes_during_a_run_make_one_more_run_after_it_never_two_at_once() {
    let fake = Fake::new();
    changes(
        &fake,
        &[
            (10, &["/c/a"]),
            (12, &["/c/b"]),
            (13, &["/c/c"]),
            (14, &["/c/d"]),
        ],
    );
    let json = r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["take", "5"]}, "debounceSeconds": 1}}"#;
    life(&fake, json, Some(30), vec![]).await;
    // 11 to 16, then once more (the three changes during it were quiet for 1s by then).
    assert_eq!(
        reconfigure_events(&fake),
        ev(&[
            (0, "watch /c"),
            (11, "exec reconfigure take 5"),
            (16, "exec reconfigure take 5"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn the_run_after_a_run_still_waits_for_the_quiet_time() {
    let fake = Fake::new();
    changes(&fake, &[(10, &["/c/a"]), (15, &["/c/b"])]);
    let json = r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["take", "3"]}, "debounceSeconds": 3}}"#;
    life(&fake, json, Some(30), vec![]).await;
    // The first run ends at 16; the change at 15 is quiet only at 18.
    assert_eq!(
        reconfigure_events(&fake),
        ev(&[
            (0, "watch /c"),
            (13, "exec reconfigure take 3"),
            (18, "exec reconfigure take 3"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn watching_starts_once_poststart_succeeded() {
    let fake = Fake::new();
    changes(&fake, &[(2, &["/c/early"]), (8, &["/c/late"])]);
    let json = r#"{"postStart": {"exec": {"command": ["take", "5"]}},
                   "reconfigure": {"paths": ["/c"], "exec": {"command": ["ok"]}}}"#;
    life(&fake, json, Some(20), vec![]).await;
    assert_eq!(
        reconfigure_events(&fake),
        ev(&[(5, "watch /c"), (9, "exec reconfigure ok")])
    );

    let failed = Fake::new();
    changes(&failed, &[(8, &["/c/late"])]);
    let json = r#"{"postStart": {"exec": {"command": ["fail"]}},
                   "reconfigure": {"paths": ["/c"], "exec": {"command": ["ok"]}}}"#;
    life(&failed, json, None, vec![]).await;
    assert_eq!(reconfigure_events(&failed), ev(&[]), "no watch at all");
}

#[tokio::test(start_paused = true)]
async fn no_change_no_run_and_a_stop_ends_the_watch() {
    let fake = Fake::new();
    // Pending at the stop (quiet only at 11), and during PreStop.
    changes(&fake, &[(9, &["/c/a"]), (12, &["/c/b"])]);
    let json = r#"{"preStop": {"exec": {"command": ["take", "5"]}}, "terminationGracePeriodSeconds": 10,
                   "reconfigure": {"paths": ["/c"], "exec": {"command": ["ok"]}, "debounceSeconds": 2}}"#;
    life(
        &fake,
        json,
        None,
        vec![(10, Request::Stop(Signal::SIGTERM))],
    )
    .await;
    assert_eq!(reconfigure_events(&fake), ev(&[(0, "watch /c")]));
    assert!(fake
        .events()
        .contains(&(10, "exec preStop take 5".to_owned())));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_reported_naming_the_changes_and_watching_goes_on() {
    let fake = Fake::new();
    let many: Vec<String> = (0..10).map(|i| format!("/c/{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    changes(&fake, &[(10, &["/c/a"]), (11, &["/c/a"]), (20, &many)]);
    let json = r#"{"reconfigure": {"paths": ["/c"], "exec": {"command": ["fail"]}}}"#;
    let outcome = life(&fake, json, Some(30), vec![]).await;
    let reports: Vec<_> = fake
        .events()
        .into_iter()
        .filter(|(_, e)| e.starts_with("report"))
        .collect();
    assert_eq!(
        reports,
        ev(&[
            (12, "report FailedReconfigureHook: reconfigure exec (changed: /c/a) failed: exited with exit code 3 (0ms); output:"),
            (21, "report FailedReconfigureHook: reconfigure exec (changed: /c/0, /c/1, /c/2, /c/3, /c/4, /c/5, /c/6, /c/7 and 2 more) failed: exited with exit code 3 (0ms); output:"),
        ])
    );
    assert_eq!(outcome.stopped_by, None);
    assert_eq!(outcome.code(), 0, "the entrypoint's own exit");
}

#[tokio::test(start_paused = true)]
async fn on_failure_stop_stops_the_container_as_a_stop_request_does() {
    let mut fake = Fake::new();
    fake.traps_term = true;
    changes(&fake, &[(10, &["/c/a"])]);
    let json = r#"{"preStop": {"exec": {"command": ["ok"]}},
                   "reconfigure": {"paths": ["/c"], "exec": {"command": ["fail"]}, "onFailure": "stop"}}"#;
    let outcome = life(&fake, json, None, vec![]).await;
    assert_eq!(
        fake.events()[3..],
        ev(&[
            (11, "exec reconfigure fail"),
            (11, "report FailedReconfigureHook: reconfigure exec (changed: /c/a) failed: exited with exit code 3 (0ms); output:"),
            (11, "report the reconfigure hook failed; stopping"),
            (11, "exec preStop ok"),
            (11, "signal SIGTERM"),
            (11, "exit 0"),
            (11, "stop sidecars, SIGKILL at 41"),
        ])
    );
    let why = outcome.stopped_by.unwrap();
    assert!(why.starts_with("FailedReconfigureHook: "), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_signal_handler_signals_the_container() {
    let fake = Fake::new();
    changes(&fake, &[(5, &["/c/a"])]);
    let json = r#"{"reconfigure": {"paths": ["/c"], "signal": {"name": "SIGHUP"}}}"#;
    life(&fake, json, Some(10), vec![]).await;
    assert!(fake.events().contains(&(6, "signal SIGHUP".to_owned())));
}

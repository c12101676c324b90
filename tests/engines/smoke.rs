//! Each scenario on each engine with plain runc: what an engine shows of a container when
//! nothing of this project is in the way, and what `lifecycle-runc` must reproduce.

use std::path::PathBuf;
use std::time::Duration;

use crate::docker::Docker;
use crate::host::{mounts_under, processes_mentioning, runc_path};
use crate::on_both_engines;
use crate::podman::Podman;
use crate::recorder::Recorder;
use crate::scenarios::{
    exec_in_detached, logs_after_exit, observe, rm_force, run_rm, stop_with_timeout, Engine,
    Outcome, Removed, Stopped, SLEEPER, TERM_IGNORED, TERM_TRAP,
};
use crate::{docker_ready, podman_ready};

fn outcome(stdout: &str, stderr: &str, code: i32) -> Outcome {
    Outcome {
        stdout: stdout.to_owned(),
        stderr: stderr.to_owned(),
        code,
    }
}

fn run_rm_passes_output_and_exit_code<E: Engine>(engine: &E) {
    assert_eq!(run_rm(engine), outcome("to-stdout\n", "to-stderr\n", 3));
}
on_both_engines!(run_rm, run_rm_passes_output_and_exit_code);

fn an_exited_container_keeps_its_logs_and_code<E: Engine>(engine: &E) {
    let exited = logs_after_exit(engine);
    assert_eq!(exited.wait, outcome("3\n", "", 0), "{}", engine.name());
    assert_eq!(exited.logs, outcome("to-stdout\n", "to-stderr\n", 0));
    assert_eq!(exited.exit_code, "3");
}
on_both_engines!(logs, an_exited_container_keeps_its_logs_and_code);

fn exec_passes_output_and_exit_code<E: Engine>(engine: &E) {
    assert_eq!(
        exec_in_detached(engine),
        outcome("exec-out\n", "exec-err\n", 5)
    );
}
on_both_engines!(exec, exec_passes_output_and_exit_code);

fn stop_lets_the_term_trap_finish<E: Engine>(engine: &E) {
    assert_eq!(
        stop_with_timeout(engine, TERM_TRAP, Duration::from_secs(2)),
        Stopped {
            order: vec!["term".to_owned()],
            stop_code: 0,
            exit_code: "0".to_owned(),
            before_timeout: true,
        }
    );
}
on_both_engines!(stop, stop_lets_the_term_trap_finish);

fn stop_kills_at_the_timeout<E: Engine>(engine: &E) {
    assert_eq!(
        stop_with_timeout(engine, TERM_IGNORED, Duration::from_secs(2)),
        Stopped {
            order: vec!["term".to_owned()],
            stop_code: 0,
            exit_code: "137".to_owned(),
            before_timeout: false,
        }
    );
}
on_both_engines!(stop_timeout, stop_kills_at_the_timeout);

fn rm_force_leaves_nothing<E: Engine>(engine: &E) {
    assert_eq!(
        rm_force(engine),
        Removed {
            rm_code: 0,
            listed: false,
            runc_state: false,
            monitors: Vec::new(),
        }
    );
}
on_both_engines!(rm_force, rm_force_leaves_nothing);

/// The comparison the `lifecycle-runc` tests make, proved with another runtime binary that
/// changes nothing (the recording wrapper around runc): the same scenarios observed through it
/// and through runc itself are equal.
fn a_wrapper_runtime_is_observed_as_runc<E: Engine>() {
    let dir = tempfile::Builder::new()
        .prefix("lcs-recorder-")
        .tempdir()
        .unwrap();
    let recorder = Recorder::new(dir.path());
    let scenarios = |engine: &E| {
        (
            run_rm(engine),
            logs_after_exit(engine),
            exec_in_detached(engine),
        )
    };
    assert_eq!(
        observe::<E, _>(&recorder.binary(), scenarios),
        observe::<E, _>(&runc_path(), scenarios)
    );
    assert!(!recorder.calls().is_empty(), "the wrapper was not used");
}

#[test]
fn podman_through_a_wrapper_runtime_is_observed_as_with_runc() {
    if podman_ready() {
        a_wrapper_runtime_is_observed_as_runc::<Podman>();
    }
}

#[test]
fn docker_through_a_wrapper_runtime_is_observed_as_with_runc() {
    if docker_ready() {
        a_wrapper_runtime_is_observed_as_runc::<Docker>();
    }
}

/// A test that fails half-way drops its harness with containers still running: nothing of them
/// or of the engine may be left (no monitor, runc state, mount, process or directory).
fn dropping_the_harness_leaves_nothing<E: Engine>() {
    let engine = E::start(&runc_path());
    let markers = engine.host_dir("markers");
    let volume = format!("{}:/markers", markers.display());
    let ids = [
        engine.run_detached(&[], SLEEPER),
        engine.run_detached(&["-v", &volume], TERM_IGNORED),
    ];
    let dir: PathBuf = engine.dir().to_owned();
    let states: Vec<PathBuf> = ids.iter().map(|id| engine.runc_state(id)).collect();
    assert!(states.iter().all(|s| s.exists()), "{states:?}");
    drop(engine);
    for id in &ids {
        assert_eq!(
            processes_mentioning(id),
            Vec::new(),
            "processes naming {id}"
        );
    }
    assert_eq!(processes_mentioning(&dir.display().to_string()), Vec::new());
    assert_eq!(mounts_under(&dir), Vec::<PathBuf>::new());
    for state in &states {
        assert!(!state.exists(), "runc state left at {state:?}");
    }
    assert!(!dir.exists(), "{dir:?} is left");
}

#[test]
fn dropping_a_podman_harness_leaves_nothing() {
    if podman_ready() {
        dropping_the_harness_leaves_nothing::<Podman>();
    }
}

#[test]
fn dropping_a_docker_harness_leaves_nothing() {
    if docker_ready() {
        dropping_the_harness_leaves_nothing::<Docker>();
    }
}

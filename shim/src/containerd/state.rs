//! The states of a task's process and the legal moves between them; an illegal move is a
//! FailedPrecondition for the caller, never a panic.

use std::fmt;

use containerd_shim::api::Status as ApiStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `runc create` done; the entrypoint has not started.
    Created,
    /// Start was called; init containers are running, the entrypoint has not started yet.
    Starting,
    Running,
    Paused,
    /// The process exited (or, for an init that failed its init containers, will never run).
    Stopped,
    /// Delete was called.
    Deleted,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} a process that is {state}")]
pub struct IllegalMove {
    pub action: &'static str,
    pub state: State,
}

impl State {
    pub fn start(self) -> Result<State, IllegalMove> {
        self.require("start", &[State::Created], State::Starting)
    }

    /// The entrypoint has started. A quick one may already have ended (and been recorded as
    /// stopped) while `runc start` returned: it stays stopped.
    pub fn started(self) -> Result<State, IllegalMove> {
        match self {
            State::Stopped => Ok(State::Stopped),
            _ => self.require("run", &[State::Starting], State::Running),
        }
    }

    /// `runc start` failed: the process is still only created.
    pub fn start_failed(self) -> Result<State, IllegalMove> {
        self.require("fail to start", &[State::Starting], State::Created)
    }

    /// Whether a process may be exec'd in: once Start was called and until it ends. Not a move.
    pub fn may_exec(self) -> Result<State, IllegalMove> {
        self.require("exec in", &[State::Starting, State::Running], self)
    }

    pub fn pause(self) -> Result<State, IllegalMove> {
        self.require("pause", &[State::Running], State::Paused)
    }

    pub fn resume(self) -> Result<State, IllegalMove> {
        self.require("resume", &[State::Paused], State::Running)
    }

    /// Any living state may end; a process only ends once.
    pub fn exit(self) -> Result<State, IllegalMove> {
        self.require(
            "end",
            &[
                State::Created,
                State::Starting,
                State::Running,
                State::Paused,
            ],
            State::Stopped,
        )
    }

    pub fn delete(self) -> Result<State, IllegalMove> {
        self.require("delete", &[State::Created, State::Stopped], State::Deleted)
    }

    /// Moves this state by `transition`, the one way a state changes: every move is checked
    /// against the state as it is at that moment, and applied once.
    pub fn apply(
        &mut self,
        transition: impl FnOnce(State) -> Result<State, IllegalMove>,
    ) -> Result<State, IllegalMove> {
        *self = transition(*self)?;
        Ok(*self)
    }

    fn require(
        self,
        action: &'static str,
        from: &[State],
        to: State,
    ) -> Result<State, IllegalMove> {
        if from.contains(&self) {
            Ok(to)
        } else {
            Err(IllegalMove {
                action,
                state: self,
            })
        }
    }

    /// What containerd's State call reports.
    pub fn api(self) -> ApiStatus {
        match self {
            State::Created => ApiStatus::CREATED,
            // containerd knows nothing of init containers: after Start the task is running.
            State::Starting | State::Running => ApiStatus::RUNNING,
            State::Paused => ApiStatus::PAUSED,
            State::Stopped | State::Deleted => ApiStatus::STOPPED,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legal_moves_follow_the_lifecycle() {
        let s = State::Created.start().unwrap();
        assert_eq!(s, State::Starting);
        let s = s.started().unwrap().pause().unwrap().resume().unwrap();
        assert_eq!(s, State::Running);
        let s = s.exit().unwrap();
        assert_eq!(s.delete().unwrap(), State::Deleted);
        assert_eq!(State::Created.delete().unwrap(), State::Deleted);
    }

    #[test]
    fn illegal_moves_are_errors_naming_the_state() {
        assert_eq!(
            State::Running.start().unwrap_err().to_string(),
            "cannot start a process that is running"
        );
        assert!(State::Stopped.exit().is_err());
        assert!(State::Running.delete().is_err());
        assert!(State::Created.pause().is_err());
        assert!(State::Deleted.exit().is_err());
        assert!(State::Created.may_exec().is_err());
        assert!(State::Stopped.may_exec().is_err());
        assert!(State::Running.start_failed().is_err());
    }

    #[test]
    fn a_start_racing_the_exit_and_a_failed_start_are_moves_of_their_own() {
        // The entrypoint ended while runc start returned: it stays stopped.
        assert_eq!(State::Stopped.started().unwrap(), State::Stopped);
        assert_eq!(State::Starting.start_failed().unwrap(), State::Created);
        assert_eq!(State::Starting.may_exec().unwrap(), State::Starting);
        assert_eq!(State::Running.may_exec().unwrap(), State::Running);
    }

    #[test]
    fn apply_changes_the_state_only_on_a_legal_move() {
        let mut state = State::Created;
        assert_eq!(state.apply(State::start).unwrap(), State::Starting);
        assert_eq!(state, State::Starting);
        assert!(state.apply(State::pause).is_err());
        assert_eq!(state, State::Starting, "an illegal move changes nothing");
    }
}

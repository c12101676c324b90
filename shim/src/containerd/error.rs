//! The task service's errors, and the one mapping from them to ttrpc status codes.

use containerd_shim::protos::ttrpc;

use super::console::ConsoleError;
use super::options::OptionsError;
use super::state::IllegalMove;
use super::stdio::StdioError;
use crate::bundle::BundleError;
use crate::os::runc::RuncError;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("invalid {what}: {message}")]
    InvalidArgument { what: &'static str, message: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Illegal(#[from] IllegalMove),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Shim { what: &'static str, message: String },
    #[error("{0} is not supported by this shim")]
    Unimplemented(&'static str),
}

/// The supervisor's errors are runc's (a failed `runc start`) or the shim's own.
impl From<crate::lifecycle::container::ContainerError> for TaskError {
    fn from(error: crate::lifecycle::container::ContainerError) -> TaskError {
        match error {
            crate::lifecycle::container::ContainerError::Runc(error) => TaskError::Runc(error),
            other => TaskError::Shim {
                what: "starting the entrypoint",
                message: other.to_string(),
            },
        }
    }
}

impl TaskError {
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> TaskError {
        move |source| TaskError::Io { what, source }
    }

    /// For errors of the containerd-shim crate's helpers.
    pub fn shim(what: &'static str) -> impl FnOnce(containerd_shim::Error) -> TaskError {
        move |error| TaskError::Shim {
            what,
            message: error.to_string(),
        }
    }

    pub fn code(&self) -> ttrpc::Code {
        match self {
            TaskError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            TaskError::InvalidArgument { .. } | TaskError::Bundle(_) | TaskError::Options(_) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            TaskError::Stdio(StdioError::Unsupported(_)) | TaskError::Unimplemented(_) => {
                ttrpc::Code::UNIMPLEMENTED
            }
            TaskError::Stdio(StdioError::Open { .. }) => ttrpc::Code::INVALID_ARGUMENT,
            TaskError::Illegal(_) => ttrpc::Code::FAILED_PRECONDITION,
            TaskError::Runc(_)
            | TaskError::Io { .. }
            | TaskError::Shim { .. }
            | TaskError::Console(_) => ttrpc::Code::INTERNAL,
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(error: TaskError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::state::State;

    #[test]
    fn errors_map_to_the_codes_containerd_expects() {
        let cases = [
            (TaskError::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (
                TaskError::AlreadyExists("x".into()),
                ttrpc::Code::ALREADY_EXISTS,
            ),
            (
                TaskError::Bundle(BundleError::NotADirectory { path: "/x".into() }),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                TaskError::Unimplemented("Checkpoint"),
                ttrpc::Code::UNIMPLEMENTED,
            ),
            (
                TaskError::Illegal(State::Running.delete().unwrap_err()),
                ttrpc::Code::FAILED_PRECONDITION,
            ),
        ];
        for (error, code) in cases {
            let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(error) else {
                panic!("not a status")
            };
            assert_eq!(status.code(), code);
        }
    }
}

//! TCP connections made from inside a container's network namespace.
//!
//! The socket is created on a short-lived thread that has joined the namespace; a socket keeps
//! the namespace it was created in, so it is then connected from the runtime's own thread. The
//! shim's threads never change namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Connects to `addr` as seen from the network namespace of process `pid`.
pub async fn connect(pid: i32, addr: SocketAddr) -> io::Result<TcpStream> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("netns-socket".to_owned())
        .spawn(move || {
            let socket = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| Socket::new(Domain::for_address(addr), Type::STREAM, None));
            let _ = tx.send(socket);
        })?;
    let socket = rx
        .await
        .map_err(|_| io::Error::other("the namespace thread ended without a socket"))??;
    socket.set_nonblocking(true)?;
    TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
}

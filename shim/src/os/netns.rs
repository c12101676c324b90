//! TCP connections made from inside a container's network namespace.
//!
//! A socket keeps the namespace it was created in, so only its creation needs the container's
//! namespace: the runtime's thread joins it, creates the socket and returns to its own
//! namespace at once, with nothing else running in between (no await). Connecting then
//! happens from the shim's own namespace as usual. A thread per connection would cost two
//! extra scheduler hand-offs per httpGet, which on a loaded node are most of its latency.

use std::fs::File;
use std::io;
use std::net::SocketAddr;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` as seen from the network namespace of process `pid`.
pub async fn connect(pid: i32, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket_in(pid, addr)?;
    socket.set_nonblocking(true)?;
    TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
}

/// A TCP socket for `addr` created in the network namespace of process `pid`.
fn socket_in(pid: i32, addr: SocketAddr) -> io::Result<Socket> {
    let own = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/proc/{pid}/ns/net"))?;
    setns(&target, CloneFlags::CLONE_NEWNET)?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None);
    // Returning to a namespace we hold open and were in a moment ago cannot fail for lack of
    // privilege; if it failed anyway, every later connection of this shim would be made in
    // the wrong namespace, so stopping is the only safe outcome.
    setns(&own, CloneFlags::CLONE_NEWNET)
        .expect("cannot return to the shim's own network namespace");
    socket
}

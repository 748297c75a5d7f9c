//! Small TCP/UDP echo servers and probes, each bounded in time.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::NetNs;

const MESSAGE: &[u8] = b"trove-isolate probe\n";
const POLL: Duration = Duration::from_millis(20);

/// A listener in a namespace, serving on a background thread until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Runs `body` on a thread until the server is dropped (`body` polls the stop flag).
    pub fn spawn(body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        spawn(body)
    }
}

/// Echoes one message per connection. Binds inside `ns` (the socket stays in it).
pub fn tcp_server(ns: &NetNs, addr: SocketAddr) -> Server {
    let listener = ns.run(|| {
        let l = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("tcp listen {addr} in {}: {e}", ns.name()));
        l.set_nonblocking(true).expect("non-blocking listener");
        l
    });
    spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 64];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
                    }
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    })
}

/// Echoes datagrams.
pub fn udp_server(ns: &NetNs, addr: SocketAddr) -> Server {
    let socket = ns.run(|| {
        let s = UdpSocket::bind(addr)
            .unwrap_or_else(|e| panic!("udp bind {addr} in {}: {e}", ns.name()));
        s.set_read_timeout(Some(POLL)).expect("udp timeout");
        s
    });
    spawn(move |stop| {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    })
}

fn spawn(body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    Server {
        stop,
        thread: Some(std::thread::spawn(move || body(flag))),
    }
}

/// Whether a TCP connection from `ns` (optionally from address `from`) to `to` completes and
/// echoes a message within `timeout`.
pub fn tcp_probe(ns: &NetNs, from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> bool {
    ns.run(|| {
        let attempt = || -> std::io::Result<bool> {
            let mut stream = match from {
                None => TcpStream::connect_timeout(&to, timeout)?,
                Some(ip) => connect_from(ip, to, timeout)?,
            };
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(MESSAGE)?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf)?;
            Ok(&buf[..n] == MESSAGE)
        };
        attempt().unwrap_or(false)
    })
}

/// A TCP connection bound to `from` first (std has no bind-before-connect).
fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // Wait for the handshake, bounded.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match stream.peer_addr() {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                if let Some(e) = stream.take_error()? {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Whether a datagram from `ns` to `to` is echoed within `timeout`.
pub fn udp_probe(ns: &NetNs, from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> bool {
    ns.run(|| {
        let attempt = || -> std::io::Result<bool> {
            let local = match (from, to) {
                (Some(ip), _) => SocketAddr::new(ip, 0),
                (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("v4 any"),
                (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("v6 any"),
            };
            let socket = UdpSocket::bind(local)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(MESSAGE, to)?;
            let mut buf = [0u8; 64];
            let (n, _) = socket.recv_from(&mut buf)?;
            Ok(&buf[..n] == MESSAGE)
        };
        attempt().unwrap_or(false)
    })
}

//! A fault-injection TCP proxy: put it between cachet and a real `redis-server` and
//! break the link on command. It listens on a free port and forwards bytes both ways;
//! the test switches faults at run time:
//!
//! - [`Fault::Pass`]: forward as received;
//! - [`Fault::Delay`]: sleep before forwarding each chunk, in both directions;
//! - [`Fault::Stall`]: stop forwarding in one or both directions, sockets kept open;
//! - [`Fault::CutAfter`]: forward that many more reply bytes (upstream to client), then
//!   reset the connection in the middle of the reply; one-shot (back to `Pass` after);
//! - [`Shim::drop_all`] closes every connection (FIN), [`Shim::reset_all`] resets them
//!   (RST, `SO_LINGER` 0), [`Shim::refuse`] closes the listening socket so that new
//!   connections are refused, and reopens it on the same port;
//! - [`Shim::retarget`] sends new connections to another server (a failover behind a
//!   DNS name or virtual IP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    Stall { to_server: bool, to_client: bool },
    CutAfter(usize),
}

#[derive(Debug, Clone)]
struct State {
    fault: Fault,
    refuse: bool,
    upstream: SocketAddr,
    /// Bumped to end every open connection; `reset` says how.
    kill: u64,
    reset: bool,
    stop: bool,
}

#[derive(Default, Debug)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
    /// Whether the listening socket is open now.
    listening: AtomicBool,
}

pub struct Shim {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    counts: Arc<Counts>,
    thread: Option<JoinHandle<()>>,
}

impl Shim {
    /// A shim in front of `upstream`, passing everything through.
    pub fn start(upstream: SocketAddr) -> Shim {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind shim");
        let addr = std_listener.local_addr().expect("shim addr");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let (state, _) = watch::channel(State {
            fault: Fault::Pass,
            refuse: false,
            upstream,
            kill: 0,
            reset: false,
            stop: false,
        });
        let state = Arc::new(state);
        let counts = Arc::new(Counts::default());
        let (s, c) = (state.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("shim runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("shim listener");
                accept_loop(Some(listener), addr, s, c).await;
            });
        });
        Shim {
            addr,
            state,
            counts,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give cachet as its upstream.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|s| s.fault = fault);
    }

    /// Closes every open connection (FIN on both sides).
    pub fn drop_all(&self) {
        self.state.send_modify(|s| {
            s.kill += 1;
            s.reset = false;
        });
    }

    /// Resets every open connection (RST on both sides).
    pub fn reset_all(&self) {
        self.state.send_modify(|s| {
            s.kill += 1;
            s.reset = true;
        });
    }

    /// Refuses new connections (the listening socket is closed) or accepts them again.
    /// Returns once the listening socket is closed or open, so that a connection made
    /// after this call is refused (or accepted) for certain.
    pub fn refuse(&self, refuse: bool) {
        self.state.send_modify(|s| s.refuse = refuse);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.counts.listening.load(Ordering::SeqCst) == refuse {
            assert!(
                std::time::Instant::now() < deadline,
                "shim: listener never {}",
                if refuse { "closed" } else { "reopened" }
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// New connections go to `upstream` from now on; open ones stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        self.state.send_modify(|s| s.upstream = upstream);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            s.stop = true;
            s.kill += 1;
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    counts: Arc<Counts>,
) {
    let mut rx = state.subscribe();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (refuse, stop) = {
            let s = rx.borrow_and_update();
            (s.refuse, s.stop)
        };
        if stop {
            break;
        }
        if refuse {
            listener = None;
        } else if listener.is_none() {
            listener = Some(rebind(addr).await);
        }
        counts.listening.store(listener.is_some(), Ordering::SeqCst);
        let Some(l) = listener.as_ref() else {
            let _ = rx.changed().await;
            continue;
        };
        // A refusal takes effect before anything more is accepted.
        tokio::select! {
            biased;
            _ = rx.changed() => {}
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let (upstream, kill) = {
                    let s = state.borrow();
                    (s.upstream, s.kill)
                };
                let (state, counts) = (state.clone(), counts.clone());
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    counts.open.fetch_add(1, Ordering::SeqCst);
                    pump(client, server, &state, kill).await;
                    counts.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
    conns.shutdown().await;
}

/// Reopens the listening socket on its old port. Tokio sets `SO_REUSEADDR`, so sockets
/// of earlier connections in `TIME_WAIT` do not block it, but while the port was closed
/// an outgoing connection may have been given it as its ephemeral port: wait for that
/// one to end rather than fail the test.
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tries < 250 => {
                tries += 1;
                if tries == 1 {
                    eprintln!("shim: rebinding {addr}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("shim: {addr} still taken after 5 s: {e}"),
        }
    }
}

/// Forwards one connection until either side closes or the test ends it.
async fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    state: &watch::Sender<State>,
    kill: u64,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rx = state.subscribe();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        let (fault, killed, reset) = {
            let s = rx.borrow_and_update();
            (s.fault, s.kill != kill, s.reset)
        };
        if killed {
            if reset {
                let _ = client.set_zero_linger();
                let _ = server.set_zero_linger();
            }
            return;
        }
        let (stall_up, stall_down) = match fault {
            Fault::Stall {
                to_server,
                to_client,
            } => (to_server, to_client),
            _ => (false, false),
        };
        let delay = match fault {
            Fault::Delay(d) => Some(d),
            _ => None,
        };
        // A fault set before the test sends its next bytes must apply to them: look at
        // the state first, so bytes already readable when it changed are not forwarded
        // under the old one.
        tokio::select! {
            biased;
            _ = rx.changed() => {}
            r = client.read(&mut up), if !stall_up => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            r = server.read(&mut down), if !stall_down => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let (allowed, cut) = cut_budget(state, n);
                if client.write_all(&down[..allowed]).await.is_err() {
                    return;
                }
                if cut {
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    return;
                }
            }
        }
    }
}

/// How many of `n` reply bytes may pass, and whether the connection is cut after them.
fn cut_budget(state: &watch::Sender<State>, n: usize) -> (usize, bool) {
    let mut out = (n, false);
    state.send_if_modified(|s| match s.fault {
        Fault::CutAfter(left) if n >= left => {
            out = (left, true);
            s.fault = Fault::Pass;
            true
        }
        Fault::CutAfter(left) => {
            s.fault = Fault::CutAfter(left - n);
            false
        }
        _ => false,
    });
    out
}

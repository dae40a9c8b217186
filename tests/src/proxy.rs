//! A TCP proxy on 127.0.0.1 in front of one sidecar's listening port, for
//! the partition tests: a link that the test can cut and heal, make lossy,
//! and give latency and jitter. Seeded, so that a plan repeats (timing
//! aside).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, RngExt, SeedableRng};

/// By default, links delay this share of the chunks they carry by up to
/// this many ms (latency and jitter): the two directions of a session then
/// do not move in lockstep.
pub const JITTER: (f64, u64) = (0.8, 80);

struct LinkState {
    name: String,
    /// Outside a lossy period: the share of chunks delayed, and by up to
    /// how many ms (latency and jitter).
    jitter: (f64, u64),
    upstream: SocketAddr,
    seed: u64,
    cut: AtomicBool,
    lossy: AtomicBool,
    closed: AtomicBool,
    /// Live connections: (downstream, upstream) clones, to shut them down.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    killed: AtomicU64,
}

impl LinkState {
    fn close_all(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for (down, up) in conns.values() {
            let _ = down.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
        }
        conns.len()
    }
}

/// A TCP proxy on 127.0.0.1 in front of one sidecar's listening port: the
/// dialing sidecar connects to `addr()`, the proxy connects to the
/// upstream and pumps bytes both ways. `cut()` closes every live
/// connection and closes new ones at once; `heal()` lets them through
/// again; `set_lossy(true)` refuses some connections, kills some live ones
/// and delays some bytes.
pub struct Link {
    state: Arc<LinkState>,
    addr: String,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    /// A link with the default latency and jitter ([`JITTER`]).
    pub fn new(name: &str, upstream: &str, seed: u64) -> Link {
        Link::with_jitter(name, upstream, seed, JITTER)
    }

    /// A link that delays `jitter.0` of the chunks it carries by up to
    /// `jitter.1` ms (outside a lossy period).
    pub fn with_jitter(name: &str, upstream: &str, seed: u64, jitter: (f64, u64)) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(LinkState {
            name: name.to_owned(),
            jitter,
            upstream: upstream.parse().expect("upstream address"),
            seed,
            cut: AtomicBool::new(false),
            lossy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            killed: AtomicU64::new(0),
        });
        let st = state.clone();
        let acceptor = thread::Builder::new()
            .name(format!("proxy {name}"))
            .spawn(move || accept_loop(listener, st))
            .unwrap();
        Link {
            state,
            addr,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Closes the live connections and refuses new ones; returns how many
    /// connections it closed.
    pub fn cut(&self) -> usize {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all()
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn set_lossy(&self, on: bool) {
        self.state.lossy.store(on, Ordering::SeqCst);
    }

    pub fn stats(&self) -> String {
        let s = &self.state;
        format!(
            "{}: {} connections, {} refused, {} killed while lossy",
            s.name,
            s.accepted.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.killed.load(Ordering::Relaxed)
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, st: Arc<LinkState>) {
    let mut rng = StdRng::seed_from_u64(st.seed);
    // Until the link is dropped; bounded anyway.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !st.closed.load(Ordering::SeqCst) && Instant::now() < deadline {
        let down = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => {
                sleep(Duration::from_millis(10));
                continue;
            }
        };
        if st.cut.load(Ordering::SeqCst)
            || (st.lossy.load(Ordering::SeqCst) && rng.random_bool(0.3))
        {
            st.refused.fetch_add(1, Ordering::Relaxed);
            drop(down);
            continue;
        }
        let _ = down.set_nonblocking(false);
        let Ok(up) = TcpStream::connect_timeout(&st.upstream, Duration::from_secs(2)) else {
            // The sidecar behind this link is down: the dialer sees a close.
            continue;
        };
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) = (
            down.try_clone(),
            up.try_clone(),
            down.try_clone(),
            up.try_clone(),
        ) else {
            continue;
        };
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = st.conns.lock().unwrap();
            if st.cut.load(Ordering::SeqCst) {
                st.refused.fetch_add(1, Ordering::Relaxed);
                let _ = down.shutdown(Shutdown::Both);
                let _ = up.shutdown(Shutdown::Both);
                continue;
            }
            conns.insert(id, (d3, u3));
        }
        st.accepted.fetch_add(1, Ordering::Relaxed);
        let (s1, s2) = (st.clone(), st.clone());
        let (seed1, seed2) = (rng.next_u64(), rng.next_u64());
        thread::spawn(move || pump(s1, id, down, u2, seed1));
        thread::spawn(move || pump(s2, id, up, d2, seed2));
    }
}

/// Copies bytes from `from` to `to` until either side closes; then closes
/// both (which ends the pump of the other direction too).
fn pump(st: Arc<LinkState>, id: u64, mut from: TcpStream, mut to: TcpStream, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if st.lossy.load(Ordering::SeqCst) {
            if rng.random_bool(0.01) {
                st.killed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if rng.random_bool(0.2) {
                sleep(Duration::from_millis(rng.random_range(5..=250)));
            }
        } else if st.jitter.0 > 0.0 && rng.random_bool(st.jitter.0) {
            sleep(Duration::from_millis(
                rng.random_range(1..=st.jitter.1.max(1)),
            ));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    st.conns.lock().unwrap().remove(&id);
}

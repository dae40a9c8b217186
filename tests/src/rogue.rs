//! The hostile-wire tests' scene (issue 13, docs/hostile.md): two real
//! sidecars in sync, A dialing B, and a rogue member: a client that speaks
//! the session protocol itself (Noise `XXpsk0` with snow, then messages it
//! frames by hand, docs/protocol.md), so that it can send what no lsync
//! sends. It joins the library the way a new device may (with the secret
//! and a key of its own, docs/security.md), then misbehaves.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::{json, Value as Json};

use crate::{
    device_id, join_library, library_id, new_secret, open, scalar, two_libraries, wait_for,
    Sidecar, TempDir, FAST_RETRY,
};

pub const ROGUE_SCHEMA: &str =
    "CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
     SELECT lsync_track('notes', 'shared');";

/// A and B with [`ROGUE_SCHEMA`], synced, A dialing B: B's listening port
/// is the target.
/// (Fields drop in order: the sidecars, which print their logs when a
/// test fails, before their directory.)
pub struct SyncedPair {
    pub node_a: Sidecar,
    pub node_b: Sidecar,
    pub a: Connection,
    pub b: Connection,
    pub secret: PathBuf,
    pub dir: TempDir,
}

/// How many notes of `c` have this body.
pub fn notes_named(c: &Connection, body: &str) -> i64 {
    c.query_row("SELECT count(*) FROM notes WHERE body = ?1", [body], |r| {
        r.get(0)
    })
    .unwrap()
}

impl SyncedPair {
    /// Starts B, then A dialing it, and waits until they sync. `b_extra`
    /// goes to B's command line.
    pub fn start(b_extra: &[&str]) -> SyncedPair {
        let (dir, a, b) = two_libraries(ROGUE_SCHEMA);
        let secret = new_secret(dir.path(), "secret");
        let (a_db, b_db) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let b_args: Vec<&str> = FAST_RETRY.iter().chain(b_extra).copied().collect();
        let node_b = Sidecar::start(dir.path(), "B", &b_db, &secret, &[], &b_args);
        let node_a = Sidecar::start(
            dir.path(),
            "A",
            &a_db,
            &secret,
            &[node_b.addr()],
            &FAST_RETRY,
        );
        let pair = SyncedPair {
            dir,
            a,
            b,
            secret,
            node_b,
            node_a,
        };
        pair.still_syncs("before");
        pair
    }

    /// A note written at A reaches B, and one written at B reaches A.
    pub fn still_syncs(&self, label: &str) {
        let (to_b, to_a) = (format!("{label}: A to B"), format!("{label}: B to A"));
        self.a
            .execute("INSERT INTO notes(body) VALUES (?1)", [&to_b])
            .unwrap();
        self.b
            .execute("INSERT INTO notes(body) VALUES (?1)", [&to_a])
            .unwrap();
        wait_for(
            &format!("'{label}' notes cross between A and B"),
            &[&self.node_a, &self.node_b],
            || notes_named(&self.b, &to_b) == 1 && notes_named(&self.a, &to_a) == 1,
        );
    }

    /// Waits until B's log says `needle`.
    pub fn b_logs(&self, needle: &str) {
        wait_for(&format!("B logs {needle:?}"), &[&self.node_b], || {
            self.node_b.log().contains(needle)
        });
    }

    /// A new database of the library: the rogue's device, with its own id.
    pub fn rogue_db(&self, name: &str) -> Connection {
        let c = open(&self.dir.path().join(format!("{name}.db")));
        c.execute_batch(ROGUE_SCHEMA).unwrap();
        join_library(&c, &library_id(&self.a));
        c
    }
}

/// One length-delimited frame (4-byte big-endian length, then the bytes).
pub fn length_framed(payload: &[u8]) -> Vec<u8> {
    [&(payload.len() as u32).to_be_bytes()[..], payload].concat()
}

/// Reads until the peer closes the connection (true, with what it sent)
/// or `limit` passes (false).
pub fn closed_within(s: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(
        limit.clamp(Duration::from_millis(1), Duration::from_millis(200)),
    ))
    .unwrap();
    let (start, mut got, mut buf) = (Instant::now(), Vec::new(), [0u8; 4096]);
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (true, got),
            Err(_) => {}
        }
        if start.elapsed() >= limit {
            return (false, got);
        }
    }
}

const NOISE: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// The plaintext of one transport frame: a Noise message less its tag.
const CHUNK: usize = 65535 - 16;

/// A member that speaks the protocol by hand.
pub struct Rogue {
    pub sock: TcpStream,
    noise: snow::TransportState,
    /// Its database: its device id, and changesets of its own to send.
    pub db: Connection,
    /// Plaintext received but not yet taken as whole messages.
    pending: Vec<u8>,
}

fn secret_bytes(path: &Path) -> [u8; 32] {
    let hex = std::fs::read_to_string(path).unwrap();
    let hex = hex.trim();
    std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
}

fn read_length_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut f)?;
    Ok(f)
}

impl Rogue {
    /// Connects to `addr` and runs the Noise handshake with the library
    /// secret and a fresh key. Nothing is sent after it.
    pub fn handshake(addr: &str, secret: &Path, db: Connection) -> Rogue {
        let params: snow::params::NoiseParams = NOISE.parse().unwrap();
        let preamble = [&b"lsyncv"[..], &5u32.to_be_bytes()].concat();
        let key = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap()
            .private;
        let mut hs = snow::Builder::new(params)
            .prologue(&preamble)
            .unwrap()
            .local_private_key(&key)
            .unwrap()
            .psk(0, &secret_bytes(secret))
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 65535];
        let n = hs.write_message(&[], &mut buf).unwrap();
        sock.write_all(&length_framed(&[&preamble[..], &buf[..n]].concat()))
            .unwrap();
        let reply = read_length_framed(&mut sock).unwrap();
        assert_eq!(reply[..10], preamble[..], "B's preamble");
        hs.read_message(&reply[10..], &mut buf).unwrap();
        let n = hs.write_message(&[], &mut buf).unwrap();
        sock.write_all(&length_framed(&buf[..n])).unwrap();
        Rogue {
            sock,
            noise: hs.into_transport_mode().unwrap(),
            db,
            pending: Vec::new(),
        }
    }

    /// The hello of its database's device.
    pub fn hello(&self) -> Json {
        json!({
            "type": "hello",
            "protocol": 5,
            "library_id": library_id(&self.db),
            "device_id": device_id(&self.db),
            "schema": scalar::<String>(&self.db, "SELECT lsync_schema_fingerprint()"),
            "head": 0,
        })
    }

    /// Handshakes and exchanges hellos: a member of the library from now.
    pub fn join(addr: &str, secret: &Path, db: Connection) -> Rogue {
        let mut r = Rogue::handshake(addr, secret, db);
        let hello = r.hello();
        r.send(&hello, &[]);
        let reply = r.recv_until(|m| m["type"] == "hello" || m["type"] == "error");
        assert_eq!(reply.0["type"], "hello", "admitted: {}", reply.0);
        r
    }

    /// Encrypts `plain` (at most one chunk) into one frame, and sends it.
    pub fn send_frame(&mut self, plain: &[u8]) -> std::io::Result<()> {
        let mut out = vec![0u8; 65535];
        let n = self.noise.write_message(plain, &mut out).unwrap();
        self.sock.write_all(&length_framed(&out[..n]))
    }

    /// A message as its plaintext: total length, header length, header,
    /// payload (docs/protocol.md).
    pub fn plaintext(header: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = (4 + header.len() + payload.len()) as u32;
        [
            &total.to_le_bytes()[..],
            &(header.len() as u32).to_le_bytes(),
            header,
            payload,
        ]
        .concat()
    }

    /// Sends the plaintext of a message, cut into frames.
    pub fn send_plain(&mut self, plain: &[u8]) -> std::io::Result<()> {
        for chunk in plain.chunks(CHUNK) {
            self.send_frame(chunk)?;
        }
        Ok(())
    }

    /// Sends one message; panics if the connection fails.
    pub fn send(&mut self, header: &Json, payload: &[u8]) {
        let plain = Rogue::plaintext(header.to_string().as_bytes(), payload);
        self.send_plain(&plain).expect("send a message to B");
    }

    /// The next whole message from B, within the socket's read timeout.
    pub fn recv(&mut self) -> Heard {
        let mut buf = vec![0u8; 65535];
        loop {
            if self.pending.len() >= 4 {
                let total = u32::from_le_bytes(self.pending[..4].try_into().unwrap()) as usize;
                if self.pending.len() >= 4 + total {
                    let msg: Vec<u8> = self.pending.drain(..4 + total).collect();
                    let hlen = u32::from_le_bytes(msg[4..8].try_into().unwrap()) as usize;
                    let header = serde_json::from_slice(&msg[8..8 + hlen]).unwrap();
                    return Heard::Msg(header, msg[8 + hlen..].to_vec());
                }
            }
            let f = match read_length_framed(&mut self.sock) {
                Ok(f) => f,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Heard::Silent
                }
                Err(_) => return Heard::Closed,
            };
            let n = self.noise.read_message(&f, &mut buf).unwrap();
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads messages until one satisfies `want`; panics if B closes or
    /// falls silent first.
    pub fn recv_until(&mut self, mut want: impl FnMut(&Json) -> bool) -> (Json, Vec<u8>) {
        loop {
            match self.recv() {
                Heard::Msg(m, payload) if want(&m) => return (m, payload),
                Heard::Msg(..) => {}
                other => panic!("B ended or fell silent first: {other:?}"),
            }
        }
    }

    /// Reads (and drops) what B sends until it closes the connection:
    /// whether it did within `limit`, and the error message it sent last.
    pub fn ended_by_b(&mut self, limit: Duration) -> (bool, Option<String>) {
        let start = Instant::now();
        let mut error = None;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while start.elapsed() < limit {
            match self.recv() {
                Heard::Msg(m, _) if m["type"] == "error" => {
                    error = m["message"].as_str().map(String::from)
                }
                Heard::Closed => return (true, error),
                _ => {}
            }
        }
        (false, error)
    }
}

/// What [`Rogue::recv`] heard.
#[derive(Debug)]
pub enum Heard {
    Msg(Json, Vec<u8>),
    Closed,
    Silent,
}

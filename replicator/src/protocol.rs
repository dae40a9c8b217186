//! The session protocol between two replicators: length-delimited frames
//! (tokio-util), encrypted and mutually authenticated with Noise
//! `XXpsk0`: each device's static key, and the library secret as the
//! pre-shared key (snow), carrying JSON-headed
//! messages whose payload, when there is one, is a changeset BLOB.
//! docs/protocol.md describes every message.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts, FramedWrite, LengthDelimitedCodec};

/// Bumped on any incompatible change to the messages below, or to the
/// changesets they carry (3: the merge op; 5: device keys, `XXpsk0`, the
/// member list and the library secret's rotation).
pub const PROTOCOL_VERSION: u32 = 5;
/// The Noise protocol of a session (public for the frame_codec fuzz target,
/// which plays the initiator with snow itself to encrypt crafted frames).
pub const NOISE_PARAMS: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// A Noise message is at most 65535 bytes; larger frames are refused.
pub const MAX_FRAME: usize = 65535;
const TAG: usize = 16;
const CHUNK: usize = MAX_FRAME - TAG;
/// Largest message (header + payload) a peer may send: a changeset of one
/// row this large, compressed, is the largest that travels. Changesets are
/// cut into pieces of about `store::PIECE_BYTES` of rows, so only a single
/// row larger than that makes a message of more than a few MiB.
pub const MAX_MESSAGE: usize = 256 << 20;
/// Largest JSON header: a member list of the 100,000 devices that
/// `lsync_members_merge` takes at most (about 130 bytes each) fits.
pub const MAX_HEADER: usize = 16 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication failed: the peer does not hold this library's secret ({0})")]
    Auth(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("protocol mismatch: {0}")]
    Version(String),
}

type R<T> = Result<T, ProtoError>;

/// The messages of a session. Each travels as a JSON header, optionally
/// followed by a binary payload (a changeset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// The first message of a dialer that joins the peer's library
    /// (`--join`): send your hello first, so that mine names the library
    /// I join. Any other dialer's first message is its hello.
    Join,
    /// First message both ways (the dialer's first, or after its `Join`);
    /// any mismatch ends the session.
    Hello {
        protocol: u32,
        library_id: String,
        device_id: String,
        /// Fingerprint of the tracked tables (names, modes, columns).
        schema: String,
        /// The sender's newest change cursor.
        head: i64,
    },
    /// Change request: send me your changes after `since`.
    Pull {
        since: i64,
        max: u32,
    },
    /// Changes after `from` up to `to` (payload: one changeset). `has_more`
    /// says whether the sender holds more right now. Sent as the answer to a
    /// Pull, and pushed unasked when new local commits appear.
    Changes {
        from: i64,
        to: i64,
        count: u64,
        has_more: bool,
    },
    /// The receiver has durably applied the sender's changes up to `cursor`.
    Ack {
        cursor: i64,
    },
    /// The sender has changes up to `head` (after a bulk write): pull at your pace.
    Notify {
        head: i64,
    },
    /// Answer to a Pull from a peer that is far behind: a snapshot file of
    /// `size` bytes is ready; it holds the sender's changes up to `cursor`.
    SnapshotOffer {
        id: String,
        size: u64,
        chunk_size: u64,
        /// xxh3-128 (hex) of the whole file.
        checksum: String,
        cursor: i64,
        rows: i64,
    },
    /// Send snapshot `id` from byte `offset` on (a multiple of chunk_size).
    SnapshotGet {
        id: String,
        offset: u64,
    },
    /// One chunk (payload: the zstd-compressed bytes `offset..offset+len`).
    SnapshotChunk {
        id: String,
        offset: u64,
        len: u64,
        /// xxh3-64 (hex) of the uncompressed bytes.
        checksum: String,
    },
    /// The sender no longer has snapshot `id`: pull again.
    SnapshotMissing {
        id: String,
    },
    /// The receiver holds the sender's changes after its watermark: the
    /// newest HLC in them is `ahead_ms` ahead of its clock, more than its
    /// `max_drift_ms`. It accepts them at `until_ms` (unix ms, its clock)
    /// and pulls them again then. Not an error: the session goes on.
    Held {
        ahead_ms: i64,
        until_ms: i64,
    },
    /// The library's members as the sender knows them (after the hellos,
    /// and whenever they change). The receiver merges them: a first
    /// binding of a device to a key is permanent, revocation is terminal.
    Members {
        members: Vec<MemberEntry>,
    },
    /// The sender's newest library secret (64 hex characters), sent only
    /// to a peer proven to be an active member. The receiver keeps it with
    /// its older ones; the newest is the only one that admits a new device.
    Secret {
        epoch: i64,
        secret: String,
    },
    Heartbeat,
    /// A fatal problem; the sender closes the session after it.
    Error {
        message: String,
    },
}

/// One member of the library, as `Msg::Members` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub device: String,
    /// The device's static public key (64 hex characters); None when the
    /// sender knows the device only as revoked.
    pub pubkey: Option<String>,
    /// `active` or `revoked`.
    pub status: String,
}

/// A library secret (32 bytes): the Noise pre-shared key.
pub type Secret = [u8; 32];

/// What one side brings to a handshake: its static key and the library
/// secrets it knows, in the order to try them.
pub struct Keys<'a> {
    /// This device's static X25519 private key.
    pub private: &'a [u8; 32],
    /// A dialer uses the first; a listener accepts any of them.
    pub secrets: &'a [Secret],
}

/// What the handshake proved about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The peer's static public key, which it proved it holds.
    pub remote_static: [u8; 32],
    /// Which of `Keys::secrets` the peer holds.
    pub secret: usize,
}

/// A new static key pair (private, public).
pub fn generate_keypair() -> Result<([u8; 32], [u8; 32]), ProtoError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| ProtoError::Auth(format!("noise parameters: {e:?}")))?;
    let k = snow::Builder::new(params)
        .generate_keypair()
        .map_err(|e| ProtoError::Auth(format!("{e:?}")))?;
    let (mut private, mut public) = ([0u8; 32], [0u8; 32]);
    if k.private.len() != 32 || k.public.len() != 32 {
        return Err(ProtoError::Auth("unexpected key size".into()));
    }
    private.copy_from_slice(&k.private);
    public.copy_from_slice(&k.public);
    Ok((private, public))
}

/// Each side's first handshake frame starts with this, then the protocol
/// version (u32, big-endian): a peer of another version is told so, and an
/// older one (no preamble) is named as such, instead of failing Noise.
const MAGIC: &[u8; 6] = b"lsyncv";
const PREAMBLE: usize = 10;

fn preamble() -> [u8; PREAMBLE] {
    let mut p = [0u8; PREAMBLE];
    p[..6].copy_from_slice(MAGIC);
    p[6..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// The version a frame's preamble names, and the rest of the frame.
fn split_preamble(frame: &[u8]) -> R<&[u8]> {
    if frame.len() < PREAMBLE || &frame[..6] != MAGIC {
        return Err(ProtoError::Version(
            "the peer speaks an lsync protocol older than 5 (Noise NNpsk0, no device keys); \
             upgrade it"
                .into(),
        ));
    }
    let v = u32::from_be_bytes([frame[6], frame[7], frame[8], frame[9]]);
    if v != PROTOCOL_VERSION {
        return Err(ProtoError::Version(format!(
            "the peer speaks protocol version {v}, this side speaks {PROTOCOL_VERSION}; \
             run the same lsync version on both"
        )));
    }
    Ok(&frame[PREAMBLE..])
}

fn noise_state(keys: &Keys, secret: &Secret, initiator: bool) -> R<snow::HandshakeState> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| ProtoError::Auth(format!("noise parameters: {e:?}")))?;
    let pre = preamble();
    let b = snow::Builder::new(params)
        .prologue(&pre)
        .and_then(|b| b.local_private_key(keys.private))
        .and_then(|b| b.psk(0, secret))
        .map_err(auth)?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .map_err(auth)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// The sending half of an authenticated session.
pub struct Sender<W> {
    frames: FramedWrite<W, LengthDelimitedCodec>,
    noise: std::sync::Arc<std::sync::Mutex<snow::TransportState>>,
}

/// The receiving half of an authenticated session.
pub struct Receiver<Rd> {
    frames: Framed<Rd, LengthDelimitedCodec>,
    noise: std::sync::Arc<std::sync::Mutex<snow::TransportState>>,
    /// Bytes read off the wire so far (frames and their length prefixes).
    pub wire_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The two halves of a session and what its handshake proved.
pub type Halves<S> = (
    Sender<tokio::io::WriteHalf<S>>,
    Receiver<tokio::io::ReadHalf<S>>,
    Authenticated,
);

/// Runs the Noise handshake over `io` and splits the session in two halves.
/// `XXpsk0`: both sides prove their static key, and the library secret is
/// mixed in before anything else, so a peer without it fails on the first
/// message and learns nothing, not even a public key.
pub async fn handshake<S>(io: S, keys: &Keys<'_>, initiator: bool) -> R<Halves<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(io, codec());
    let run = async {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut scratch = vec![0u8; MAX_FRAME];
        let mut hello_frame = |hs: &mut snow::HandshakeState| -> R<Bytes> {
            let n = hs.write_message(&[], &mut buf).map_err(auth)?;
            let mut out = preamble().to_vec();
            out.extend_from_slice(&buf[..n]);
            Ok(Bytes::from(out))
        };
        // XXpsk0: -> psk, e   <- e, ee, s, es   -> s, se
        let (hs, secret) = if initiator {
            let first = keys
                .secrets
                .first()
                .ok_or_else(|| ProtoError::Auth("no library secret".into()))?;
            let mut hs = noise_state(keys, first, true)?;
            let f = hello_frame(&mut hs)?;
            framed.send(f).await?;
            let reply = next_frame(&mut framed).await?;
            hs.read_message(split_preamble(&reply)?, &mut scratch)
                .map_err(auth)?;
            let n = hs.write_message(&[], &mut buf).map_err(auth)?;
            framed.send(Bytes::copy_from_slice(&buf[..n])).await?;
            (hs, 0)
        } else {
            let first = next_frame(&mut framed).await?;
            let msg = match split_preamble(&first) {
                Ok(m) => m,
                Err(e) => {
                    // An lsync of another version is told which one this
                    // side speaks; anything else gets nothing.
                    if first.starts_with(MAGIC) {
                        let _ = framed.send(Bytes::copy_from_slice(&preamble())).await;
                    }
                    return Err(e);
                }
            };
            // The first message is sealed with the dialer's secret: the
            // one that opens it is the one the dialer holds.
            let mut found = None;
            for (i, secret) in keys.secrets.iter().enumerate() {
                let mut hs = noise_state(keys, secret, false)?;
                if hs.read_message(msg, &mut scratch).is_ok() {
                    found = Some((hs, i));
                    break;
                }
            }
            let (mut hs, i) = found.ok_or_else(|| {
                ProtoError::Auth("the first handshake message opens with no known secret".into())
            })?;
            let f = hello_frame(&mut hs)?;
            framed.send(f).await?;
            let last = next_frame(&mut framed).await?;
            hs.read_message(&last, &mut scratch).map_err(auth)?;
            (hs, i)
        };
        let remote: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| ProtoError::Auth("the peer sent no static key".into()))?;
        let t = hs.into_transport_mode().map_err(auth)?;
        Ok::<_, ProtoError>((t, remote, secret))
    };
    let (transport, remote_static, secret) = tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| ProtoError::Timeout)??;
    let noise = std::sync::Arc::new(std::sync::Mutex::new(transport));
    let parts = framed.into_parts();
    let (rd, wr) = tokio::io::split(parts.io);
    // Bytes read past the handshake (the peer's first message, when both
    // came in one read) must be decoded before the next read: built from
    // parts with a non-empty buffer, the reader starts by decoding it.
    let mut read_parts = FramedParts::new::<Bytes>(rd, codec());
    read_parts.read_buf = parts.read_buf;
    let frames_in = Framed::from_parts(read_parts);
    Ok((
        Sender {
            frames: FramedWrite::new(wr, codec()),
            noise: noise.clone(),
        },
        Receiver {
            frames: frames_in,
            noise,
            wire_bytes: Default::default(),
        },
        Authenticated {
            remote_static,
            secret,
        },
    ))
}

fn auth(e: snow::Error) -> ProtoError {
    ProtoError::Auth(format!("{e:?}"))
}

async fn next_frame<S: StreamExt<Item = std::io::Result<BytesMut>> + Unpin>(
    s: &mut S,
) -> R<BytesMut> {
    match s.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(ProtoError::Malformed(format!("bad frame: {e}")))
        }
        Some(Err(e)) => Err(ProtoError::Io(e)),
        None => Err(ProtoError::Closed),
    }
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    /// Sends one message (and its payload), split into encrypted frames.
    pub async fn send(&mut self, msg: &Msg, payload: &[u8]) -> R<()> {
        let header = serde_json::to_vec(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
        let total = 4 + header.len() + payload.len();
        if total > MAX_MESSAGE {
            return Err(ProtoError::TooLarge(total));
        }
        // The frames are cut from the prefix, header and payload as they
        // are: the payload is never copied into one plain buffer.
        let mut prefix = Vec::with_capacity(8 + header.len());
        prefix.extend_from_slice(&(total as u32).to_le_bytes());
        prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&header);
        // Buffers as large as the first frame needs, not a whole frame: a
        // small message (most are) zeroes a few bytes, not 64 KiB.
        let first = (prefix.len() + payload.len()).min(CHUNK);
        let mut out = vec![0u8; first + TAG];
        let mut chunk = Vec::with_capacity(first);
        let mut rest: [&[u8]; 2] = [&prefix, payload];
        let mut unflushed = 0;
        loop {
            chunk.clear();
            for part in &mut rest {
                let take = (CHUNK - chunk.len()).min(part.len());
                chunk.extend_from_slice(&part[..take]);
                *part = &part[take..];
            }
            if chunk.is_empty() {
                break;
            }
            let n = {
                let mut noise = self.noise.lock().map_err(|_| ProtoError::Closed)?;
                noise.write_message(&chunk, &mut out).map_err(auth)?
            };
            self.frames.feed(Bytes::copy_from_slice(&out[..n])).await?;
            unflushed += 1;
            // Written out every 16 frames (1 MiB): a large message is never
            // held whole, encrypted, in the write buffer.
            if unflushed == 16 {
                SinkExt::<Bytes>::flush(&mut self.frames).await?;
                unflushed = 0;
            }
        }
        SinkExt::<Bytes>::flush(&mut self.frames).await?;
        Ok(())
    }
}

impl<Rd: AsyncRead + Unpin> Receiver<Rd> {
    /// Receives one message and its payload. Garbage, oversized frames,
    /// frames that fail authentication and truncated messages are errors.
    pub async fn recv(&mut self) -> R<(Msg, Vec<u8>)> {
        let mut plain = Vec::new();
        let mut want: Option<usize> = None;
        // Grown to the largest frame read (the plaintext is shorter): a
        // small message zeroes a few bytes, not 64 KiB.
        let mut buf = Vec::new();
        loop {
            let frame = next_frame(&mut self.frames).await?;
            self.wire_bytes
                .fetch_add(frame.len() as u64 + 4, std::sync::atomic::Ordering::Relaxed);
            if buf.len() < frame.len() {
                buf.resize(frame.len(), 0);
            }
            let n = {
                let mut noise = self.noise.lock().map_err(|_| ProtoError::Closed)?;
                noise.read_message(&frame, &mut buf).map_err(auth)?
            };
            if let Some(w) = want {
                // Room grows with what arrived (never by what the prefix
                // claims alone), and stops at the message's size: no
                // doubling past it.
                let room = w.min(plain.len().saturating_mul(2).max(1 << 20));
                if room > plain.capacity() && plain.len() + n <= w {
                    plain.reserve_exact(room - plain.len());
                }
            }
            plain.extend_from_slice(&buf[..n]);
            if want.is_none() && plain.len() >= 4 {
                let total = u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
                if total > MAX_MESSAGE {
                    return Err(ProtoError::TooLarge(total));
                }
                want = Some(total + 4);
            }
            if plain.len() >= 8 {
                let hlen = u32::from_le_bytes([plain[4], plain[5], plain[6], plain[7]]) as usize;
                if hlen > MAX_HEADER {
                    return Err(ProtoError::Malformed(format!(
                        "a header of {hlen} bytes, above the limit of {MAX_HEADER}"
                    )));
                }
            }
            match want {
                Some(w) if plain.len() == w => break,
                Some(w) if plain.len() > w => {
                    return Err(ProtoError::Malformed("frame overruns the message".into()))
                }
                _ => {}
            }
        }
        let body = &plain[4..];
        let hlen = body
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| ProtoError::Malformed("short message".into()))?;
        let header = body
            .get(4..4 + hlen)
            .ok_or_else(|| ProtoError::Malformed("header overruns the message".into()))?;
        let msg: Msg =
            serde_json::from_slice(header).map_err(|e| ProtoError::Malformed(e.to_string()))?;
        // The payload stays where it arrived: the prefix and header go.
        plain.drain(..8 + hlen);
        Ok((msg, plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device's keys holding `secret`.
    fn device(secret: Secret) -> ([u8; 32], Vec<Secret>) {
        (generate_keypair().unwrap().0, vec![secret])
    }

    async fn pair(a: Secret, b: Secret) -> (R<()>, R<(Msg, Vec<u8>)>) {
        let (x, y) = tokio::io::duplex(1 << 20);
        let (ka, kb) = (device(a), device(b));
        let client = async move {
            let keys = Keys {
                private: &ka.0,
                secrets: &ka.1,
            };
            let (mut tx, _rx, _) = handshake(x, &keys, true).await?;
            tx.send(&Msg::Ack { cursor: 7 }, &vec![5u8; 200_000]).await
        };
        let server = async move {
            let keys = Keys {
                private: &kb.0,
                secrets: &kb.1,
            };
            let (_tx, mut rx, _) = handshake(y, &keys, false).await?;
            rx.recv().await
        };
        tokio::join!(client, server)
    }

    /// The responder's first message can arrive in the same read as its
    /// handshake reply (a busy initiator reads both at once). It must be
    /// delivered at once, not when the next bytes or the peer's close come:
    /// that held a joining peer's first hello back until the other side gave
    /// up on the session (10 s).
    #[tokio::test]
    async fn a_message_read_with_the_handshake_is_delivered_at_once() {
        let (x, y) = tokio::io::duplex(1 << 20);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (ka, kb) = (device([1; 32]), device([1; 32]));
        let client = async move {
            let keys = Keys {
                private: &ka.0,
                secrets: &ka.1,
            };
            let (_tx, mut rx, _) = handshake(x, &keys, true).await?;
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            let _ = done_tx.send(());
            got.map_err(|_| ProtoError::Timeout)?
        };
        // Replies and sends without yielding, then keeps the stream open
        // until the client is done.
        let server = async move {
            let keys = Keys {
                private: &kb.0,
                secrets: &kb.1,
            };
            let (mut tx, _rx, _) = handshake(y, &keys, false).await?;
            tx.send(&Msg::Heartbeat, &[]).await?;
            let _ = done_rx.await;
            Ok::<_, ProtoError>(())
        };
        let (got, sent) = tokio::join!(client, server);
        sent.unwrap();
        assert_eq!(got.unwrap().0, Msg::Heartbeat);
    }

    #[tokio::test]
    async fn round_trip_of_a_large_message() {
        let (sent, got) = pair([1; 32], [1; 32]).await;
        sent.unwrap();
        let (msg, payload) = got.unwrap();
        assert_eq!(msg, Msg::Ack { cursor: 7 });
        assert_eq!(payload, vec![5u8; 200_000]);
    }

    /// Across the flushes every 16 frames and a header that shares its
    /// frame with the payload's start.
    #[tokio::test]
    async fn round_trip_of_a_message_of_many_frames() {
        let (x, y) = tokio::io::duplex(1 << 16);
        let payload: Vec<u8> = (0..3_333_333u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let (ka, kb) = (device([1; 32]), device([1; 32]));
        let client = async move {
            let keys = Keys {
                private: &ka.0,
                secrets: &ka.1,
            };
            let (mut tx, _rx, _) = handshake(x, &keys, true).await?;
            tx.send(&Msg::Ack { cursor: 9 }, &sent).await
        };
        let server = async move {
            let keys = Keys {
                private: &kb.0,
                secrets: &kb.1,
            };
            let (_tx, mut rx, _) = handshake(y, &keys, false).await?;
            rx.recv().await
        };
        let (sent, got) = tokio::join!(client, server);
        sent.unwrap();
        let (msg, got) = got.unwrap();
        assert_eq!(msg, Msg::Ack { cursor: 9 });
        assert!(got == payload, "the payload differs");
    }

    #[tokio::test]
    async fn a_wrong_secret_fails_the_handshake() {
        let (_, got) = pair([1; 32], [2; 32]).await;
        assert!(matches!(
            got,
            Err(ProtoError::Auth(_)) | Err(ProtoError::Closed)
        ));
    }

    /// Each side learns the other's static key, and the listener which of
    /// its secrets the dialer holds (an older one, after a rotation).
    #[tokio::test]
    async fn the_handshake_proves_both_static_keys_and_names_the_secret() {
        let (x, y) = tokio::io::duplex(1 << 16);
        let (a, b) = (generate_keypair().unwrap(), generate_keypair().unwrap());
        let (sa, sb) = (vec![[1; 32]], vec![[2; 32], [1; 32]]);
        let client = async {
            let keys = Keys {
                private: &a.0,
                secrets: &sa,
            };
            handshake(x, &keys, true).await.map(|h| h.2)
        };
        let server = async {
            let keys = Keys {
                private: &b.0,
                secrets: &sb,
            };
            handshake(y, &keys, false).await.map(|h| h.2)
        };
        let (ca, cb) = tokio::join!(client, server);
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert_eq!(ca.remote_static, b.1);
        assert_eq!(cb.remote_static, a.1);
        assert_eq!(cb.secret, 1);
    }

    /// A dialer of protocol 4 (NNpsk0, no preamble) is named as such.
    #[tokio::test]
    async fn an_older_dialer_is_told_apart() {
        let (x, y) = tokio::io::duplex(1 << 16);
        let b = device([1; 32]);
        let client = async move {
            let mut f = Framed::new(x, codec());
            f.send(Bytes::from(vec![7u8; 48])).await.unwrap();
            let _ = f.next().await;
        };
        let server = async move {
            let keys = Keys {
                private: &b.0,
                secrets: &b.1,
            };
            handshake(y, &keys, false).await.map(|_| ())
        };
        let (_, got) = tokio::join!(client, server);
        let e = got.unwrap_err().to_string();
        assert!(e.contains("older than 5"), "{e}");
    }
}

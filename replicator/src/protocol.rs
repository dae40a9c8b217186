//! The session protocol between two replicators: length-delimited frames
//! (tokio-util), encrypted and mutually authenticated with Noise
//! `NNpsk0` keyed by the library secret (snow), carrying JSON-headed
//! messages whose payload, when there is one, is a changeset BLOB.
//! docs/protocol.md describes every message.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts, FramedWrite, LengthDelimitedCodec};

/// Bumped on any incompatible change to the messages below, or to the
/// changesets they carry (3: the merge op).
pub const PROTOCOL_VERSION: u32 = 4;
/// The Noise protocol of a session (public for the frame_codec fuzz target,
/// which plays the initiator with snow itself to encrypt crafted frames).
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// A Noise message is at most 65535 bytes; larger frames are refused.
pub const MAX_FRAME: usize = 65535;
const TAG: usize = 16;
const CHUNK: usize = MAX_FRAME - TAG;
/// Largest message (header + payload) a peer may send.
pub const MAX_MESSAGE: usize = 256 << 20;
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
    Heartbeat,
    /// A fatal problem; the sender closes the session after it.
    Error {
        message: String,
    },
}

/// Noise keys derived from the library secret (32 bytes).
pub type Secret = [u8; 32];

fn noise_builder(secret: &Secret) -> Result<snow::Builder<'_>, ProtoError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| ProtoError::Auth(format!("noise parameters: {e:?}")))?;
    snow::Builder::new(params)
        .psk(0, secret)
        .map_err(|e| ProtoError::Auth(format!("{e:?}")))
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

/// Runs the Noise handshake over `io` and splits the session in two halves.
/// A peer without the secret fails here, before any message is exchanged.
pub async fn handshake<S>(
    io: S,
    secret: &Secret,
    initiator: bool,
) -> R<(
    Sender<tokio::io::WriteHalf<S>>,
    Receiver<tokio::io::ReadHalf<S>>,
)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(io, codec());
    let run = async {
        let b = noise_builder(secret)?;
        let mut hs = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(|e| ProtoError::Auth(format!("{e:?}")))?;
        let mut buf = vec![0u8; MAX_FRAME];
        let mut scratch = vec![0u8; MAX_FRAME];
        // NNpsk0: -> psk, e   <- e, ee
        if initiator {
            let n = hs.write_message(&[], &mut buf).map_err(auth)?;
            framed.send(Bytes::copy_from_slice(&buf[..n])).await?;
            let reply = next_frame(&mut framed).await?;
            hs.read_message(&reply, &mut scratch).map_err(auth)?;
        } else {
            let first = next_frame(&mut framed).await?;
            hs.read_message(&first, &mut scratch).map_err(auth)?;
            let n = hs.write_message(&[], &mut buf).map_err(auth)?;
            framed.send(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        hs.into_transport_mode().map_err(auth)
    };
    let transport = tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
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
        let mut out = vec![0u8; MAX_FRAME];
        let mut chunk = Vec::with_capacity(CHUNK);
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
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let frame = next_frame(&mut self.frames).await?;
            self.wire_bytes
                .fetch_add(frame.len() as u64 + 4, std::sync::atomic::Ordering::Relaxed);
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

    async fn pair(a: Secret, b: Secret) -> (R<()>, R<(Msg, Vec<u8>)>) {
        let (x, y) = tokio::io::duplex(1 << 20);
        let client = async move {
            let (mut tx, _rx) = handshake(x, &a, true).await?;
            tx.send(&Msg::Ack { cursor: 7 }, &vec![5u8; 200_000]).await
        };
        let server = async move {
            let (_tx, mut rx) = handshake(y, &b, false).await?;
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
        let client = async move {
            let (_tx, mut rx) = handshake(x, &[1; 32], true).await?;
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            let _ = done_tx.send(());
            got.map_err(|_| ProtoError::Timeout)?
        };
        // Replies and sends without yielding, then keeps the stream open
        // until the client is done.
        let server = async move {
            let (mut tx, _rx) = handshake(y, &[1; 32], false).await?;
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
        let client = async move {
            let (mut tx, _rx) = handshake(x, &[1; 32], true).await?;
            tx.send(&Msg::Ack { cursor: 9 }, &sent).await
        };
        let server = async move {
            let (_tx, mut rx) = handshake(y, &[1; 32], false).await?;
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
}

//! The sidecar's session codec (`lsync_replicator::protocol`): the
//! responder's handshake and `Receiver::recv`, the code that reads whatever
//! a peer sends, over an in-memory stream. The harness plays the peer: it
//! runs the initiator's side of the Noise handshake with snow itself, so
//! that it can encrypt any plaintext, and so reach the framing of messages
//! and their JSON headers, which random bytes never authenticate into.
//!
//! Input layout: the first byte chooses
//! 0. the rest, raw on the wire from the first byte (the handshake reads it);
//! 1. after a real handshake, records: a byte `k`, a u16 length `n`, then
//!    `n` bytes, sent as one frame: encrypted (k % 4 >= 2), in the clear
//!    (k % 4 == 0), or behind a length prefix that lies (k % 4 == 1: a u32
//!    from the input);
//! 2. after a real handshake, one message: a u16 header length, then the
//!    header and payload bytes; the harness writes the prefixes (the total
//!    and the header length) and cuts the message into full frames as
//!    `Sender::send` does, so the JSON header is what varies.
//!
//! Errors are fine. A crash, a hang, a leak or an allocation over the malloc
//! limit is not; nor is a message that decodes but does not survive its own
//! JSON round trip.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lsync_fuzz::debug;
use lsync_fuzz::input::Input;
use lsync_replicator::protocol::{
    handshake, Keys, Msg, Secret, MAX_FRAME, NOISE_PARAMS, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SECRET: Secret = [7; 32];
/// The static private keys of the peer the harness plays and of the
/// sidecar (any 32 bytes are an X25519 private key).
const PEER_KEY: [u8; 32] = [1; 32];
const SIDECAR_KEY: [u8; 32] = [2; 32];
/// Plaintext that fits one Noise message with its tag.
const CHUNK: usize = MAX_FRAME - 16;
/// Messages read from one input at most (each needs a frame of input).
const MAX_MESSAGES: usize = 64;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

async fn write_frame(io: &mut DuplexStream, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await
}

/// The first handshake frame of either side starts with this preamble
/// (`lsyncv` and the protocol version), which is also the Noise prologue.
fn preamble() -> Vec<u8> {
    let mut p = b"lsyncv".to_vec();
    p.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    p
}

/// The initiator's half of `XXpsk0`, done by hand:
/// -> psk, e   <- e, ee, s, es   -> s, se.
async fn initiate(io: &mut DuplexStream) -> Option<snow::TransportState> {
    let pre = preamble();
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .prologue(&pre)
        .unwrap()
        .local_private_key(&PEER_KEY)
        .unwrap()
        .psk(0, &SECRET)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; MAX_FRAME];
    let n = hs.write_message(&[], &mut buf).unwrap();
    let mut first = pre.clone();
    first.extend_from_slice(&buf[..n]);
    write_frame(io, &first).await.ok()?;
    let len = io.read_u32().await.ok()? as usize;
    let mut reply = vec![0u8; len];
    io.read_exact(&mut reply).await.ok()?;
    let reply = reply.get(pre.len()..)?;
    hs.read_message(reply, &mut buf)
        .expect("the responder's handshake reply authenticates");
    let n = hs.write_message(&[], &mut buf).unwrap();
    write_frame(io, &buf[..n]).await.ok()?;
    Some(hs.into_transport_mode().unwrap())
}

async fn send_encrypted(
    io: &mut DuplexStream,
    t: &mut snow::TransportState,
    plain: &[u8],
) -> std::io::Result<()> {
    let mut out = vec![0u8; MAX_FRAME];
    let n = t.write_message(plain, &mut out).unwrap();
    write_frame(io, &out[..n]).await
}

/// The peer's side: what the input says to put on the wire.
async fn peer(mut io: DuplexStream, how: u8, mut inp: Input<'_>) -> std::io::Result<()> {
    if how == 0 {
        return io.write_all(inp.rest()).await;
    }
    let Some(mut t) = initiate(&mut io).await else {
        return Ok(());
    };
    if how == 1 {
        while !inp.is_empty() {
            let k = inp.u8() % 4;
            let n = usize::from(inp.u16()).min(CHUNK);
            let bytes = inp.bytes(n);
            match k {
                0 => write_frame(&mut io, bytes).await?,
                1 => {
                    io.write_all(&inp.u32().to_be_bytes()).await?;
                    io.write_all(bytes).await?;
                }
                _ => send_encrypted(&mut io, &mut t, bytes).await?,
            }
        }
        return Ok(());
    }
    let hlen = usize::from(inp.u16());
    let rest = inp.rest();
    let mut plain = Vec::with_capacity(8 + rest.len());
    plain.extend_from_slice(&(4 + rest.len() as u32).to_le_bytes());
    plain.extend_from_slice(&(hlen as u32).to_le_bytes());
    plain.extend_from_slice(rest);
    for chunk in plain.chunks(CHUNK) {
        send_encrypted(&mut io, &mut t, chunk).await?;
    }
    Ok(())
}

/// The sidecar's side: the responder's handshake, then messages until an
/// error (the end of the input is one: the stream closes).
async fn sidecar(io: DuplexStream) {
    let keys = Keys {
        private: &SIDECAR_KEY,
        secrets: &[SECRET],
    };
    let Ok((_tx, mut rx, _peer)) = handshake(io, &keys, false).await else {
        return;
    };
    for _ in 0..MAX_MESSAGES {
        let got = rx.recv().await;
        if debug() {
            eprintln!("{got:?}");
        }
        let Ok((msg, payload)) = got else {
            return;
        };
        let json = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let again: Msg = serde_json::from_slice(&json).expect("an encoded message decodes");
        assert_eq!(again, msg, "the message changed in a JSON round trip");
        assert!(payload.len() <= lsync_replicator::protocol::MAX_MESSAGE);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let how = inp.u8() % 3;
    let (theirs, mine) = tokio::io::duplex(1 << 20);
    runtime().block_on(async move {
        let (_, ()) = tokio::join!(peer(theirs, how, inp), sidecar(mine));
    });
});

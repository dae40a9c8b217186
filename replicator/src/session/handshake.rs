//! The start of a session: the encrypted handshake, then the hellos, which
//! must agree on protocol, library and schema (or join the peer's library).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::members;
use crate::protocol::{self, Msg, PROTOCOL_VERSION};
use crate::store;

use super::error::{blocking, SessionError, R};
use super::shared::Node;

/// Who the peer is, once the hellos matched and its key is its device's.
pub(super) struct Peer {
    pub device_id: String,
    /// Its newest cursor, as of its hello.
    pub head: i64,
}

/// The session's own connection and both directions of the channel.
pub(super) struct Opened<W, Rd> {
    pub conn: Arc<Mutex<Connection>>,
    pub tx: protocol::Sender<W>,
    pub rx: protocol::Receiver<Rd>,
}

/// Handshakes, opens the database, exchanges hellos and admits the peer.
///
/// `XXpsk0` proves the library secret and both static keys before the
/// first message; the dialer speaks first, and the listener reads that
/// message before it touches the database (issue 13). The peer's device id
/// must then be the one bound to the key it proved (`lsync_members`); a
/// key that is not bound yet joins as a new member only with the newest
/// library secret this side knows.
pub(super) async fn hello<S>(
    node: &Node,
    io: S,
    initiator: bool,
    attempt: usize,
) -> R<(
    Opened<tokio::io::WriteHalf<S>, tokio::io::ReadHalf<S>>,
    Peer,
)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let secrets = node.secrets_for(initiator, attempt);
    let keys = protocol::Keys {
        private: &node.keys.private,
        secrets: &secrets,
    };
    let (mut tx, mut rx, auth) = protocol::handshake(io, &keys, initiator)
        .await
        .map_err(SessionError::Handshake)?;
    let current = secrets.get(auth.secret).is_some_and(|s| node.is_newest(s));
    let first = if initiator {
        None
    } else {
        Some(first_message(&mut rx).await?)
    };
    let db = &node.cfg.db;
    // Never a session on a file other than the one this sidecar serves.
    node.db_file.check(db)?;
    let conn = Arc::new(Mutex::new(store::open_session(db)?));
    let me = blocking(&conn, |c| {
        let id = store::identity(c)?;
        let head = store::head(c)?;
        Ok((id, head))
    })
    .await?;
    let (id, head) = me;
    let hello_with = |library_id: &str| Msg::Hello {
        protocol: PROTOCOL_VERSION,
        library_id: library_id.to_owned(),
        device_id: id.device_id.clone(),
        schema: id.schema.clone(),
        head,
    };
    // A dialer that may join speaks second, so that its hello already
    // carries the library it joins and the first session succeeds.
    let joining = node.cfg.join && initiator;
    let answered = matches!(first, Some(Msg::Join));
    let hello = match first {
        None => {
            let opening = if joining {
                Msg::Join
            } else {
                hello_with(&id.library_id)
            };
            tx.send(&opening, &[]).await?;
            first_message(&mut rx).await?
        }
        Some(Msg::Join) => {
            tx.send(&hello_with(&id.library_id), &[]).await?;
            first_message(&mut rx).await?
        }
        Some(hello) => hello,
    };
    let Msg::Hello {
        protocol,
        library_id,
        device_id,
        schema,
        head: peer_head,
    } = hello
    else {
        return Err(SessionError::Refused(format!(
            "expected hello, got {hello:?}"
        )));
    };
    let mismatch = if protocol != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {protocol}, this side speaks {PROTOCOL_VERSION}"
        ))
    } else if device_id == id.device_id {
        Some(format!(
            "the peer has this database's own device id {device_id}"
        ))
    } else if schema != id.schema {
        Some(format!(
            "schema mismatch: the peer tracks {schema}, this side tracks {}",
            id.schema
        ))
    } else {
        None
    };
    let mismatch = match (mismatch, library_id == id.library_id) {
        (Some(m), _) => Some(m),
        (None, true) => None,
        (None, false) if node.cfg.join => {
            let lib = library_id.clone();
            match blocking(&conn, move |c| store::join_library(c, &lib)).await {
                Ok(()) => {
                    info!(library = %library_id, "joined the peer's library");
                    None
                }
                Err(e) => Some(format!("cannot join library {library_id}: {e}")),
            }
        }
        (None, false) => Some(format!(
            "library mismatch: the peer is in library {library_id}, this side in {} \
             (start a fresh database with --join to join the peer's library)",
            id.library_id
        )),
    };
    let mismatch = match mismatch {
        Some(m) => Some(m),
        None => {
            let (device, key) = (device_id.clone(), auth.remote_static);
            let status =
                blocking(&conn, move |c| members::admit(c, &device, &key, current)).await?;
            admission(&status, &device_id)
        }
    };
    if let Some(m) = mismatch {
        let _ = tx.send(&Msg::Error { message: m.clone() }, &[]).await;
        return Err(SessionError::Refused(m));
    }
    // The listener answers a dialer's hello; a joiner says its hello now,
    // in the library it joined.
    if joining || (!initiator && !answered) {
        tx.send(&hello_with(&library_id), &[]).await?;
    }
    let peer = Peer {
        device_id,
        head: peer_head,
    };
    Ok((Opened { conn, tx, rx }, peer))
}

/// Why a peer proven to hold a key is refused, given what the members
/// table says of its device id and that key (`lsync_member_admit`).
fn admission(status: &str, device: &str) -> Option<String> {
    match status {
        "member" => None,
        "joined" => {
            info!(device = %device, "a new member joined the library");
            None
        }
        "revoked" => Some(format!(
            "device {device} is revoked in this library (lsync device revoke)"
        )),
        "mismatch" => Some(format!(
            "device {device} is bound to another key: this peer is not that device \
             (a copy of its database with a new key, or an impostor)"
        )),
        "key_taken" => Some(format!(
            "the peer's key belongs to another device than {device}"
        )),
        "unknown" => Some(format!(
            "device {device} is not a member and offered an old library secret: the \
             secret was rotated (lsync secret rotate); a new device needs the current one"
        )),
        other => Some(format!("unexpected member status {other}")),
    }
}

/// The peer's next message, within the hello's time limit.
async fn first_message<Rd: AsyncRead + Unpin>(rx: &mut protocol::Receiver<Rd>) -> R<Msg> {
    let (msg, _) = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
        .await
        .map_err(|_| SessionError::Silent(HELLO_TIMEOUT))??;
    Ok(msg)
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

//! The start of a session: the encrypted handshake, then the hellos, which
//! must agree on protocol, library and schema (or join the peer's library).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::protocol::{self, Msg, PROTOCOL_VERSION};
use crate::store;

use super::error::{blocking, SessionError, R};
use super::shared::Node;

/// Who the peer is, once the hellos matched.
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

/// Handshakes, opens the database and exchanges hellos.
///
/// The dialer speaks first. `NNpsk0` lets a replayed first handshake
/// message complete the handshake on the listening side; only the real
/// dialer can encrypt a message after it. So the listener reads that
/// message before it touches the database (issue 13): until then, it has
/// proved nothing about its peer.
pub(super) async fn hello<S>(
    node: &Node,
    io: S,
    initiator: bool,
) -> R<(
    Opened<tokio::io::WriteHalf<S>, tokio::io::ReadHalf<S>>,
    Peer,
)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = protocol::handshake(io, &node.secret, initiator).await?;
    let first = if initiator {
        None
    } else {
        Some(first_message(&mut rx).await?)
    };
    let db = &node.cfg.db;
    // Never a session on a file other than the one this sidecar serves.
    node.db_file.check(db)?;
    let conn = Arc::new(Mutex::new(store::open_existing(db)?));
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

/// The peer's next message, within the hello's time limit.
async fn first_message<Rd: AsyncRead + Unpin>(rx: &mut protocol::Receiver<Rd>) -> R<Msg> {
    let (msg, _) = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
        .await
        .map_err(|_| SessionError::Silent(HELLO_TIMEOUT))??;
    Ok(msg)
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

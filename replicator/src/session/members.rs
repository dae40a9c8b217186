//! The member list and the library secret in a session: both sides send
//! their members after the hellos and whenever they change, and their
//! newest secret; a peer revoked meanwhile ends the session.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::io::AsyncWrite;
use tracing::{info, warn};

use crate::members;
use crate::protocol::{self, MemberEntry, Msg};

use super::error::{blocking, SessionError, R};
use super::shared::Node;
use super::Session;

/// The member list, and whether the peer is revoked in it.
pub(super) struct MembersNow {
    list: Vec<MemberEntry>,
    revoked: bool,
}

/// Reads the members as they are after a commit (blocking).
pub(super) fn read_members(c: &Connection, peer: &str) -> crate::store::R<MembersNow> {
    // One read of the list serves both: this runs after every commit.
    let list = members::entries(c)?;
    let revoked = list
        .iter()
        .any(|m| m.device == peer && m.status == "revoked");
    Ok(MembersNow { list, revoked })
}

/// Sends our members and our newest secret to a peer just admitted (an
/// active member, proven by its key). Returns the list and the secret sent.
pub(super) async fn send_all<W: AsyncWrite + Unpin>(
    node: &Node,
    conn: &Arc<Mutex<Connection>>,
    tx: &mut protocol::Sender<W>,
) -> R<(Vec<MemberEntry>, Option<(i64, protocol::Secret)>)> {
    let list = blocking(conn, |c| members::entries(c)).await?;
    tx.send(
        &Msg::Members {
            members: list.clone(),
        },
        &[],
    )
    .await?;
    let newest = node.newest();
    if let Some((epoch, secret)) = newest {
        let secret = members::hex(&secret);
        tx.send(&Msg::Secret { epoch, secret }, &[]).await?;
    }
    Ok((list, newest))
}

impl<W: AsyncWrite + Unpin> Session<W> {
    /// After a commit, with what [`read_members`] found: ends the session
    /// if the peer was revoked here, and sends the members if they changed
    /// since last sent.
    pub(super) async fn members_found(&mut self, found: MembersNow) -> R<()> {
        let MembersNow { list, revoked } = found;
        if revoked {
            return Err(SessionError::Refused(format!(
                "device {} is revoked in this library",
                self.peer
            )));
        }
        self.send_newest_secret().await?;
        if list != self.members {
            self.tx
                .send(
                    &Msg::Members {
                        members: list.clone(),
                    },
                    &[],
                )
                .await?;
            self.members = list;
        }
        Ok(())
    }

    /// After a rotation here (`lsync secret rotate`): the peer gets the new
    /// secret. The sidecar reads the secrets after it wakes the sessions,
    /// and wakes them again when they changed, with no new commit: so this
    /// is asked at every wake, not only after a commit.
    pub(super) async fn send_newest_secret(&mut self) -> R<()> {
        let newest = self.node.newest();
        if newest != self.secret_sent {
            if let Some((epoch, secret)) = newest {
                let secret = members::hex(&secret);
                self.tx.send(&Msg::Secret { epoch, secret }, &[]).await?;
            }
            self.secret_sent = newest;
        }
        Ok(())
    }

    /// Merges the peer's member list; a revocation of the peer itself ends
    /// the session.
    pub(super) async fn receive_members(&mut self, list: Vec<MemberEntry>) -> R<()> {
        let peer = self.peer.clone();
        let (merged, revoked) = blocking(&self.conn, move |c| {
            Ok((members::merge(c, &list)?, members::is_revoked(c, &peer)?))
        })
        .await?;
        if merged.added > 0 || merged.revoked > 0 {
            info!(
                added = merged.added,
                revoked = merged.revoked,
                "learned of members from the peer"
            );
        }
        for r in merged.refused.iter().take(10) {
            warn!("a member entry from the peer was refused: {r}");
        }
        if revoked {
            return Err(SessionError::Refused(format!(
                "device {} is revoked in this library",
                self.peer
            )));
        }
        Ok(())
    }

    /// Keeps the peer's newest library secret (it is an admitted member).
    pub(super) async fn receive_secret(&mut self, epoch: i64, secret: &str) -> R<()> {
        let Some(key) = parse_secret(secret) else {
            return Err(SessionError::Refused(
                "the peer sent a library secret that is not 64 hex characters".into(),
            ));
        };
        if epoch < 0 {
            return Err(SessionError::Refused(
                "the peer sent a secret with a negative epoch".into(),
            ));
        }
        let before = self.node.newest();
        let all = blocking(&self.conn, move |c| members::record_secret(c, epoch, &key)).await?;
        if all.first().copied() != before {
            info!(epoch, "learned the library's newest secret from the peer");
        }
        // The other sessions send it on: the watcher's own read of the
        // secrets, after this commit, may now find nothing new to wake them for.
        if self.node.set_secrets(all) {
            self.node.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

fn parse_secret(hex: &str) -> Option<protocol::Secret> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

//! `lsync device list | revoke` and `lsync secret rotate | show`: the
//! library's members and its secret, as this database knows them. A
//! running sidecar picks the changes up at its next commit check and
//! passes them on in its sessions.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::{print, DeviceListArgs, DeviceRevokeArgs, SecretRotateArgs};
use crate::{members, store};

fn open(db: &Path) -> Result<rusqlite::Connection> {
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    let conn = store::open(db)?;
    // A database that never ran a sidecar gets its key now, so that it
    // lists itself.
    members::device_keys(&conn)?;
    Ok(conn)
}

pub fn list(args: &DeviceListArgs) -> Result<()> {
    let conn = open(&args.db)?;
    let all = members::list(&conn)?;
    if args.json {
        return Ok(print(&format!("{}\n", serde_json::to_string(&all)?))?);
    }
    let mut o = String::new();
    writeln!(o, "{:<36}  {:<8}  {:<16}  note", "device", "status", "key")?;
    for m in &all {
        let key = m.pubkey.as_deref().map_or("-", |k| &k[..16.min(k.len())]);
        let note = if m.this_device { "this device" } else { "" };
        writeln!(o, "{:<36}  {:<8}  {key:<16}  {note}", m.device, m.status)?;
    }
    Ok(print(&o)?)
}

pub fn revoke(args: &DeviceRevokeArgs) -> Result<()> {
    let conn = open(&args.db)?;
    let entry = members::revoke(&conn, &args.id)?;
    print(&format!("{entry}\n"))?;
    eprintln!(
        "revoked. Peers refuse it as they learn of this; run `lsync secret rotate` too if it \
         knew the library secret, so that it cannot join again as a new device."
    );
    Ok(())
}

pub fn rotate(args: &SecretRotateArgs) -> Result<()> {
    let conn = open(&args.db)?;
    let secret = members::hex(&members::rotate_secret(&conn)?);
    if let Some(path) = &args.secret_file {
        write_secret(path, &secret)?;
    }
    print(&format!("{secret}\n"))?;
    Ok(())
}

pub fn show_secret(db: &Path) -> Result<()> {
    let conn = open(db)?;
    let Some((_, s)) = members::secrets(&conn)?.into_iter().next() else {
        bail!(
            "this database knows no library secret yet (its sidecar records the --secret-file's)"
        );
    };
    Ok(print(&format!("{}\n", members::hex(&s)))?)
}

/// Replaces the secret file atomically, readable by its owner only.
fn write_secret(path: &Path, hex: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(format!("{hex}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

//! `lsync peer forget ID`: a device gone for good stops holding back the
//! pruning of tombstones (`lsync_forget_peer`, docs/sql-api.md).

use anyhow::{bail, Result};

use crate::cli::{print, PeerForgetArgs};
use crate::store;

pub fn run(args: &PeerForgetArgs) -> Result<()> {
    if !args.db.exists() {
        bail!("no database at {}", args.db.display());
    }
    let conn = store::open(&args.db)?;
    let (released, pruned) = store::forget_peer(&conn, &args.id)?;
    print(&format!(
        "forgot peer {}: {released} tombstone(s) no longer wait for its ACK; {pruned} pruned\n",
        args.id
    ))?;
    Ok(())
}

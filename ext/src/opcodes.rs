//! The op codes of `lsync_clock.op` and `lsync_dirty.op`: the wire's, so the
//! triggers, the clock and the changeset spell them one way. A module of
//! their own, so that the trigger text needs nothing else of the clock.

use lsync_wire::changeset::Op;

pub const OP_INSERT: i64 = Op::Insert.code() as i64;
pub const OP_UPDATE: i64 = Op::Update.code() as i64;
pub const OP_DELETE: i64 = Op::Delete.code() as i64;
pub const OP_MERGE: i64 = Op::Merge.code() as i64;

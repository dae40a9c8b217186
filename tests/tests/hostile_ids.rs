//! Issue 13: ids and FK values from a peer are checked. A row id is a
//! global id (text of 1 to 1024 bytes, or a 16-byte UUID); an FK value is
//! one too, never a number that would be written here as a local id.

use lsync_tests::*;
use lsync_wire::changeset::{Changeset, DEFAULT_MAX_BODY};
use lsync_wire::value::Value;

const SCHEMA: &str = "
    CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
    CREATE TABLE tag_on(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
                        tag_id INTEGER REFERENCES tags(id), note TEXT);
    SELECT lsync_track('tags', 'shared');
    SELECT lsync_track('tag_on', 'shared');";

/// Applies A's changes, altered by `alter`, at B: the apply must fail
/// with `expected` in its message and leave B as it was.
fn refused_at_b(alter: impl Fn(&mut Changeset), expected: &str) {
    let (_dir, a, b) = two_libraries(SCHEMA);
    a.execute_batch(
        "INSERT INTO tags(uuid, name) VALUES ('T', 'red');
         INSERT INTO tag_on(uuid, tag_id, note) VALUES ('O', 1, 'x');",
    )
    .unwrap();
    let blob: Vec<u8> = scalar(&a, "SELECT lsync_changeset(0)");
    let mut cs = Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap();
    alter(&mut cs);
    let e = b
        .query_row("SELECT lsync_apply(?1)", [cs.encode().unwrap()], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(expected) && e.contains("nothing was applied"),
        "{e}"
    );
    assert_eq!((count(&b, "tags"), count(&b, "tag_on")), (0, 0));
}

fn set_pk(cs: &mut Changeset, pk: Value) {
    cs.changes[0].pk = pk;
}

fn set_fk(cs: &mut Changeset, v: Value) {
    let ch = cs.changes.iter_mut().find(|c| &*c.tbl == "tag_on").unwrap();
    for (col, x) in &mut ch.data {
        if &**col == "tag_id" {
            *x = v.clone();
        }
    }
}

#[test]
fn an_empty_text_id_is_refused() {
    refused_at_b(
        |cs| set_pk(cs, Value::Text(String::new())),
        "a row id that is an empty text",
    );
}

#[test]
fn a_ten_megabyte_text_id_is_refused() {
    refused_at_b(
        |cs| set_pk(cs, Value::Text("x".repeat(10 << 20))),
        "a row id that is a text of 10485760 bytes (at most 1024)",
    );
}

#[test]
fn a_blob_id_that_is_not_16_bytes_is_refused() {
    refused_at_b(
        |cs| set_pk(cs, Value::Blob(vec![7; 20])),
        "a blob of 20 bytes, not a 16-byte UUID",
    );
}

#[test]
fn a_16_byte_blob_id_that_is_not_a_uuid_is_refused() {
    refused_at_b(
        |cs| set_pk(cs, Value::Blob(vec![0; 16])),
        "a 16-byte blob that is not a UUID",
    );
}

#[test]
fn a_number_as_row_id_is_refused() {
    refused_at_b(
        |cs| set_pk(cs, Value::Integer(1)),
        "a row id that is a number",
    );
}

#[test]
fn an_integer_fk_value_is_refused_not_written_as_a_local_id() {
    refused_at_b(
        |cs| set_fk(cs, Value::Integer(1)),
        "links 'tag_id' to a number (a local id?)",
    );
}

#[test]
fn a_real_fk_value_is_refused() {
    refused_at_b(
        |cs| set_fk(cs, Value::Real(1.0)),
        "links 'tag_id' to a number",
    );
}

#[test]
fn an_empty_fk_value_is_refused() {
    refused_at_b(
        |cs| set_fk(cs, Value::Text(String::new())),
        "links 'tag_id' to an empty text",
    );
}

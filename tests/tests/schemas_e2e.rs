//! Real schemas, tracked as they are (issue 12), end to end: two real `lsync
//! run` processes on 127.0.0.1 (see `sidecar.rs` for the conventions), and
//! edits on both devices while they run.
//!
//! The schemas have no column added for lsync: a file manager's (entities
//! with a `pub_id`, join tables keyed by their pair, a 1:1 extension keyed
//! by its FK, an integer-keyed table, a WITHOUT ROWID key/value table, an FK to an
//! untracked local table) and a music store's (integer keys only, the same
//! ids used on both devices for different rows). The devices must end the
//! same when read through global ids ([`dump_by_gid`]): local ids differ.

use std::path::Path;

use rusqlite::Connection;
use serde_json::Value as Json;

use lsync_tests::*;

/// `lsync_track` for each `(table, mode, options)`, in order; the
/// `identity` each result says it chose.
fn track_as_they_are(c: &Connection, tables: &[(&str, &str, &str)]) -> Vec<String> {
    tables
        .iter()
        .map(|(table, mode, options)| {
            let result: String = c
                .query_row(
                    "SELECT lsync_track(?1, ?2, ?3)",
                    [table, mode, options],
                    |r| r.get(0),
                )
                .unwrap_or_else(|e| panic!("lsync_track('{table}'): {e}"));
            let result: Json = serde_json::from_str(&result).expect("lsync_track returns JSON");
            result["identity"]
                .as_str()
                .unwrap_or_else(|| panic!("no identity for '{table}': {result}"))
                .to_owned()
        })
        .collect()
}

/// Sidecars for A (listening) and B (dialing A), with fast retries.
fn run_two_sidecars(dir: &Path, a_db: &Path, b_db: &Path) -> (Sidecar, Sidecar) {
    let secret = new_secret(dir, "secret");
    let node_a = Sidecar::start(dir, "A", a_db, &secret, &[], &FAST_RETRY);
    let node_b = Sidecar::start(dir, "B", b_db, &secret, &[node_a.addr()], &FAST_RETRY);
    (node_a, node_b)
}

/// Nothing quarantined at `c`.
fn assert_no_conflicts(c: &Connection) {
    let q = query_rows(c, "SELECT tbl, op, error FROM lsync_conflicts");
    assert!(q.is_empty(), "quarantined: {q:?}");
}

/// Whether each `(table, rows)` holds that many rows at `c`.
fn row_counts_are(c: &Connection, want: &[(&str, i64)]) -> bool {
    want.iter().all(|(t, n)| count(c, t) == *n)
}

// ---------------------------------------------------------------------------
// 1. A file manager's schema
// ---------------------------------------------------------------------------

/// Modelled on Spacedrive's: `instance` is this device's own (not tracked);
/// `location` points at it.
const FILE_MANAGER_TABLES: &str = "
CREATE TABLE instance(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE location(id INTEGER PRIMARY KEY,
  pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')),
  name TEXT, instance_id INTEGER REFERENCES instance(id));
CREATE TABLE object(id INTEGER PRIMARY KEY,
  pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')),
  kind INTEGER, note TEXT);
CREATE TABLE file_path(id INTEGER PRIMARY KEY,
  pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')),
  name TEXT, location_id INTEGER REFERENCES location(id),
  object_id INTEGER REFERENCES object(id));
CREATE TABLE tag(id INTEGER PRIMARY KEY,
  pub_id BLOB NOT NULL UNIQUE DEFAULT (lsync_uuid('blob')),
  name TEXT, color TEXT);
CREATE TABLE tag_on_object(
  tag_id INTEGER NOT NULL REFERENCES tag(id) ON DELETE CASCADE,
  object_id INTEGER NOT NULL REFERENCES object(id) ON DELETE CASCADE,
  date_created TEXT,
  PRIMARY KEY (tag_id, object_id));
CREATE TABLE label(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE label_on_object(
  label_id INTEGER NOT NULL REFERENCES label(id),
  object_id INTEGER NOT NULL REFERENCES object(id),
  PRIMARY KEY (label_id, object_id));
CREATE TABLE exif_data(id INTEGER PRIMARY KEY,
  object_id INTEGER NOT NULL UNIQUE REFERENCES object(id) ON DELETE CASCADE,
  iso INTEGER, camera TEXT);
CREATE TABLE preference(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID;
";

/// Every table but `instance`, and the identity lsync must choose for it.
const FILE_MANAGER_TRACKING: [(&str, &str, &str, &str); 9] = [
    (
        "location",
        "device_owned",
        r#"{"local_columns": ["instance_id"]}"#,
        "unique column",
    ),
    ("object", "shared", "{}", "unique column"),
    ("file_path", "shared", "{}", "unique column"),
    ("tag", "shared", "{}", "unique column"),
    ("tag_on_object", "shared", "{}", "primary key"),
    ("label", "shared", "{}", "rowid"),
    ("label_on_object", "shared", "{}", "primary key"),
    ("exif_data", "shared", "{}", "unique key"),
    ("preference", "shared", "{}", "primary key"),
];

/// Assigns tag `tag` to the object noted `note` (by names, so the same on
/// every device); assigning it again updates `date_created`.
fn tag_object(c: &Connection, tag: &str, note: &str, date: &str) {
    c.execute(
        "INSERT INTO tag_on_object(tag_id, object_id, date_created)
           SELECT t.id, o.id, ?3 FROM tag t, object o WHERE t.name = ?1 AND o.note = ?2
         ON CONFLICT (tag_id, object_id) DO UPDATE SET date_created = excluded.date_created",
        [tag, note, date],
    )
    .unwrap_or_else(|e| panic!("tag {note} {tag}: {e}"));
}

/// Puts label `label` on the object noted `note`.
fn label_object(c: &Connection, label: &str, note: &str) {
    c.execute(
        "INSERT OR IGNORE INTO label_on_object(label_id, object_id)
           SELECT l.id, o.id FROM label l, object o WHERE l.name = ?1 AND o.note = ?2",
        [label, note],
    )
    .unwrap_or_else(|e| panic!("label {note} {label}: {e}"));
}

/// Writes the 1:1 exif row of the object noted `note`.
fn set_exif(c: &Connection, note: &str, iso: i64, camera: &str) {
    c.execute(
        "INSERT INTO exif_data(object_id, iso, camera)
           SELECT id, ?2, ?3 FROM object WHERE note = ?1
         ON CONFLICT (object_id) DO UPDATE SET iso = excluded.iso, camera = excluded.camera",
        rusqlite::params![note, iso, camera],
    )
    .unwrap_or_else(|e| panic!("exif of {note}: {e}"));
}

fn set_preference(c: &Connection, key: &str, value: &[u8]) {
    c.execute(
        "INSERT INTO preference(key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![key, value],
    )
    .unwrap_or_else(|e| panic!("preference {key}: {e}"));
}

/// The join tables and the 1:1 table by the names of what they link.
const FILE_MANAGER_LINKS: &str = "
    SELECT 'tag', t.name, o.note, x.date_created FROM tag_on_object x
      JOIN tag t ON t.id = x.tag_id JOIN object o ON o.id = x.object_id
    UNION ALL
    SELECT 'label', l.name, o.note, NULL FROM label_on_object x
      JOIN label l ON l.id = x.label_id JOIN object o ON o.id = x.object_id
    UNION ALL
    SELECT 'exif', e.camera, o.note, e.iso FROM exif_data e JOIN object o ON o.id = e.object_id
    UNION ALL
    SELECT 'file', f.name, o.note, l.name FROM file_path f
      JOIN object o ON o.id = f.object_id JOIN location l ON l.id = f.location_id
    ORDER BY 1, 2, 3";

/// A file manager's schema with every kind of identity, tracked as it is
/// (no ALTER), on two devices whose sidecars run while both write: the
/// same local ids name different rows, both assign the same tag to the
/// same object (one row), both write the same preference and the same 1:1
/// row, one deletes an object that the other is tagging (cascade), and
/// key parts and FKs move to the other device's rows. They end identical
/// through global ids, with nothing quarantined.
#[test]
fn a_file_managers_schema_syncs_as_it_is() {
    let (dir, a, b) = two_libraries(FILE_MANAGER_TABLES);
    let tracking: Vec<_> = FILE_MANAGER_TRACKING
        .iter()
        .map(|(t, m, o, _)| (*t, *m, *o))
        .collect();
    let want: Vec<&str> = FILE_MANAGER_TRACKING.iter().map(|x| x.3).collect();
    for c in [&a, &b] {
        assert_eq!(track_as_they_are(c, &tracking), want);
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    }
    a.execute_batch("INSERT INTO instance(id, name) VALUES (1, 'a-laptop')")
        .unwrap();
    b.execute_batch("INSERT INTO instance(id, name) VALUES (1, 'b-phone')")
        .unwrap();
    let (node_a, node_b) = run_two_sidecars(
        dir.path(),
        &dir.path().join("a.db"),
        &dir.path().join("b.db"),
    );
    let nodes = [&node_a, &node_b];

    // Both devices fill their library at once: rowids 1, 2, ... on each.
    a.execute_batch(
        "INSERT INTO location(name, instance_id) VALUES ('a-photos', 1);
         INSERT INTO object(kind, note) VALUES (1, 'a1'), (1, 'a2'), (2, 'a3');
         INSERT INTO file_path(name, location_id, object_id)
           SELECT o.note || '.jpg', l.id, o.id FROM location l, object o
           WHERE l.name = 'a-photos' AND o.note IN ('a1', 'a2');
         INSERT INTO tag(name, color) VALUES ('red', '#f00');
         INSERT INTO label(name) VALUES ('holiday');",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO location(name, instance_id) VALUES ('b-camera', 1);
         INSERT INTO object(kind, note) VALUES (3, 'b1'), (3, 'b2');
         INSERT INTO file_path(name, location_id, object_id)
           SELECT o.note || '.mov', l.id, o.id FROM location l, object o
           WHERE l.name = 'b-camera' AND o.note IN ('b1', 'b2');
         INSERT INTO tag(name, color) VALUES ('blue', '#00f');
         INSERT INTO label(name) VALUES ('work');",
    )
    .unwrap();
    label_object(&a, "holiday", "a1");
    label_object(&b, "work", "b1");
    set_exif(&a, "a3", 100, "a-cam");
    set_exif(&b, "b2", 800, "b-cam");
    set_preference(&a, "theme", b"dark");
    set_preference(&b, "theme", b"light");
    set_preference(&b, "b.only", &[0, 255]);
    wait_same_by_gid("both libraries on both devices", &nodes, &a, &b, |c| {
        row_counts_are(
            c,
            &[
                ("location", 2),
                ("object", 5),
                ("file_path", 4),
                ("tag", 2),
                ("label", 2),
                ("label_on_object", 2),
                ("exif_data", 2),
                ("preference", 2),
            ],
        )
    });
    // The local column stays local: A's location has no instance at B.
    let instance_of = "SELECT name, instance_id FROM location ORDER BY name";
    assert_eq!(
        query_rows(&a, instance_of),
        [["a-photos", "1"], ["b-camera", "NULL"]]
    );
    assert_eq!(
        query_rows(&b, instance_of),
        [["a-photos", "NULL"], ["b-camera", "1"]]
    );

    // Concurrent edits: A's tag 'red' is on both devices now, and both
    // assign it to 'a1'. A deletes 'a3' (its tags and exif cascade) while
    // B tags it and edits its exif, if 'a3' is still there. B moves a
    // label to another object (a key change: a delete and an insert) and a
    // file of its own to an object of A's.
    tag_object(&a, "red", "a1", "by a");
    tag_object(&b, "red", "a1", "by b");
    tag_object(&a, "red", "a2", "by a");
    tag_object(&a, "red", "a3", "by a");
    tag_object(&b, "blue", "b1", "by b");
    tag_object(&b, "blue", "a2", "by b");
    label_object(&a, "holiday", "b1");
    label_object(&b, "work", "a2");
    set_exif(&a, "a1", 200, "a-cam");
    set_exif(&b, "a1", 250, "b-cam");
    set_preference(&a, "theme", b"solarized");
    set_preference(&b, "theme", b"contrast");
    a.execute_batch(
        "UPDATE object SET kind = 10 WHERE note = 'a1';
         INSERT INTO file_path(name, location_id, object_id)
           SELECT 'b2-copy.jpg', l.id, o.id FROM location l, object o
           WHERE l.name = 'a-photos' AND o.note = 'b2';
         DELETE FROM object WHERE note = 'a3';",
    )
    .unwrap();
    tag_object(&b, "blue", "a3", "by b");
    b.execute_batch(
        "UPDATE object SET kind = 20 WHERE note = 'a1';
         UPDATE exif_data SET iso = 400 WHERE object_id = (SELECT id FROM object WHERE note = 'a3');
         UPDATE tag SET color = '#e00' WHERE name = 'red';
         UPDATE label SET name = 'holidays' WHERE name = 'holiday';
         UPDATE label_on_object SET object_id = (SELECT id FROM object WHERE note = 'b2')
           WHERE label_id = (SELECT id FROM label WHERE name = 'work')
             AND object_id = (SELECT id FROM object WHERE note = 'b1');
         UPDATE file_path SET object_id = (SELECT id FROM object WHERE note = 'a1')
           WHERE name = 'b1.mov';",
    )
    .unwrap();

    wait_same_by_gid(
        "the concurrent edits on both devices",
        &nodes,
        &a,
        &b,
        |c| {
            row_counts_are(
                c,
                &[
                    ("object", 4),
                    ("file_path", 5),
                    ("tag_on_object", 4),
                    ("label_on_object", 4),
                    ("exif_data", 2),
                    ("preference", 2),
                ],
            ) && query_rows(c, "SELECT name FROM label ORDER BY name") == [["holidays"], ["work"]]
                && query_rows(c, "SELECT color FROM tag WHERE name = 'red'") == [["#e00"]]
        },
    );
    for c in [&a, &b] {
        assert_no_conflicts(c);
        // The pair assigned on both devices is one row.
        let red_a1: i64 = scalar(
            c,
            "SELECT count(*) FROM tag_on_object x JOIN tag t ON t.id = x.tag_id
             JOIN object o ON o.id = x.object_id WHERE t.name = 'red' AND o.note = 'a1'",
        );
        assert_eq!(red_a1, 1);
    }
    assert_eq!(
        query_rows(&a, FILE_MANAGER_LINKS),
        query_rows(&b, FILE_MANAGER_LINKS)
    );
    let links: Vec<[String; 3]> = query_rows(&a, FILE_MANAGER_LINKS)
        .into_iter()
        .map(|r| [r[0].clone(), r[1].clone(), r[2].clone()])
        .collect();
    let want = [
        ["exif", "", "a1"],
        ["exif", "b-cam", "b2"],
        ["file", "a1.jpg", "a1"],
        ["file", "a2.jpg", "a2"],
        ["file", "b1.mov", "a1"],
        ["file", "b2-copy.jpg", "b2"],
        ["file", "b2.mov", "b2"],
        ["label", "holidays", "a1"],
        ["label", "holidays", "b1"],
        ["label", "work", "a2"],
        ["label", "work", "b2"],
        ["tag", "blue", "a2"],
        ["tag", "blue", "b1"],
        ["tag", "red", "a1"],
        ["tag", "red", "a2"],
    ];
    // The camera of a1's exif is whichever write won; the rest is fixed.
    let links: Vec<[String; 3]> = links
        .into_iter()
        .map(|[k, n, o]| {
            let n = if k == "exif" && o == "a1" {
                String::new()
            } else {
                n
            };
            [k, n, o]
        })
        .collect();
    assert_eq!(links, want.map(|r| r.map(str::to_owned)));
}

// ---------------------------------------------------------------------------
// 2. A music store's schema, integer keys only
// ---------------------------------------------------------------------------

/// Modelled on Chinook: every table keyed by an INTEGER PRIMARY KEY, and
/// `playlist_track` by its pair of FKs.
const MUSIC_STORE_TABLES: &str = "
CREATE TABLE artist(ArtistId INTEGER PRIMARY KEY, Name TEXT);
CREATE TABLE album(AlbumId INTEGER PRIMARY KEY, Title TEXT NOT NULL,
  ArtistId INTEGER NOT NULL REFERENCES artist(ArtistId));
CREATE TABLE media_type(MediaTypeId INTEGER PRIMARY KEY, Name TEXT);
CREATE TABLE genre(GenreId INTEGER PRIMARY KEY, Name TEXT);
CREATE TABLE track(TrackId INTEGER PRIMARY KEY, Name TEXT NOT NULL,
  AlbumId INTEGER REFERENCES album(AlbumId),
  MediaTypeId INTEGER NOT NULL REFERENCES media_type(MediaTypeId),
  GenreId INTEGER REFERENCES genre(GenreId),
  Composer TEXT, Milliseconds INTEGER NOT NULL, UnitPrice NUMERIC NOT NULL);
CREATE TABLE playlist(PlaylistId INTEGER PRIMARY KEY, Name TEXT);
CREATE TABLE playlist_track(
  PlaylistId INTEGER NOT NULL REFERENCES playlist(PlaylistId),
  TrackId INTEGER NOT NULL REFERENCES track(TrackId),
  PRIMARY KEY (PlaylistId, TrackId));
CREATE TABLE employee(EmployeeId INTEGER PRIMARY KEY, LastName TEXT NOT NULL,
  FirstName TEXT NOT NULL, Title TEXT, ReportsTo INTEGER REFERENCES employee(EmployeeId));
CREATE TABLE customer(CustomerId INTEGER PRIMARY KEY, FirstName TEXT NOT NULL,
  LastName TEXT NOT NULL, Email TEXT NOT NULL,
  SupportRepId INTEGER REFERENCES employee(EmployeeId));
CREATE TABLE invoice(InvoiceId INTEGER PRIMARY KEY,
  CustomerId INTEGER NOT NULL REFERENCES customer(CustomerId),
  InvoiceDate TEXT NOT NULL, Total NUMERIC NOT NULL);
CREATE TABLE invoice_line(InvoiceLineId INTEGER PRIMARY KEY,
  InvoiceId INTEGER NOT NULL REFERENCES invoice(InvoiceId),
  TrackId INTEGER NOT NULL REFERENCES track(TrackId),
  UnitPrice NUMERIC NOT NULL, Quantity INTEGER NOT NULL);
";

/// Every table, targets before the tables that point at them.
const MUSIC_STORE_ORDER: [&str; 11] = [
    "artist",
    "album",
    "media_type",
    "genre",
    "track",
    "playlist",
    "playlist_track",
    "employee",
    "customer",
    "invoice",
    "invoice_line",
];

/// The rows each device starts with: the same ids (1, 2) for different
/// rows on each.
const MUSIC_STORE_AT_A: &str = "
INSERT INTO artist VALUES (1, 'AC/DC'), (2, 'Accept');
INSERT INTO album VALUES (1, 'For Those About To Rock', 1), (2, 'Balls to the Wall', 2);
INSERT INTO media_type VALUES (1, 'MPEG audio file');
INSERT INTO genre VALUES (1, 'Rock');
INSERT INTO track VALUES
  (1, 'For Those About To Rock (We Salute You)', 1, 1, 1, 'Angus Young', 343719, 0.99),
  (2, 'Balls to the Wall', 2, 1, 1, NULL, 342562, 0.99),
  (3, 'Put The Finger On You', 1, 1, 1, 'Angus Young', 205662, 0.99);
INSERT INTO playlist VALUES (1, 'Music');
INSERT INTO playlist_track VALUES (1, 1), (1, 2);
INSERT INTO employee VALUES (1, 'Adams', 'Andrew', 'General Manager', NULL),
                            (2, 'Edwards', 'Nancy', 'Sales Manager', 1);
INSERT INTO customer VALUES (1, 'Luís', 'Gonçalves', 'luisg@embraer.com.br', 2);
INSERT INTO invoice VALUES (1, 1, '2009-01-01', 1.98);
INSERT INTO invoice_line VALUES (1, 1, 1, 0.99, 1), (2, 1, 2, 0.99, 1);
";

const MUSIC_STORE_AT_B: &str = "
INSERT INTO artist VALUES (1, 'Aerosmith'), (2, 'Alanis Morissette');
INSERT INTO album VALUES (1, 'Big Ones', 1), (2, 'Jagged Little Pill', 2);
INSERT INTO media_type VALUES (1, 'Protected AAC audio file');
INSERT INTO genre VALUES (1, 'Rock'), (2, 'Pop');
INSERT INTO track VALUES
  (1, 'Walk On Water', 1, 1, 1, 'Steven Tyler', 295680, 0.99),
  (2, 'All I Really Want', 2, 1, 2, 'Alanis Morissette', 284891, 0.99);
INSERT INTO playlist VALUES (1, 'Favourites');
INSERT INTO playlist_track VALUES (1, 1), (1, 2);
INSERT INTO employee VALUES (1, 'Peacock', 'Jane', 'Sales Support Agent', NULL);
INSERT INTO customer VALUES (1, 'Leonie', 'Köhler', 'leonekohler@surfeu.de', 1);
INSERT INTO invoice VALUES (1, 1, '2009-01-02', 0.99);
INSERT INTO invoice_line VALUES (1, 1, 2, 0.99, 1);
";

/// Every FK by the names of the rows at both ends, the same on every
/// device whatever the local ids.
const MUSIC_STORE_BY_NAME: [&str; 6] = [
    "SELECT al.Title, ar.Name FROM album al JOIN artist ar USING (ArtistId) ORDER BY 1",
    "SELECT t.Name, al.Title, m.Name, g.Name, t.UnitPrice FROM track t
       LEFT JOIN album al USING (AlbumId) JOIN media_type m USING (MediaTypeId)
       LEFT JOIN genre g USING (GenreId) ORDER BY 1",
    "SELECT p.Name, t.Name FROM playlist_track x JOIN playlist p USING (PlaylistId)
       JOIN track t USING (TrackId) ORDER BY 1, 2",
    "SELECT e.LastName, boss.LastName FROM employee e
       LEFT JOIN employee boss ON boss.EmployeeId = e.ReportsTo ORDER BY 1",
    "SELECT c.Email, rep.LastName FROM customer c
       LEFT JOIN employee rep ON rep.EmployeeId = c.SupportRepId ORDER BY 1",
    "SELECT c.Email, i.InvoiceDate, i.Total, t.Name, l.Quantity FROM invoice_line l
       JOIN invoice i USING (InvoiceId) JOIN customer c USING (CustomerId)
       JOIN track t USING (TrackId) ORDER BY 2, 4",
];

/// Adds the track named `track` to the playlist named `playlist`.
fn add_to_playlist(c: &Connection, playlist: &str, track: &str) {
    c.execute(
        "INSERT OR IGNORE INTO playlist_track(PlaylistId, TrackId)
           SELECT p.PlaylistId, t.TrackId FROM playlist p, track t
           WHERE p.Name = ?1 AND t.Name = ?2",
        [playlist, track],
    )
    .unwrap_or_else(|e| panic!("add {track} to {playlist}: {e}"));
}

/// A music store with integer keys only (no global id column anywhere),
/// tracked as it is: both devices use ids 1 and 2 for different artists,
/// albums, tracks, customers and invoices. With two sidecars running, they
/// converge, every integer FK pointing at the same row on both (album 'X'
/// is by artist 'Y' on both); then edits on both sides across each other's
/// rows (an FK moved to the other device's row, the same playlist entry
/// added on both, a delete) converge too.
#[test]
fn an_integer_keyed_schema_syncs_as_it_is() {
    let (dir, a, b) = two_libraries(MUSIC_STORE_TABLES);
    let tracking: Vec<_> = MUSIC_STORE_ORDER
        .iter()
        .map(|t| (*t, "shared", "{}"))
        .collect();
    let want: Vec<&str> = MUSIC_STORE_ORDER
        .iter()
        .map(|t| {
            if *t == "playlist_track" {
                "primary key"
            } else {
                "rowid"
            }
        })
        .collect();
    for c in [&a, &b] {
        assert_eq!(track_as_they_are(c, &tracking), want);
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    }
    a.execute_batch(MUSIC_STORE_AT_A).unwrap();
    b.execute_batch(MUSIC_STORE_AT_B).unwrap();
    let (node_a, node_b) = run_two_sidecars(
        dir.path(),
        &dir.path().join("a.db"),
        &dir.path().join("b.db"),
    );
    let nodes = [&node_a, &node_b];

    wait_same_by_gid("both stores on both devices", &nodes, &a, &b, |c| {
        row_counts_are(
            c,
            &[
                ("artist", 4),
                ("album", 4),
                ("genre", 3),
                ("track", 5),
                ("playlist_track", 4),
                ("employee", 3),
                ("customer", 2),
                ("invoice", 2),
                ("invoice_line", 3),
            ],
        )
    });
    for q in MUSIC_STORE_BY_NAME {
        assert_eq!(query_rows(&a, q), query_rows(&b, q), "{q}");
    }
    assert_eq!(
        query_rows(&b, MUSIC_STORE_BY_NAME[0]),
        [
            ["Balls to the Wall", "Accept"],
            ["Big Ones", "Aerosmith"],
            ["For Those About To Rock", "AC/DC"],
            ["Jagged Little Pill", "Alanis Morissette"],
        ]
    );
    assert_eq!(
        query_rows(&a, MUSIC_STORE_BY_NAME[2]),
        [
            ["Favourites", "All I Really Want"],
            ["Favourites", "Walk On Water"],
            ["Music", "Balls to the Wall"],
            ["Music", "For Those About To Rock (We Salute You)"],
        ]
    );

    // Edits across each other's rows, on both devices at once.
    add_to_playlist(&a, "Music", "Walk On Water");
    add_to_playlist(&b, "Music", "Walk On Water");
    a.execute_batch(
        "UPDATE artist SET Name = 'Aerosmith (US)' WHERE Name = 'Aerosmith';
         UPDATE customer SET SupportRepId = (SELECT EmployeeId FROM employee WHERE LastName = 'Peacock')
           WHERE Email = 'luisg@embraer.com.br';
         INSERT INTO artist(Name) VALUES ('Audioslave');
         INSERT INTO album(Title, ArtistId) SELECT 'Audioslave', ArtistId FROM artist
           WHERE Name = 'Audioslave';",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO employee(LastName, FirstName, Title, ReportsTo)
           SELECT 'Park', 'Margaret', 'Sales Support Agent', EmployeeId FROM employee
           WHERE LastName = 'Adams';
         INSERT INTO invoice_line(InvoiceId, TrackId, UnitPrice, Quantity)
           SELECT i.InvoiceId, t.TrackId, 0.99, 2 FROM invoice i, track t
           WHERE i.InvoiceDate = '2009-01-01' AND t.Name = 'Walk On Water';
         DELETE FROM invoice_line WHERE TrackId = (SELECT TrackId FROM track
           WHERE Name = 'Balls to the Wall');
         UPDATE invoice SET Total = 2.97 WHERE InvoiceDate = '2009-01-01';",
    )
    .unwrap();

    wait_same_by_gid("the edits on both devices", &nodes, &a, &b, |c| {
        row_counts_are(
            c,
            &[
                ("artist", 5),
                ("album", 5),
                ("playlist_track", 5),
                ("employee", 4),
                ("invoice_line", 3),
            ],
        ) && query_rows(
            c,
            "SELECT Total FROM invoice WHERE InvoiceDate = '2009-01-01'",
        ) == [["2.97"]]
            && query_rows(
                c,
                "SELECT count(*) FROM artist WHERE Name = 'Aerosmith (US)'",
            ) == [["1"]]
    });
    for c in [&a, &b] {
        assert_no_conflicts(c);
    }
    for q in MUSIC_STORE_BY_NAME {
        assert_eq!(query_rows(&a, q), query_rows(&b, q), "{q}");
    }
    assert_eq!(
        query_rows(&b, MUSIC_STORE_BY_NAME[0]),
        [
            ["Audioslave", "Audioslave"],
            ["Balls to the Wall", "Accept"],
            ["Big Ones", "Aerosmith (US)"],
            ["For Those About To Rock", "AC/DC"],
            ["Jagged Little Pill", "Alanis Morissette"],
        ]
    );
    assert_eq!(
        query_rows(&a, MUSIC_STORE_BY_NAME[3]),
        [
            ["Adams", "NULL"],
            ["Edwards", "Adams"],
            ["Park", "Adams"],
            ["Peacock", "NULL"],
        ]
    );
    assert_eq!(
        query_rows(&b, MUSIC_STORE_BY_NAME[4]),
        [
            ["leonekohler@surfeu.de", "Peacock"],
            ["luisg@embraer.com.br", "Peacock"],
        ]
    );
    assert_eq!(
        query_rows(&a, MUSIC_STORE_BY_NAME[5]),
        [
            [
                "luisg@embraer.com.br",
                "2009-01-01",
                "2.97",
                "For Those About To Rock (We Salute You)",
                "1"
            ],
            [
                "luisg@embraer.com.br",
                "2009-01-01",
                "2.97",
                "Walk On Water",
                "2"
            ],
            [
                "leonekohler@surfeu.de",
                "2009-01-02",
                "0.99",
                "All I Really Want",
                "1"
            ],
        ]
    );
}

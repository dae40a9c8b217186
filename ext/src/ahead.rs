//! Decoding a changeset's next chunk on a second thread while this one
//! merges the current chunk, and freeing the chunks merged there too.
//! Neither needs SQLite, and together they are about a fifth of a bulk
//! apply; on a machine with a core to spare they cost no time.

use std::sync::mpsc;

use lsync_wire::changeset::{Change, DecodeError, Stream};

/// A chunk of changes; `None` once the stream was read and checked to its
/// end.
pub type Chunk = Result<Option<Vec<Change>>, DecodeError>;

/// Calls `f` with a source of `stream`'s chunks of at most `max_changes`
/// changes and about `max_bytes` bytes, and a sink for the chunks it is
/// done with. With `ahead`, a second thread decodes one chunk ahead of `f`
/// (so at most two are held at a time) and frees the chunks `f` is done with.
pub fn chunks<T>(
    stream: &mut Stream<'_>,
    (max_changes, max_bytes): (usize, usize),
    ahead: bool,
    f: impl FnOnce(&mut dyn FnMut() -> Chunk, &mut dyn FnMut(Vec<Change>)) -> T,
) -> T {
    if !ahead {
        return f(&mut || stream.next_chunk(max_changes, max_bytes), &mut drop);
    }
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Chunk>(1);
        let (spent_tx, spent_rx) = mpsc::channel::<Vec<Change>>();
        let decoder = s.spawn(move || {
            loop {
                spent_rx.try_iter().for_each(drop);
                let next = stream.next_chunk(max_changes, max_bytes);
                let last = !matches!(next, Ok(Some(_)));
                // A send fails once `f` stopped reading: nothing more is wanted.
                if tx.send(next).is_err() || last {
                    break;
                }
            }
            // Until `f` returns and drops its sink.
            spent_rx.iter().for_each(drop);
        });
        // The decoder ends with its last chunk or an error; a source that
        // ends without either (the decoder panicked) is an error, never an
        // early end of the changes.
        let out = f(
            &mut || {
                rx.recv()
                    .unwrap_or(Err(DecodeError::Corrupt("the decoder stopped")))
            },
            &mut |spent| {
                // Freed here if the decoder is gone.
                let _ = spent_tx.send(spent);
            },
        );
        drop((rx, spent_tx));
        // Its panic, if any, was reported to `f` as an error above.
        let _ = decoder.join();
        out
    })
}

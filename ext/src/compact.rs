//! Folding a flush's updates of device-owned rows, and compacting the clock
//! ranges that scattered updates split.
//!
//! A bulk insert is one range entry. An update of row r after that fold
//! splits it into `[lo, r-1]`, `[r]`, `[r+1, hi]`: about 65 bytes of
//! metadata per updated row, so half of a table updated at random costs
//! more than the rows' own sync state. When the updates of one flush leave
//! a window of this device's rows fragmented enough, the window is covered
//! again by one entry, with new cursors and a new HLC.
//!
//! The price is traffic: every peer whose watermark is below the new
//! cursors gets the window's unchanged rows again. Device-owned rows are
//! their owner's state whole, so that is idempotent, but a window is
//! compacted only when the entries it saves pay for the unchanged rows it
//! sends again ([`RESEND_PER_ENTRY`], [`MIN_SAVED`]).
//!
//! The new HLC is the flush's: later than every HLC issued before, so it is
//! at least every covered row's version. Peers order device-owned rows by
//! HLC alone (`merge::newer`): a row sent again is newer than their copy
//! (the same values), while a later change or delete by the owner is newer
//! still, so nothing is undone or brought back.

use crate::clock::{Clock, OP_UPDATE};
use crate::error::Result;

/// Rows per compaction window. A flush reads the clock entries of the
/// windows its updates touch, so this bounds the work one update costs.
const WINDOW: i64 = 4096;

/// A window is compacted when each entry it saves costs at most this many
/// unchanged rows sent again. It also bounds the metadata of a window left
/// fragmented: fewer than one entry per this many rows.
const RESEND_PER_ENTRY: i64 = 4;

/// Fewer entries saved are not worth any row sent again: a small table, or
/// a few updates, keep the exact per-row entries.
const MIN_SAVED: i64 = 16;

/// Updated rows `lo..=hi` with the newest HLC among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub lo: i64,
    pub hi: i64,
    pub hlc: i64,
}

/// One new row entry of the fold: `hlc` is `None` for a compacted window,
/// which takes the flush's HLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cover {
    lo: i64,
    hi: i64,
    hlc: Option<i64>,
}

/// Covers this device's updated rows (`runs`: sorted, disjoint) in table
/// `tbl`, compacting the windows where that pays. Returns the number of
/// windows compacted.
pub fn fold_updates(clock: &mut Clock, tbl: i64, runs: &[Run]) -> Result<i64> {
    let me = clock.self_idx;
    let runs = split_at_windows(runs);
    let mut compacted = 0;
    let mut i = 0;
    while i < runs.len() {
        let w = runs[i].lo.div_euclid(WINDOW);
        let n = runs[i..]
            .iter()
            .take_while(|r| r.lo.div_euclid(WINDOW) == w)
            .count();
        let (wlo, whi) = window(w);
        let entries: Vec<Segment> = clock
            .row_entries(tbl, wlo, whi)?
            .into_iter()
            .map(|e| Segment {
                lo: e.lo.max(wlo),
                hi: e.hi.min(whi),
                mine: e.origin.as_i64() == Some(me),
            })
            .collect();
        for c in plan(entries, &runs[i..i + n]) {
            let hlc = match c.hlc {
                Some(h) => h,
                None => {
                    compacted += 1;
                    clock.hlc()?
                }
            };
            clock.cover_rows(tbl, c.lo, c.hi, OP_UPDATE, hlc, me)?;
        }
        i += n;
    }
    Ok(compacted)
}

/// The rowids of window `w`.
fn window(w: i64) -> (i64, i64) {
    let lo = w.saturating_mul(WINDOW);
    (lo, lo.saturating_add(WINDOW - 1))
}

/// `runs` with each run that crosses a window boundary cut there.
fn split_at_windows(runs: &[Run]) -> Vec<Run> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let mut lo = r.lo;
        loop {
            let (_, whi) = window(lo.div_euclid(WINDOW));
            if r.hi <= whi {
                out.push(Run { lo, ..*r });
                break;
            }
            out.push(Run { lo, hi: whi, ..*r });
            lo = whi + 1;
        }
    }
    out
}

/// Rows `lo..=hi` covered by one entry, once the fold is done.
#[derive(Debug, Clone, Copy)]
struct Segment {
    lo: i64,
    hi: i64,
    mine: bool,
}

/// The entries to write for one window: given its row entries (clipped to
/// it, sorted, disjoint) and the updated runs in it, each maximal stretch
/// of this device's adjacent entries (after the fold) that is fragmented
/// enough becomes one entry, and the updates elsewhere get theirs.
fn plan(entries: Vec<Segment>, runs: &[Run]) -> Vec<Cover> {
    // The window after the fold: entries cut around the updated runs, which
    // become entries of their own.
    // Each with the index of its run, if it is one.
    let mut after: Vec<(Segment, Option<usize>)> = Vec::new();
    for e in entries {
        let mut at = Some(e.lo);
        let first = runs.partition_point(|r| r.hi < e.lo);
        for r in runs[first..].iter().take_while(|r| r.lo <= e.hi) {
            if let Some(a) = at.filter(|a| *a < r.lo) {
                after.push((
                    Segment {
                        hi: r.lo - 1,
                        lo: a,
                        ..e
                    },
                    None,
                ));
            }
            at = r.hi.checked_add(1).filter(|_| r.hi < e.hi);
        }
        if let Some(a) = at.filter(|a| *a <= e.hi) {
            after.push((Segment { lo: a, ..e }, None));
        }
    }
    for (k, r) in runs.iter().enumerate() {
        let seg = Segment {
            lo: r.lo,
            hi: r.hi,
            mine: true,
        };
        after.push((seg, Some(k)));
    }
    after.sort_by_key(|(s, _)| s.lo);

    let mut covers = Vec::new();
    let mut i = 0;
    while i < after.len() {
        // The stretch of adjacent entries of ours that starts at i.
        let mut j = i + 1;
        if after[i].0.mine {
            while j < after.len()
                && after[j].0.mine
                && after[j - 1].0.hi.checked_add(1) == Some(after[j].0.lo)
            {
                j += 1;
            }
        }
        let stretch = &after[i..j];
        let (lo, hi) = (stretch[0].0.lo, stretch[j - i - 1].0.hi);
        let updated: i64 = stretch
            .iter()
            .filter_map(|(_, k)| *k)
            .map(|k| runs[k].hi - runs[k].lo + 1)
            .sum();
        let saved = (j - i - 1) as i64;
        if saved >= MIN_SAVED && saved.saturating_mul(RESEND_PER_ENTRY) >= (hi - lo + 1) - updated {
            covers.push(Cover { lo, hi, hlc: None });
        } else {
            covers.extend(stretch.iter().filter_map(|(_, k)| *k).map(|k| Cover {
                lo: runs[k].lo,
                hi: runs[k].hi,
                hlc: Some(runs[k].hlc),
            }));
        }
        i = j;
    }
    covers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(lo: i64, hi: i64, mine: bool) -> Segment {
        Segment { lo, hi, mine }
    }

    fn run(lo: i64, hi: i64, hlc: i64) -> Run {
        Run { lo, hi, hlc }
    }

    #[test]
    fn one_update_in_a_long_range_only_splits_it() {
        let covers = plan(vec![seg(0, 4095, true)], &[run(100, 100, 7)]);
        assert_eq!(
            covers,
            vec![Cover {
                lo: 100,
                hi: 100,
                hlc: Some(7)
            }]
        );
    }

    #[test]
    fn half_of_a_window_updated_at_random_is_compacted() {
        let runs: Vec<Run> = (0..2048).map(|i| run(2 * i, 2 * i, 10 + i)).collect();
        let covers = plan(vec![seg(0, 4095, true)], &runs);
        assert_eq!(
            covers,
            vec![Cover {
                lo: 0,
                hi: 4095,
                hlc: None
            }]
        );
    }

    #[test]
    fn rows_of_another_device_bound_the_compacted_stretch() {
        // 100..=199 is another device's; updates fragment both sides.
        let entries = vec![seg(0, 99, true), seg(100, 199, false), seg(200, 299, true)];
        let runs: Vec<Run> = (0..50)
            .map(|i| run(2 * i, 2 * i, 1))
            .chain((0..3).map(|i| run(200 + 40 * i, 200 + 40 * i, 2)))
            .collect();
        let covers = plan(entries, &runs);
        assert_eq!(
            covers[0],
            Cover {
                lo: 0,
                hi: 99,
                hlc: None
            }
        );
        // The right side has 3 updates in 100 rows: not worth re-sending.
        assert_eq!(
            &covers[1..],
            &[
                Cover {
                    lo: 200,
                    hi: 200,
                    hlc: Some(2)
                },
                Cover {
                    lo: 240,
                    hi: 240,
                    hlc: Some(2)
                },
                Cover {
                    lo: 280,
                    hi: 280,
                    hlc: Some(2)
                },
            ]
        );
    }

    #[test]
    fn a_gap_in_the_rowids_bounds_the_compacted_stretch() {
        // Rowid 50 is deleted: no entry may cover it.
        let entries = vec![seg(0, 49, true), seg(51, 99, true)];
        let runs: Vec<Run> = (0..50).map(|i| run(2 * i + 1, 2 * i + 1, 1)).collect();
        let covers = plan(entries, &runs);
        assert_eq!(
            covers,
            vec![
                Cover {
                    lo: 0,
                    hi: 49,
                    hlc: None
                },
                Cover {
                    lo: 51,
                    hi: 99,
                    hlc: None
                }
            ]
        );
    }

    #[test]
    fn a_small_stretch_keeps_its_exact_entries() {
        let entries = vec![seg(1, 2, true), seg(3, 3, true)];
        let covers = plan(entries, &[run(2, 2, 5)]);
        assert_eq!(
            covers,
            vec![Cover {
                lo: 2,
                hi: 2,
                hlc: Some(5)
            }]
        );
    }

    #[test]
    fn runs_are_cut_at_window_boundaries() {
        let cut = split_at_windows(&[run(4090, 4100, 3), run(-2, 1, 4)]);
        assert_eq!(
            cut,
            vec![
                run(4090, 4095, 3),
                run(4096, 4100, 3),
                run(-2, -1, 4),
                run(0, 1, 4)
            ]
        );
    }
}

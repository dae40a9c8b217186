//! Hybrid logical clock: one `i64` holding 48 bits of Unix milliseconds and a
//! 16-bit counter, so HLCs sort as plain integers and fit in a SQLite INTEGER.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bits reserved for the logical counter.
pub const COUNTER_BITS: u32 = 16;
const COUNTER_MASK: i64 = (1 << COUNTER_BITS) - 1;

/// The largest HLC accepted from a changeset or a snapshot, whatever the
/// allowed drift: millisecond 2^46, in the year 4199. No real clock gets
/// there, and a clock merged up to it still has 2^62 increments left before
/// the top of the i64 range, where no later HLC exists.
pub const MAX_ACCEPTED: i64 = 1 << 62;

/// The HLC for a wall-clock reading in Unix milliseconds, with counter 0.
pub fn from_millis(ms: u64) -> i64 {
    // 47 bits of ms (the sign bit stays clear) last until the year 6429;
    // clamp rather than wrap.
    let ms = ms.min((1u64 << 47) - 1);
    (ms as i64) << COUNTER_BITS
}

/// The current wall clock as an HLC with counter 0.
pub fn wall() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    from_millis(ms)
}

/// Milliseconds part of an HLC.
pub fn millis(hlc: i64) -> u64 {
    (hlc.max(0) >> COUNTER_BITS) as u64
}

/// Counter part of an HLC.
pub fn counter(hlc: i64) -> u16 {
    (hlc & COUNTER_MASK) as u16
}

/// The next HLC to issue after `last`, given the wall clock `wall`: strictly
/// greater than `last` even when the wall clock has stepped backwards;
/// `None` at the top of the range, where there is none.
pub fn next(last: i64, wall: i64) -> Option<i64> {
    Some(wall.max(last.checked_add(1)?))
}

/// Readable form: the UTC time in ISO 8601 with milliseconds, then `#` and the
/// counter in decimal, e.g. `2026-11-22T03:04:05.123Z#3`.
pub fn to_text(hlc: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(millis(hlc));
    format!("{}#{}", humantime::format_rfc3339_millis(t), counter(hlc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_next_at_the_top() {
        assert_eq!(next(i64::MAX - 1, wall()), Some(i64::MAX));
        assert_eq!(next(i64::MAX, wall()), None);
        assert!(wall() < MAX_ACCEPTED);
    }

    #[test]
    fn text_form() {
        let h = from_millis(1_700_000_000_123) + 7;
        assert_eq!(to_text(h), "2023-11-14T22:13:20.123Z#7");
    }

    proptest! {
        #[test]
        fn next_is_strictly_monotonic(last in 0i64..(1 << 62), wall_ms in 0u64..(1 << 46)) {
            let n = next(last, from_millis(wall_ms)).unwrap();
            prop_assert!(n > last);
            prop_assert!(n >= from_millis(wall_ms));
        }

        #[test]
        fn parts_round_trip(ms in 0u64..(1 << 46), c in any::<u16>()) {
            let h = from_millis(ms) + i64::from(c);
            prop_assert_eq!(millis(h), ms);
            prop_assert_eq!(counter(h), c);
        }
    }
}

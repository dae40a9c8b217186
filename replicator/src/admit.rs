//! Which incoming connections get a session: at most `MAX_SESSIONS` at
//! once, and `MAX_PER_ADDRESS` from one address, those still in their
//! handshake included. A flood of connections then costs a socket each
//! and is closed at once, never a task that waits or a database handle
//! (issue 13).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

pub const MAX_SESSIONS: usize = 64;
pub const MAX_PER_ADDRESS: usize = 8;

/// The sessions running, by address.
#[derive(Default)]
pub struct Admission {
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<Mutex<usize>>,
    /// Refusals since the last one logged: one line a second at most.
    refused: (u64, Option<Instant>),
}

/// One admitted session's place, given back when dropped.
pub struct Slot {
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<Mutex<usize>>,
}

impl Admission {
    /// A place for a session from `ip`, or `None` (logged) when either cap
    /// is reached.
    pub fn admit(&mut self, ip: IpAddr) -> Option<Slot> {
        let (mut total, mut by_ip) = match (self.total.lock(), self.by_ip.lock()) {
            (Ok(t), Ok(b)) => (t, b),
            _ => return None,
        };
        let from_ip = by_ip.get(&ip).copied().unwrap_or(0);
        let why = if *total >= MAX_SESSIONS {
            Some(format!("{MAX_SESSIONS} sessions are running"))
        } else if from_ip >= MAX_PER_ADDRESS {
            Some(format!("{MAX_PER_ADDRESS} sessions from {ip} are running"))
        } else {
            None
        };
        if let Some(why) = why {
            drop((total, by_ip));
            self.log_refusal(ip, &why);
            return None;
        }
        *total += 1;
        by_ip.insert(ip, from_ip + 1);
        Some(Slot {
            ip,
            by_ip: self.by_ip.clone(),
            total: self.total.clone(),
        })
    }

    fn log_refusal(&mut self, ip: IpAddr, why: &str) {
        let (count, last) = &mut self.refused;
        *count += 1;
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            warn!(peer = %ip, refused = *count, "connection closed: {why}");
            *count = 0;
            *last = Some(Instant::now());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.total.lock() {
            *t = t.saturating_sub(1);
        }
        if let Ok(mut b) = self.by_ip.lock() {
            if let Some(n) = b.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    b.remove(&self.ip);
                }
            }
        }
    }
}

/// The pause before accepting again after an accept error (out of file
/// descriptors, say, where accepting at once fails at once): doubling from
/// 10 ms to 1 s, back to none after a success.
#[derive(Default)]
pub struct AcceptBackoff(Duration);

impl AcceptBackoff {
    pub fn failed(&mut self) -> Duration {
        self.0 = (self.0 * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.0
    }
    pub fn succeeded(&mut self) {
        self.0 = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_total_and_places_come_back() {
        let mut a = Admission::default();
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_PER_ADDRESS).filter_map(|_| a.admit(one)).collect();
        assert_eq!(slots.len(), MAX_PER_ADDRESS);
        assert!(a.admit(one).is_none());
        drop(slots);
        assert!(a.admit(one).is_some());
        let mut held = Vec::new();
        for i in 0..MAX_SESSIONS {
            let ip: IpAddr = format!("10.1.{}.{}", i / 200, i % 200).parse().unwrap();
            held.push(a.admit(ip).expect("under the cap"));
        }
        assert!(a.admit("10.9.9.9".parse().unwrap()).is_none());
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed().as_millis(), 10);
    }
}

//! Sources the edge refuses for a while: repeated authentication failures (their
//! REGISTERs and INVITEs are answered `403`), scans (many distinct unknown users or
//! domains from one source) and floods of malformed requests (both met with silence:
//! whoever scans or floods learns nothing more).
//!
//! - A ban lasts `base` the first time and doubles with each new ban of the same address
//!   within a day, up to `max`: a guesser that comes back finds the door shut longer.
//! - Addresses on the allow-list (trunks, large NATs) are never banned.
//! - Bans are listed and lifted by operators (API and CLI); every ban is a log line (by
//!   the caller) and a counter.
//! - The table is bounded: at most [`MAX_BANS`] addresses; past that, expired bans go
//!   first, then the ones closest to expiry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Addresses banned (or remembered for their strikes) at most.
pub const MAX_BANS: usize = 100_000;

/// Why a source was banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    AuthFailures,
    /// Many distinct unknown users or domains asked for.
    Scan,
    /// Many malformed messages.
    MalformedFlood,
}

impl BanReason {
    pub const ALL: [BanReason; 3] = [
        BanReason::AuthFailures,
        BanReason::Scan,
        BanReason::MalformedFlood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::AuthFailures => "auth-failures",
            BanReason::Scan => "scan",
            BanReason::MalformedFlood => "malformed-flood",
        }
    }

    /// Whether the source gets no answer at all while banned.
    pub fn silences(self) -> bool {
        !matches!(self, BanReason::AuthFailures)
    }
}

/// When suspicion turns into a ban.
#[derive(Debug, Clone, Copy)]
pub struct SuspicionPolicy {
    /// Distinct unknown users or domains from one source within the window.
    pub unknown_names: usize,
    /// Malformed messages from one source within the window.
    pub malformed: u32,
    pub window_secs: u64,
}

impl Default for SuspicionPolicy {
    fn default() -> Self {
        SuspicionPolicy {
            unknown_names: 10,
            malformed: 50,
            window_secs: 60,
        }
    }
}

/// What one source did lately: distinct unknown names (hashed) and malformed messages.
#[derive(Debug, Default)]
struct Suspicion {
    since: u64,
    unknown: Vec<u64>,
    malformed: u32,
}

/// One banned source, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub source: IpAddr,
    pub reason: BanReason,
    /// Unix seconds.
    pub since: u64,
    pub until: u64,
    /// How many times it was banned within the memory of this table.
    pub strikes: u32,
}

/// A network of the allow-list (shared with the store, which validates carriers with it).
pub use switchyard_types::Prefix;

#[derive(Debug, Clone, Copy)]
struct Entry {
    reason: BanReason,
    since: u64,
    until: u64,
    strikes: u32,
}

/// The banned sources of this edge node.
#[derive(Debug)]
pub struct Bans {
    base_secs: u64,
    max_secs: u64,
    allow: Vec<Prefix>,
    entries: Mutex<HashMap<IpAddr, Entry>>,
    suspicion: Mutex<HashMap<IpAddr, Suspicion>>,
    policy: SuspicionPolicy,
    /// Bans issued since start.
    pub issued: AtomicU64,
    /// Bans issued since start, by reason (in [`BanReason::ALL`]'s order).
    pub issued_by: [AtomicU64; 3],
}

/// Strikes are forgotten a day after the last ban ends.
const STRIKE_MEMORY_SECS: u64 = 86_400;

impl Bans {
    pub fn new(base_secs: u64, max_secs: u64, allow: Vec<Prefix>) -> Bans {
        Bans {
            base_secs: base_secs.max(1),
            max_secs: max_secs.max(base_secs),
            allow,
            entries: Mutex::default(),
            suspicion: Mutex::default(),
            policy: SuspicionPolicy::default(),
            issued: AtomicU64::new(0),
            issued_by: Default::default(),
        }
    }

    pub fn with_policy(mut self, policy: SuspicionPolicy) -> Bans {
        self.policy = policy;
        self
    }

    /// The reason of the ban in force on `source`, if any.
    pub fn banned_for(&self, source: IpAddr, now_secs: u64) -> Option<BanReason> {
        self.lock()
            .get(&source)
            .filter(|e| e.until > now_secs)
            .map(|e| e.reason)
    }

    /// `source` asked for a user or domain nobody has (`name`); a ban when that makes
    /// too many distinct ones within the window.
    pub fn unknown_name(&self, source: IpAddr, name: &str, now_secs: u64) -> Option<Ban> {
        if self.is_allowed(source) {
            return None;
        }
        let hash = xxhash_rust::xxh3::xxh3_64(name.to_ascii_lowercase().as_bytes());
        let distinct = self.suspect(source, now_secs, |s| {
            if !s.unknown.contains(&hash) {
                s.unknown.push(hash);
            }
            s.unknown.len() >= self.policy.unknown_names
        });
        distinct.then(|| self.ban(source, BanReason::Scan, now_secs))?
    }

    /// `source` sent a malformed message; a ban when there were too many in the window.
    pub fn malformed(&self, source: IpAddr, now_secs: u64) -> Option<Ban> {
        if self.is_allowed(source) {
            return None;
        }
        let flood = self.suspect(source, now_secs, |s| {
            s.malformed += 1;
            s.malformed >= self.policy.malformed
        });
        flood.then(|| self.ban(source, BanReason::MalformedFlood, now_secs))?
    }

    /// Updates `source`'s suspicion in its window; true when `update` says it is time.
    fn suspect(
        &self,
        source: IpAddr,
        now_secs: u64,
        update: impl FnOnce(&mut Suspicion) -> bool,
    ) -> bool {
        let window = self.policy.window_secs;
        let mut table = self.suspicion.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_BANS && !table.contains_key(&source) {
            table.retain(|_, s| now_secs.saturating_sub(s.since) < window);
            if table.len() >= MAX_BANS {
                table.clear();
            }
        }
        let s = table.entry(source).or_default();
        if now_secs.saturating_sub(s.since) >= window {
            *s = Suspicion {
                since: now_secs,
                ..Suspicion::default()
            };
        }
        let due = update(s);
        if due {
            table.remove(&source);
        }
        due
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_allowed(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|p| p.contains(source))
    }

    pub fn is_banned(&self, source: IpAddr, now_secs: u64) -> bool {
        self.lock().get(&source).is_some_and(|e| e.until > now_secs)
    }

    /// Bans `source` (unless allowed or banned already); the ban when one was issued.
    pub fn ban(&self, source: IpAddr, reason: BanReason, now_secs: u64) -> Option<Ban> {
        if self.is_allowed(source) {
            return None;
        }
        let mut entries = self.lock();
        if entries.get(&source).is_some_and(|e| e.until > now_secs) {
            return None;
        }
        if entries.len() >= MAX_BANS && !entries.contains_key(&source) {
            entries.retain(|_, e| e.until > now_secs);
            if entries.len() >= MAX_BANS {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.until)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = soonest {
                    entries.remove(&ip);
                }
            }
        }
        let strikes = entries
            .get(&source)
            .filter(|e| now_secs.saturating_sub(e.until) < STRIKE_MEMORY_SECS)
            .map_or(1, |e| e.strikes + 1);
        let length = self
            .base_secs
            .saturating_mul(1u64 << (strikes - 1).min(20))
            .min(self.max_secs);
        let entry = Entry {
            reason,
            since: now_secs,
            until: now_secs + length,
            strikes,
        };
        entries.insert(source, entry);
        self.issued.fetch_add(1, Ordering::Relaxed);
        let i = BanReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.issued_by[i].fetch_add(1, Ordering::Relaxed);
        Some(listed(source, &entry))
    }

    /// Bans in force now.
    pub fn list(&self, now_secs: u64) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.until > now_secs)
            .map(|(ip, e)| listed(*ip, e))
            .collect();
        v.sort_by_key(|b| b.source);
        v
    }

    /// Lifts the ban of `source` (its strikes too); whether there was one in force.
    pub fn lift(&self, source: IpAddr, now_secs: u64) -> bool {
        self.lock()
            .remove(&source)
            .is_some_and(|e| e.until > now_secs)
    }

    /// Forgets bans whose strikes have run out, and old suspicion.
    pub fn purge(&self, now_secs: u64) {
        self.lock()
            .retain(|_, e| now_secs.saturating_sub(e.until) < STRIKE_MEMORY_SECS);
        let window = self.policy.window_secs;
        self.suspicion
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| now_secs.saturating_sub(s.since) < window);
    }
}

fn listed(source: IpAddr, e: &Entry) -> Ban {
    Ban {
        source,
        reason: e.reason,
        since: e.since,
        until: e.until,
        strikes: e.strikes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bans_grow_expire_and_can_be_lifted() {
        let bans = Bans::new(300, 3600, vec![]);
        let a = ip("192.0.2.7");
        let first = bans.ban(a, BanReason::AuthFailures, 1000).unwrap();
        assert_eq!(first.until, 1300);
        assert!(bans.is_banned(a, 1299));
        assert!(!bans.is_banned(a, 1300));
        assert!(
            bans.ban(a, BanReason::AuthFailures, 1100).is_none(),
            "already banned"
        );
        let second = bans.ban(a, BanReason::AuthFailures, 1400).unwrap();
        assert_eq!((second.strikes, second.until), (2, 2000), "twice as long");
        let third = bans.ban(a, BanReason::AuthFailures, 2100).unwrap();
        assert_eq!(third.until, 2100 + 1200);
        for t in [3400, 6000, 10_000] {
            let b = bans.ban(a, BanReason::AuthFailures, t).unwrap();
            assert!(b.until - t <= 3600, "capped at the maximum");
        }
        assert_eq!(bans.list(10_001).len(), 1);
        assert!(bans.lift(a, 10_001));
        assert!(!bans.is_banned(a, 10_001));
        assert!(bans.list(10_001).is_empty());
        assert_eq!(bans.issued.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn the_allow_list_is_never_banned() {
        let bans = Bans::new(
            300,
            3600,
            vec![
                Prefix::parse("10.0.0.0/8").unwrap(),
                Prefix::parse("2001:db8::/32").unwrap(),
            ],
        );
        assert!(
            bans.ban(ip("10.1.2.3"), BanReason::AuthFailures, 0)
                .is_none()
        );
        assert!(
            bans.ban(ip("2001:db8:1::5"), BanReason::AuthFailures, 0)
                .is_none()
        );
        assert!(
            bans.ban(ip("11.0.0.1"), BanReason::AuthFailures, 0)
                .is_some()
        );
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("nonsense").is_err());
        assert!(Prefix::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            !Prefix::parse("192.0.2.1")
                .unwrap()
                .contains(ip("192.0.2.2"))
        );
    }

    #[test]
    fn scans_and_malformed_floods_are_banned_and_silenced() {
        let bans = Bans::new(300, 3600, vec![Prefix::parse("10.0.0.0/8").unwrap()]);
        let scanner = ip("192.0.2.9");
        // The same unknown name again and again is not a scan.
        for _ in 0..50 {
            assert!(bans.unknown_name(scanner, "1999", 100).is_none());
        }
        for i in 0..8 {
            assert!(bans.unknown_name(scanner, &format!("{i}"), 100).is_none());
        }
        let ban = bans
            .unknown_name(scanner, "8", 100)
            .expect("ten distinct: a scan");
        assert_eq!(ban.reason, BanReason::Scan);
        assert_eq!(bans.banned_for(scanner, 101), Some(BanReason::Scan));
        assert!(BanReason::Scan.silences() && !BanReason::AuthFailures.silences());
        // Names spread over more than the window are not a scan.
        let slow = ip("192.0.2.10");
        for i in 0..30 {
            assert!(bans.unknown_name(slow, &format!("{i}"), i * 10).is_none());
        }
        let flooder = ip("192.0.2.11");
        for _ in 0..49 {
            assert!(bans.malformed(flooder, 5).is_none());
        }
        assert_eq!(
            bans.malformed(flooder, 5).map(|b| b.reason),
            Some(BanReason::MalformedFlood)
        );
        // Allowed sources are never suspected.
        for i in 0..100 {
            assert!(
                bans.unknown_name(ip("10.9.9.9"), &format!("{i}"), 1)
                    .is_none()
            );
            assert!(bans.malformed(ip("10.9.9.9"), 1).is_none());
        }
        assert_eq!(bans.issued_by[1].load(Ordering::Relaxed), 1);
        assert_eq!(bans.issued_by[2].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_table_stays_bounded() {
        let bans = Bans::new(10, 10, vec![]);
        for i in 0..(MAX_BANS as u32 + 50) {
            bans.ban(IpAddr::from(i.to_be_bytes()), BanReason::AuthFailures, 0);
        }
        assert!(bans.lock().len() <= MAX_BANS);
    }
}

//! The limiter's state in process memory, for the single-instance embedded default. It
//! holds at most a fixed number of keys per map: beyond, the least recently used key is
//! forgotten, so a flood of new keys (made-up emails, many addresses) costs bounded memory and
//! constant work per request. A forgotten bucket starts full again.

use hashlink::LruCache;

use super::quota::{Decision, Quota, gcra};

/// GCRA arrival times and in-flight slots, by key.
#[derive(Debug)]
pub struct MemoryLimits {
    tats: LruCache<String, i64>,
    /// Slot ids held under each key, each with the time it is let go of at the latest.
    slots: LruCache<String, Vec<(String, i64)>>,
}

impl MemoryLimits {
    /// `max_keys` per map; at least one.
    pub fn new(max_keys: usize) -> Self {
        Self {
            tats: LruCache::new(max_keys.max(1)),
            slots: LruCache::new(max_keys.max(1)),
        }
    }

    pub fn check(&mut self, key: &str, quota: Quota, now: i64, consume: bool) -> Decision {
        let (decision, new_tat) = gcra(self.tats.get(key).copied(), now, quota, consume);
        if let Some(tat) = new_tat {
            self.tats.insert(key.to_owned(), tat);
        }
        decision
    }

    pub fn refund(&mut self, key: &str, quota: Quota, now: i64) {
        if let Some(tat) = self.tats.get_mut(key) {
            *tat = (*tat - quota.emission_ms()).max(now);
        }
    }

    /// Takes one of `max` slots under `key` for `id` until `until`; `false` when all are taken.
    pub fn acquire(&mut self, key: &str, id: &str, max: u32, now: i64, until: i64) -> bool {
        let mut held = self.slots.remove(key).unwrap_or_default();
        held.retain(|(_, held_until)| *held_until > now);
        let taken = held.len() < usize::try_from(max).unwrap_or(usize::MAX);
        if taken {
            held.push((id.to_owned(), until));
        }
        if !held.is_empty() {
            self.slots.insert(key.to_owned(), held);
        }
        taken
    }

    pub fn release(&mut self, key: &str, id: &str) {
        if let Some(held) = self.slots.peek_mut(key) {
            held.retain(|(held_id, _)| held_id != id);
            if held.is_empty() {
                self.slots.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request an hour: a key's second request is refused until its state is forgotten.
    const ONE: Quota = Quota {
        burst: 1,
        per_period: 1,
        period_secs: 3_600,
    };

    #[test]
    fn many_more_keys_than_the_cap_keep_the_most_recently_used() {
        let mut limits = MemoryLimits::new(100);
        let now = 1_000_000;
        for i in 0..1_000 {
            assert!(limits.check(&format!("k{i}"), ONE, now, true).allowed);
            // Used all along, so never the least recently used.
            limits.check("busy", ONE, now, true);
            assert!(limits.tats.len() <= 100);
        }
        assert_eq!(limits.tats.len(), 100);
        assert!(!limits.check("busy", ONE, now, true).allowed);
        for i in 901..1_000 {
            assert!(
                !limits.check(&format!("k{i}"), ONE, now, true).allowed,
                "k{i} was forgotten"
            );
        }
        // An evicted bucket starts full again.
        assert!(limits.check("k0", ONE, now, true).allowed);
        assert_eq!(limits.tats.len(), 100);
    }

    #[test]
    fn in_flight_slots_are_capped_the_same_way() {
        let mut limits = MemoryLimits::new(10);
        let now = 0;
        for i in 0..100 {
            assert!(limits.acquire(&format!("k{i}"), "a", 1, now, now + 30_000));
            assert!(limits.slots.len() <= 10);
        }
        assert_eq!(limits.slots.len(), 10);
        for i in 90..100 {
            assert!(!limits.acquire(&format!("k{i}"), "b", 1, now, now + 30_000));
        }
        assert!(limits.acquire("k0", "b", 1, now, now + 30_000));
        // Released and expired slots are free again; an empty key holds no entry.
        limits.release("k99", "a");
        assert!(limits.acquire("k99", "b", 1, now, now + 30_000));
        assert!(limits.acquire("k98", "b", 1, now + 30_000, now + 60_000));
        limits.release("k98", "b");
        assert!(limits.slots.peek("k98").is_none());
    }

    #[test]
    fn a_refund_gives_one_request_back() {
        let mut limits = MemoryLimits::new(10);
        assert!(limits.check("k", ONE, 0, true).allowed);
        assert!(!limits.check("k", ONE, 0, true).allowed);
        limits.refund("k", ONE, 0);
        assert!(limits.check("k", ONE, 0, true).allowed);
    }
}

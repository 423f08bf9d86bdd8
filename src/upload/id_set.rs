//! Sets of ids a client chose (the planner's cast keys, an id filter's ids), hashed with
//! foldhash under a key drawn at random once per isolate.
//!
//! std's `HashSet` hashes with SipHash, which was 6 % of a 1,000-PUT upload's instructions. A
//! client chooses the ids, so the hash must stay keyed with a secret: with a key it knew, it
//! could send ids that all land in one bucket and make each lookup scan them all. foldhash's own
//! `RandomState` takes its key from addresses and the clock, which are fixed on
//! `wasm32-unknown-unknown` (so is std's key there), so the key comes from `getrandom`
//! (`crypto.getRandomValues` in the worker).

use std::collections::HashSet;
use std::sync::OnceLock;

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;

/// A set of client-chosen keys.
pub type IdSet<T> = HashSet<T, SeedableRandomState>;

/// An empty [`IdSet`].
pub fn new<T>() -> IdSet<T> {
    HashSet::with_hasher(SeedableRandomState::with_seed(0, seed()))
}

/// A set holding `key`.
pub fn of<T: std::hash::Hash + Eq>(key: T) -> IdSet<T> {
    let mut set = new();
    set.insert(key);
    set
}

/// The isolate's random key, drawn on first use.
fn seed() -> &'static SharedSeed {
    static SEED: OnceLock<SharedSeed> = OnceLock::new();
    SEED.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_err() {
            // Never seen (the worker's `crypto.getRandomValues`, the OS natively); std's key
            // (random natively) rather than none.
            use std::hash::BuildHasher;
            bytes = std::collections::hash_map::RandomState::new().hash_one(0u8).to_le_bytes();
        }
        SharedSeed::from_u64(u64::from_le_bytes(bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sets_are_keyed_with_the_drawn_key_not_a_fixed_one() {
        let drawn = new::<u8>().hasher().hash_one("id");
        // The same key for every set of the isolate...
        assert_eq!(drawn, new::<u8>().hasher().hash_one("id"));
        // ...which is not foldhash's fixed one (a chance of 2^-64 that a drawn key agrees).
        let fixed = SeedableRandomState::with_seed(0, SharedSeed::global_fixed()).hash_one("id");
        assert_ne!(drawn, fixed);
    }

    #[test]
    fn a_set_keeps_each_distinct_key_once() {
        let mut set = of("a".to_string());
        assert!(set.insert("b".to_string()));
        assert!(!set.insert("a".to_string()));
        assert_eq!(set.len(), 2);
    }
}

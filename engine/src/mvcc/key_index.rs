//! The in-memory key index: for every user key, the revisions of its records in the backend,
//! grouped into generations (etcd's `keyIndex` and `treeIndex`, `key_index.go`, `index.go`).
//!
//! A generation is one life of a key: from the put that created it to the delete (tombstone)
//! that ended it. The last generation is the open one, empty while the key does not exist:
//!
//! ```text
//! put(2) put(3) delete(4) put(5) delete(6) on "k":
//!   [{2, 3, 4t}, {5, 6t}, {}]
//! ```
//!
//! Invariants (asserted): revisions of a key strictly increase across all its generations;
//! every generation but the last is non-empty and ends with its tombstone; the last generation
//! never ends with a tombstone; a key whose only generation is empty is removed from the index.
//!
//! Compaction at `c` keeps, for each key, the latest revision `<= c` of the generation alive at
//! `c` (even a tombstone at exactly `c`, as etcd >= 3.5.16 does so a watch from `c` still sees
//! the delete), and drops everything older. The set of kept revisions tells the compactor which
//! backend records survive.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use super::revision::Rev;

/// One life of a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Versions this generation has had, including revisions compacted away.
    ver: i64,
    /// The revision that created it (zero when restored from a lone tombstone).
    created: Rev,
    revs: Vec<Rev>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    fn last(&self) -> Rev {
        *self.revs.last().expect("non-empty generation")
    }

    /// Position of the latest revision whose main revision is `<= at`.
    fn latest_at(&self, at: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at)
    }
}

/// What the index knows about a live key at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyState {
    pub modified: Rev,
    pub created: Rev,
    pub version: i64,
}

/// The generations of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyIndex {
    modified: Rev,
    generations: Vec<Generation>,
}

impl KeyIndex {
    fn new() -> KeyIndex {
        KeyIndex {
            modified: Rev::default(),
            generations: vec![Generation::default()],
        }
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    fn open_generation(&mut self) -> &mut Generation {
        self.generations.last_mut().expect("a key has a generation")
    }

    fn put(&mut self, key: &[u8], rev: Rev) {
        assert!(
            rev > self.modified,
            "key {key:?}: put at {rev:?} not after last modification {:?}",
            self.modified
        );
        let g = self.open_generation();
        if g.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    fn tombstone(&mut self, key: &[u8], rev: Rev) {
        assert!(
            !self.open_generation().is_empty(),
            "key {key:?}: tombstone at {rev:?} for a key that does not exist"
        );
        self.put(key, rev);
        self.generations.push(Generation::default());
    }

    /// The first record seen for a key when rebuilding the index: the generation may have lost
    /// its older revisions to compaction, so creation and version come from the record.
    fn restore(created: Rev, modified: Rev, ver: i64) -> KeyIndex {
        KeyIndex {
            modified,
            generations: vec![Generation {
                ver,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// The generation alive at `at`, if the key existed then.
    fn generation_at(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            if i != last && g.last().main <= at {
                // Deleted at or before `at`, and not recreated by then.
                return None;
            }
            if g.revs[0].main <= at {
                return Some(g);
            }
        }
        None
    }

    fn get(&self, at: i64) -> Option<KeyState> {
        let g = self.generation_at(at)?;
        let n = g.latest_at(at)?;
        Some(KeyState {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// Where compaction at `at` cuts this key: the generation it keeps from, and the position
    /// in it of the revision it keeps, the key's latest revision `<= at`.
    ///
    /// etcd's `doCompact` walks forward to the first generation whose tombstone is `>= at`.
    /// That misses a key deleted and re-created inside one txn: its tombstone `(at, 0)` ends
    /// one generation and `(at, 1)` opens the next, and etcd would keep the tombstone and drop
    /// the live record. Searching from the newest generation keeps the record visible at `at`.
    /// A tombstone older than `at` is dead history: the key's generations up to it go.
    fn compaction_point(&self, at: i64) -> (usize, Option<usize>) {
        let last = self.generations.len() - 1;
        for gi in (0..=last).rev() {
            let g = &self.generations[gi];
            let Some(n) = g.latest_at(at) else { continue };
            let is_tombstone = gi != last && n == g.revs.len() - 1;
            if is_tombstone && g.revs[n].main < at {
                return (gi + 1, None);
            }
            return (gi, Some(n));
        }
        (0, None)
    }

    /// Adds to `available` the revision compaction at `at` keeps for this key.
    fn available(&self, at: i64, available: &mut HashSet<Rev>) {
        let (gi, n) = self.compaction_point(at);
        if let Some(n) = n {
            available.insert(self.generations[gi].revs[n]);
        }
    }

    fn compact(&mut self, at: i64) {
        let (gi, n) = self.compaction_point(at);
        if let Some(n) = n {
            self.generations[gi].revs.drain(..n);
        }
        self.generations.drain(..gi);
    }

    /// etcd's `keep`, used by HashKV: like [`KeyIndex::available`] but leaves out a tombstone,
    /// so hashes agree with etcd versions that deleted the tombstone at the compact revision.
    fn keep(&self, at: i64, keep: &mut HashSet<Rev>) {
        let (gi, n) = self.compaction_point(at);
        let g = &self.generations[gi];
        if let Some(n) = n {
            let is_tombstone = n == g.revs.len() - 1 && gi != self.generations.len() - 1;
            if !is_tombstone {
                keep.insert(g.revs[n]);
            }
        }
    }
}

/// The index of every key, ordered by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// Bounds of a key range for `BTreeMap::range`.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Keys `start <= k < end` (no `end`: to the last key) as BTreeMap bounds; `None` when the
/// range is empty (`end <= start`), which `BTreeMap::range` would reject.
pub(crate) fn key_bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> Option<KeyBounds<'a>> {
    match end {
        Some(end) if end <= start => None,
        Some(end) => Some((Bound::Included(start), Bound::Excluded(end))),
        None => Some((Bound::Included(start), Bound::Unbounded)),
    }
}

impl Index {
    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyState> {
        self.keys.get(key)?.get(at)
    }

    /// Like [`Index::get`], with the index's own copy of the key.
    pub fn get_key_value(&self, key: &[u8], at: i64) -> Option<(&[u8], KeyState)> {
        let (key, ki) = self.keys.get_key_value(key)?;
        Some((key.as_slice(), ki.get(at)?))
    }

    /// Visits the keys `start <= k < end` alive at `at`, in key order, until `visit` says stop.
    pub fn visit<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        at: i64,
        visit: &mut dyn FnMut(&'a [u8], KeyState) -> bool,
    ) {
        let Some(bounds) = key_bounds(start, end) else {
            return;
        };
        for (key, ki) in self.keys.range::<[u8], _>(bounds) {
            if let Some(state) = ki.get(at) {
                if !visit(key, state) {
                    return;
                }
            }
        }
    }

    pub fn put(&mut self, key: &[u8], rev: Rev) {
        match self.keys.get_mut(key) {
            Some(ki) => ki.put(key, rev),
            None => {
                let mut ki = KeyIndex::new();
                ki.put(key, rev);
                self.keys.insert(key.to_vec(), ki);
            }
        }
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Rev) {
        let ki = self
            .keys
            .get_mut(key)
            .unwrap_or_else(|| panic!("key {key:?}: tombstone at {rev:?} for an unknown key"));
        ki.tombstone(key, rev);
    }

    /// Rebuilds the index one backend record at a time, in revision order (etcd's
    /// `restoreIntoIndex`). `created` and `version` are the record's own fields.
    pub fn restore(&mut self, key: &[u8], rev: Rev, tombstone: bool, created: i64, version: i64) {
        match self.keys.get_mut(key) {
            Some(ki) if tombstone => ki.tombstone(key, rev),
            Some(ki) => ki.put(key, rev),
            None if tombstone => {
                // A lone tombstone: the key's earlier revisions were compacted away.
                let mut ki = KeyIndex::restore(Rev::default(), rev, 1);
                ki.generations.push(Generation::default());
                self.keys.insert(key.to_vec(), ki);
            }
            None => {
                assert!(
                    0 < created && created <= rev.main && version >= 1,
                    "key {key:?}: record {rev:?} claims creation at {created}, version {version}"
                );
                let ki = KeyIndex::restore(Rev::new(created, 0), rev, version);
                self.keys.insert(key.to_vec(), ki);
            }
        }
    }

    /// The revisions compaction at `at` keeps: the latest one `<= at` of each key's generation
    /// alive at `at`, tombstones included. Does not change the index.
    pub fn available(&self, at: i64) -> HashSet<Rev> {
        let mut available = HashSet::new();
        for ki in self.keys.values() {
            ki.available(at, &mut available);
        }
        available
    }

    /// Drops every revision older than the ones [`Index::available`] keeps, and the keys left
    /// with nothing.
    pub fn compact(&mut self, at: i64) {
        self.keys.retain(|_, ki| {
            ki.compact(at);
            !ki.is_empty()
        });
    }

    /// etcd's `treeIndex.Keep`: the revisions a HashKV at `at` counts among those at or below
    /// the compact revision.
    pub fn keep(&self, at: i64) -> HashSet<Rev> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }

    #[cfg(test)]
    fn generations(&self, key: &[u8]) -> Vec<Vec<(i64, i64)>> {
        self.keys[key]
            .generations
            .iter()
            .map(|g| g.revs.iter().map(|r| (r.main, r.sub)).collect())
            .collect()
    }

    #[cfg(test)]
    fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd's example from `key_index.go`: put(1) put(2) tombstone(3) put(4) tombstone(5).
    fn example() -> Index {
        let mut idx = Index::default();
        idx.put(b"foo", Rev::new(1, 0));
        idx.put(b"foo", Rev::new(2, 0));
        idx.tombstone(b"foo", Rev::new(3, 0));
        idx.put(b"foo", Rev::new(4, 0));
        idx.tombstone(b"foo", Rev::new(5, 0));
        idx
    }

    #[test]
    fn get_sees_each_generation_and_the_gaps_between() {
        let idx = example();
        assert_eq!(idx.get(b"foo", 0), None);
        let at2 = idx.get(b"foo", 2).unwrap();
        assert_eq!(
            (at2.modified.main, at2.created.main, at2.version),
            (2, 1, 2)
        );
        assert_eq!(idx.get(b"foo", 3), None, "deleted at 3");
        let at4 = idx.get(b"foo", 4).unwrap();
        assert_eq!(
            (at4.modified.main, at4.created.main, at4.version),
            (4, 4, 1),
            "version restarts after a delete"
        );
        assert_eq!(idx.get(b"foo", 5), None);
        assert_eq!(idx.get(b"foo", 100), None);
    }

    #[test]
    fn compaction_follows_etcds_example() {
        let mut idx = example();
        assert_eq!(
            idx.available(2),
            HashSet::from([Rev::new(2, 0)]),
            "the latest revision at 2 survives"
        );
        idx.compact(2);
        assert_eq!(
            idx.generations(b"foo"),
            vec![vec![(2, 0), (3, 0)], vec![(4, 0), (5, 0)], vec![]]
        );
        idx.compact(4);
        assert_eq!(idx.generations(b"foo"), vec![vec![(4, 0), (5, 0)], vec![]]);
        assert_eq!(
            idx.available(5),
            HashSet::from([Rev::new(5, 0)]),
            "a tombstone at the compact revision is kept"
        );
        assert!(idx.keep(5).is_empty(), "but HashKV leaves it out");
        idx.compact(5);
        assert_eq!(idx.generations(b"foo"), vec![vec![(5, 0)], vec![]]);
        assert!(idx.available(6).is_empty());
        idx.compact(6);
        assert!(
            !idx.contains(b"foo"),
            "a key with nothing left leaves the index"
        );
    }

    #[test]
    fn version_survives_compaction_and_restore() {
        let mut idx = Index::default();
        for main in 2..=5 {
            idx.put(b"k", Rev::new(main, 0));
        }
        idx.compact(4);
        assert_eq!(idx.get(b"k", 5).unwrap().version, 4);
        assert_eq!(idx.get(b"k", 4).unwrap().version, 3);

        let mut restored = Index::default();
        restored.restore(b"k", Rev::new(4, 0), false, 2, 3);
        restored.restore(b"k", Rev::new(5, 0), false, 2, 4);
        assert_eq!(restored.get(b"k", 5), idx.get(b"k", 5));
        assert_eq!(restored.get(b"k", 4), idx.get(b"k", 4));
    }

    #[test]
    fn visit_skips_dead_keys_and_empty_ranges() {
        let mut idx = example();
        idx.put(b"bar", Rev::new(6, 0));
        let mut seen = Vec::new();
        idx.visit(b"a", None, 6, &mut |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen, vec![b"bar".to_vec()]);
        idx.visit(b"z", Some(b"a"), 6, &mut |_, _| {
            panic!("backwards range is empty")
        });
        idx.visit(b"bar", Some(b"bar"), 6, &mut |_, _| panic!("empty range"));
    }

    #[test]
    #[should_panic(expected = "not after last modification")]
    fn revisions_must_increase() {
        let mut idx = Index::default();
        idx.put(b"k", Rev::new(3, 0));
        idx.put(b"k", Rev::new(2, 0));
    }

    #[test]
    fn compaction_keeps_a_key_deleted_and_recreated_in_the_compacted_revision() {
        // One txn at revision 3: delete (3_0), then put again (3_1).
        let mut idx = Index::default();
        idx.put(b"k", Rev::new(2, 0));
        idx.tombstone(b"k", Rev::new(3, 0));
        idx.put(b"k", Rev::new(3, 1));
        assert_eq!(
            idx.available(3),
            HashSet::from([Rev::new(3, 1)]),
            "the put is the state at 3, not the tombstone before it"
        );
        assert_eq!(idx.keep(3), HashSet::from([Rev::new(3, 1)]));
        idx.compact(3);
        assert_eq!(idx.generations(b"k"), vec![vec![(3, 1)]]);
        let at3 = idx.get(b"k", 3).expect("the key exists at 3");
        assert_eq!(
            (at3.modified, at3.created.main, at3.version),
            (Rev::new(3, 1), 3, 1)
        );

        // Deleted again in the same txn: the tombstone is the state at 3, kept as usual.
        let mut idx = Index::default();
        idx.put(b"k", Rev::new(2, 0));
        idx.tombstone(b"k", Rev::new(3, 0));
        idx.put(b"k", Rev::new(3, 1));
        idx.tombstone(b"k", Rev::new(3, 2));
        assert_eq!(idx.available(3), HashSet::from([Rev::new(3, 2)]));
        assert!(idx.keep(3).is_empty(), "HashKV leaves the tombstone out");
        idx.compact(3);
        assert_eq!(idx.generations(b"k"), vec![vec![(3, 2)], vec![]]);
        assert_eq!(idx.get(b"k", 3), None);
    }
}

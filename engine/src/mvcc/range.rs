//! Reads: what a request sees of the store, and etcd's Range pipeline
//! (`server/etcdserver/txn/range.go` of v3.6 over `kvstore_txn.go`'s `rangeKeys`).
//!
//! A [`ReadView`] is the store as one request sees it. Outside a write txn that is the store at
//! the current revision. Inside a write txn that has already changed something it is the txn's
//! *head*: the current revision plus the txn's own changes, at revision `current + 1` (etcd's
//! `storeTxnWrite.Range`: `rev = beginRev + 1` once `changes` is non-empty). Historical reads
//! (`revision < head`) see only committed data.
//!
//! Range, step by step, as etcd does it:
//! 1. `revision > head` is `FutureRev`; `revision <= 0` reads at head; a revision below the
//!    compact revision is `Compacted` (reading *at* the compact revision works).
//! 2. `count_only` answers the number of live keys in the span and nothing else.
//! 3. Keys are gathered in key order; `count` is every live key in the span (limit and the
//!    revision filters do not change it). When the request sorts (any `sort_order` but NONE) or
//!    filters by revision, every key is gathered; otherwise only `limit + 1`, so `more` can be
//!    told without reading the rest.
//! 4. The `min/max_mod_revision` and `min/max_create_revision` filters drop entries (0 = off).
//! 5. Sorting: a `sort_target` other than KEY with order NONE sorts ASCEND; KEY/ASCEND and
//!    order NONE keep key order. etcd's `sort.Sort` is not stable, so the order of equal
//!    elements is unspecified there; here ties keep key order, so every replica and every rerun
//!    answers alike.
//! 6. At most `limit` entries are returned; `more` says whether entries were cut.
//! 7. `keys_only` clears values (the lease and revisions stay, as in etcd v3.6). A committed
//!    key whose latest modification is the one read is answered from the index and the lease
//!    table without reading its record (etcd 3.7 serves keys-only ranges from its index too);
//!    an older revision of a key is read from its record, which alone knows the lease it had
//!    (and so is every key when sorting by value).
//!
//! [`Counting::Skip`] is etcd 3.7's `CountTotal: false`, for the chunks after the first of a
//! range the server splits (RangeStream, large unary ranges): step 3 stops at `limit + 1`
//! keys and `count` is left 0, so a chunk costs O(limit), not O(keys in the span).

use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap};
use std::iter::Peekable;

use prost::Message;

use crate::backend::{BackendError, KvBackend};
use crate::bugs::{self, Bug};
use crate::error::{Error, EtcdError};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;

use super::key_index::{key_bounds, KeyState};
use super::MvccStore;

/// The keys a request names with `key` and `range_end`, per etcd's rules: no `range_end` is
/// the one key; `range_end == "\0"` is every key `>= key` (so `key == "\0"` too is all keys);
/// otherwise the half-open `[key, range_end)`, empty when `range_end <= key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySpan<'k> {
    One(&'k [u8]),
    From {
        start: &'k [u8],
        end: Option<&'k [u8]>,
    },
}

impl<'k> KeySpan<'k> {
    pub fn new(key: &'k [u8], range_end: &'k [u8]) -> KeySpan<'k> {
        match range_end {
            [] => KeySpan::One(key),
            [0] => KeySpan::From {
                start: key,
                end: None,
            },
            end => KeySpan::From {
                start: key,
                end: Some(end),
            },
        }
    }
}

/// A live key as a view finds it: committed (read its record from the backend) or written
/// earlier in the current txn.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Found<'a> {
    Stored(KeyState),
    Written(&'a KeyValue),
}

/// The latest state of each key a write txn changed so far; `None` means it deleted the key.
pub(crate) type Written = BTreeMap<Vec<u8>, Option<KeyValue>>;

/// The store as one request sees it (see the module docs).
#[derive(Clone, Copy)]
pub(crate) struct ReadView<'a> {
    pub store: &'a MvccStore,
    pub backend: &'a dyn KvBackend,
    /// The txn's own changes, visible at `head`; `None` outside a txn that has written.
    pub written: Option<&'a Written>,
    /// The revision a read with revision 0 sees.
    pub head: i64,
}

impl<'a> ReadView<'a> {
    /// The view of the committed store at its current revision.
    pub fn committed(store: &'a MvccStore, backend: &'a dyn KvBackend) -> ReadView<'a> {
        ReadView {
            store,
            backend,
            written: None,
            head: store.current_revision,
        }
    }

    /// The revision a read of `revision` sees, or why it cannot (step 1 of the module docs).
    pub fn resolve(&self, revision: i64) -> Result<i64, EtcdError> {
        if revision > self.head {
            return Err(EtcdError::FutureRev);
        }
        let at = if revision <= 0 { self.head } else { revision };
        let bug = bugs::active(self.store.bug, Bug::CompactRevisionRefused)
            && revision > 0
            && at == self.store.compact_revision;
        if at < self.store.compact_revision || bug {
            return Err(EtcdError::Compacted);
        }
        Ok(at)
    }

    fn written_at(&self, at: i64) -> Option<&'a Written> {
        self.written.filter(|_| at == self.head)
    }

    /// Visits the keys of `span` alive at `at`, in key order, until `visit` says stop.
    pub fn visit(
        &self,
        span: KeySpan<'_>,
        at: i64,
        visit: &mut dyn FnMut(&'a [u8], Found<'a>) -> bool,
    ) {
        let written = self.written_at(at);
        match (span, written) {
            (KeySpan::One(key), _) => {
                if let Some((key, found)) = self.find(key, at, written) {
                    visit(key, found);
                }
            }
            (KeySpan::From { start, end }, None) => {
                let index = &self.store.index;
                index.visit(start, end, at, &mut |key, state| {
                    visit(key, Found::Stored(state))
                });
            }
            (KeySpan::From { start, end }, Some(written)) => {
                self.visit_merged(start, end, at, written, visit)
            }
        }
    }

    fn find(
        &self,
        key: &[u8],
        at: i64,
        written: Option<&'a Written>,
    ) -> Option<(&'a [u8], Found<'a>)> {
        match written.and_then(|w| w.get_key_value(key)) {
            Some((key, Some(kv))) => Some((key.as_slice(), Found::Written(kv))),
            Some((_, None)) => None,
            None => {
                let (key, state) = self.store.index.get_key_value(key, at)?;
                Some((key, Found::Stored(state)))
            }
        }
    }

    /// [`ReadView::visit`] of a key range inside a txn: the txn's writes merged into the
    /// committed keys, a written key shadowing its committed state.
    fn visit_merged(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        at: i64,
        written: &'a Written,
        visit: &mut dyn FnMut(&'a [u8], Found<'a>) -> bool,
    ) {
        let Some(bounds) = key_bounds(start, end) else {
            return;
        };
        let mut pending = written.range::<[u8], _>(bounds).peekable();
        let mut go_on = true;
        self.store.index.visit(start, end, at, &mut |key, state| {
            go_on = visit_written(&mut pending, Some(key), visit)
                && match pending.next_if(|(wkey, _)| wkey.as_slice() == key) {
                    Some((_, Some(kv))) => visit(key, Found::Written(kv)),
                    Some((_, None)) => true,
                    None => visit(key, Found::Stored(state)),
                };
            go_on
        });
        if go_on {
            visit_written(&mut pending, None, visit);
        }
    }

    pub fn materialize(&self, found: Found<'_>) -> Result<KeyValue, BackendError> {
        match found {
            Found::Stored(state) => self.store.read_kv(self.backend, state.modified),
            Found::Written(kv) => Ok(kv.clone()),
        }
    }

    /// Every live key-value of `span` at `at`.
    pub fn kvs(&self, span: KeySpan<'_>, at: i64) -> Result<Vec<KeyValue>, BackendError> {
        let mut found = Vec::new();
        self.visit(span, at, &mut |_, f| {
            found.push(f);
            true
        });
        found.into_iter().map(|f| self.materialize(f)).collect()
    }

    /// The live keys of `span` at head.
    pub fn keys(&self, span: KeySpan<'_>) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        self.visit(span, self.head, &mut |key, _| {
            keys.push(key.to_vec());
            true
        });
        keys
    }

    /// A key's value at head.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, BackendError> {
        Ok(self.kvs(KeySpan::One(key), self.head)?.pop())
    }

    /// A key's `(create_revision, version)` at head, from the index alone.
    pub fn created_and_version(&self, key: &[u8]) -> Option<(i64, i64)> {
        match self.written.and_then(|w| w.get(key)) {
            Some(Some(kv)) => Some((kv.create_revision, kv.version)),
            Some(None) => None,
            None => self
                .store
                .index
                .get(key, self.head)
                .map(|s| (s.created.main, s.version)),
        }
    }

    /// A key-only copy of a key's record, built from the index when the index proves the
    /// record's fields (see step 7 of the module docs); `None` when the record must be read.
    fn key_only(&self, key: &[u8], found: Found<'_>) -> Option<KeyValue> {
        let Found::Stored(state) = found else {
            return None;
        };
        let latest = self.store.index.get(key, self.store.current_revision)?;
        if latest.modified != state.modified {
            return None;
        }
        Some(KeyValue {
            key: key.to_vec(),
            create_revision: state.created.main,
            mod_revision: state.modified.main,
            version: state.version,
            value: Vec::new(),
            lease: self.store.leases.get(key).map_or(0, |l| l.0),
        })
    }

    /// etcd's Range; the header carries only the revision read at (etcd's `rr.Rev`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        self.range_counting(req, Counting::Total)
    }

    /// [`ReadView::range`], counting the whole span or not (see the module docs).
    pub fn range_counting(
        &self,
        req: &RangeRequest,
        counting: Counting,
    ) -> Result<RangeResponse, Error> {
        let (header, count, found) = self.gather(req, counting)?;
        if req.count_only {
            return Ok(RangeResponse {
                header,
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        // Sorting by value needs the values, even when they are cleared afterwards.
        let from_index = req.keys_only && req.sort_target != SortTarget::Value as i32;
        let mut kvs = found
            .into_iter()
            .map(|(key, f)| match from_index.then(|| self.key_only(key, f)) {
                Some(Some(kv)) => Ok(kv),
                _ => self.materialize(f),
            })
            .collect::<Result<Vec<_>, _>>()?;
        kvs.retain(|kv| passes_revision_filters(req, kv));
        sort(&mut kvs, req);
        let more = req.limit > 0 && kvs.len() as i64 > req.limit;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }

    /// [`ReadView::range_counting`] with each key-value left as its encoded `mvccpb.KeyValue`
    /// (for a committed key, the backend's record as stored): what a server needs to put on
    /// the wire, without decoding a value only to encode it again. Requests that sort or
    /// filter are answered by [`ReadView::range_counting`] and encoded.
    pub fn range_encoded(
        &self,
        req: &RangeRequest,
        counting: Counting,
    ) -> Result<EncodedRange, Error> {
        let sorts = req.sort_order != SortOrder::None as i32 || req.sort_target != 0;
        if sorts || has_revision_filters(req) || req.count_only {
            let r = self.range_counting(req, counting)?;
            return Ok(EncodedRange {
                header: r.header,
                kvs: r.kvs.iter().map(Message::encode_to_vec).collect(),
                more: r.more,
                count: r.count,
            });
        }
        let (header, count, mut found) = self.gather(req, counting)?;
        let more = req.limit > 0 && found.len() as i64 > req.limit;
        if more {
            found.truncate(req.limit as usize);
        }
        // The committed records, looked up together.
        let stored: Vec<_> = found
            .iter()
            .filter_map(|(_, f)| match f {
                Found::Stored(state) if !req.keys_only => Some(state.modified),
                _ => None,
            })
            .collect();
        let mut records = self.store.read_records(self.backend, &stored)?.into_iter();
        let kvs = found
            .into_iter()
            .map(|(key, f)| match (req.keys_only, f) {
                (true, _) => {
                    let mut kv = match self.key_only(key, f) {
                        Some(kv) => kv,
                        None => self.materialize(f)?,
                    };
                    kv.value.clear();
                    Ok(kv.encode_to_vec())
                }
                (false, Found::Stored(_)) => Ok(records.next().expect("a record per stored key")),
                (false, Found::Written(kv)) => Ok(kv.encode_to_vec()),
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(EncodedRange {
            header,
            kvs,
            more,
            count,
        })
    }

    /// Steps 1-3 of the module docs: the header, the count, and the keys gathered.
    #[allow(clippy::type_complexity)]
    fn gather(
        &self,
        req: &RangeRequest,
        counting: Counting,
    ) -> Result<(Option<ResponseHeader>, i64, Vec<(&'a [u8], Found<'a>)>), Error> {
        let at = self.resolve(req.revision)?;
        let span = KeySpan::new(&req.key, &req.range_end);
        let header = Some(ResponseHeader {
            revision: self.head,
            ..ResponseHeader::default()
        });
        let mut count = 0i64;
        let mut found = Vec::new();
        let gather = gather_limit(req);
        let skip_count = counting == Counting::Skip && !req.count_only;
        self.visit(span, at, &mut |key, f| {
            count += 1;
            if !req.count_only && gather.is_none_or(|limit| found.len() < limit) {
                found.push((key, f));
            }
            !skip_count || gather.is_none_or(|limit| found.len() < limit)
        });
        if skip_count {
            count = 0;
        }
        Ok((header, count, found))
    }
}

/// A Range answer whose key-values are encoded `mvccpb.KeyValue`s (see
/// [`ReadView::range_encoded`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedRange {
    pub header: Option<ResponseHeader>,
    pub kvs: Vec<Vec<u8>>,
    pub more: bool,
    pub count: i64,
}

/// Whether a range counts every live key of its span (etcd's `CountTotal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// `count` is every live key in the span, as etcd's unary Range answers.
    Total,
    /// `count` is left 0 and the visit stops once `limit + 1` keys are gathered.
    Skip,
}

/// A txn's writes not yet merged into a range visit.
type PendingWrites<'a> = Peekable<btree_map::Range<'a, Vec<u8>, Option<KeyValue>>>;

/// Visits the pending writes of keys before `bound` (all of them without one) that still
/// exist; false once `visit` says stop.
fn visit_written<'a>(
    pending: &mut PendingWrites<'a>,
    bound: Option<&[u8]>,
    visit: &mut dyn FnMut(&'a [u8], Found<'a>) -> bool,
) -> bool {
    while let Some((key, kv)) = pending.next_if(|(key, _)| bound.is_none_or(|b| key.as_slice() < b))
    {
        if let Some(kv) = kv {
            if !visit(key, Found::Written(kv)) {
                return false;
            }
        }
    }
    true
}

fn has_revision_filters(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

/// How many keys step 3 gathers: `None` for all.
fn gather_limit(req: &RangeRequest) -> Option<usize> {
    let sorts = req.sort_order != SortOrder::None as i32;
    if req.limit <= 0 || sorts || has_revision_filters(req) {
        return None;
    }
    usize::try_from(req.limit).ok().map(|l| l.saturating_add(1))
}

fn passes_revision_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    let below = |bound: i64, v: i64| bound != 0 && v < bound;
    let above = |bound: i64, v: i64| bound != 0 && v > bound;
    !(above(req.max_mod_revision, kv.mod_revision)
        || below(req.min_mod_revision, kv.mod_revision)
        || above(req.max_create_revision, kv.create_revision)
        || below(req.min_create_revision, kv.create_revision))
}

/// Step 5 of the module docs. Unknown orders or targets (rejected by
/// [`super::validate_range`]) leave key order.
fn sort(kvs: &mut [KeyValue], req: &RangeRequest) {
    let Ok(target) = SortTarget::try_from(req.sort_target) else {
        return;
    };
    let order = match SortOrder::try_from(req.sort_order) {
        Ok(SortOrder::None) if target != SortTarget::Key => SortOrder::Ascend,
        Ok(order) => order,
        Err(_) => return,
    };
    let by_target = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match (order, target) {
        (SortOrder::None, _) | (SortOrder::Ascend, SortTarget::Key) => {}
        (SortOrder::Ascend, _) => kvs.sort_by(by_target),
        (SortOrder::Descend, _) => kvs.sort_by(|a, b| by_target(b, a)),
    }
}

//! Hand-built histories for the checkers' tests, written to read as the story they tell:
//! `run.op(1, put("k", "v1"), 0, 10, put_ok(2))` is client 1 putting k=v1 between 0 and 10 ms,
//! answered with revision 2. Times are in milliseconds.

use crate::history::{
    Bounds, Call, Compare, Event, EventKind, History, Kv, Nanos, NodeIx, Op, Outcome, RaftEvent,
    RaftRecord, Reply, TxnOp, TxnResult, Watch, WatchEnd, WatchResponse,
};

pub(crate) const MS: Nanos = 1_000_000;

#[derive(Default)]
pub(crate) struct Run {
    pub h: History,
}

impl Run {
    pub(crate) fn new() -> Run {
        Run::default()
    }

    /// Client `client` sends `call` to n0 at `t0` ms; the outcome arrives at `t1` ms.
    pub(crate) fn op(
        &mut self,
        client: u32,
        call: Call,
        t0: u64,
        t1: u64,
        outcome: Outcome,
    ) -> u64 {
        self.op_on(client, 0, call, t0, t1, outcome)
    }

    pub(crate) fn op_on(
        &mut self,
        client: u32,
        node: NodeIx,
        call: Call,
        t0: u64,
        t1: u64,
        outcome: Outcome,
    ) -> u64 {
        let id = self.h.ops.len() as u64 + 1;
        self.h.ops.push(Op {
            id,
            client,
            node,
            call,
            invoke: t0 * MS,
            complete: t1 * MS,
            outcome,
        });
        id
    }

    /// A watch of `[start, end)` from `start_revision`, created at `t0` ms with header
    /// `created`; its responses follow with [`Run::respond`].
    pub(crate) fn watch(
        &mut self,
        start: &str,
        end: &str,
        start_revision: i64,
        t0: u64,
        created: i64,
    ) -> usize {
        self.h.watches.push(Watch {
            id: self.h.watches.len() as u64 + 1,
            client: 1,
            node: 0,
            start: start.into(),
            end: end.into(),
            start_revision,
            prev_kv: false,
            filter_puts: false,
            filter_deletes: false,
            progress_notify: false,
            invoke: t0 * MS,
            created_revision: Some(created),
            responses: Vec::new(),
            end_state: WatchEnd::Open,
        });
        self.h.watches.len() - 1
    }

    pub(crate) fn respond(&mut self, watch: usize, response: WatchResponse) {
        self.h.watches[watch].responses.push(response);
    }

    pub(crate) fn raft(&mut self, t: u64, node: NodeIx, event: RaftEvent) {
        self.h.raft.push(RaftRecord {
            at: t * MS,
            node,
            event,
        });
    }

    pub(crate) fn bounds(&mut self, bounds: Bounds) {
        self.h.bounds = bounds;
    }
}

pub(crate) fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    kv_lease(key, value, create, modified, version, 0)
}

pub(crate) fn kv_lease(
    key: &str,
    value: &str,
    create: i64,
    modified: i64,
    version: i64,
    lease: i64,
) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease,
    }
}

pub(crate) fn put(key: &str, value: &str) -> Call {
    put_lease(key, value, 0)
}

pub(crate) fn put_lease(key: &str, value: &str, lease: i64) -> Call {
    Call::Put {
        key: key.into(),
        value: value.into(),
        lease,
        prev_kv: false,
    }
}

pub(crate) fn put_prev(key: &str, value: &str) -> Call {
    Call::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
        prev_kv: true,
    }
}

pub(crate) fn get(key: &str) -> Call {
    Call::Get {
        key: key.into(),
        revision: 0,
        serializable: false,
    }
}

pub(crate) fn get_serializable(key: &str) -> Call {
    Call::Get {
        key: key.into(),
        revision: 0,
        serializable: true,
    }
}

pub(crate) fn get_at(key: &str, revision: i64) -> Call {
    Call::Get {
        key: key.into(),
        revision,
        serializable: false,
    }
}

pub(crate) fn range(start: &str, end: &str) -> Call {
    Call::Range {
        start: start.into(),
        end: end.into(),
        revision: 0,
        serializable: false,
        stream: false,
    }
}

pub(crate) fn delete(key: &str) -> Call {
    Call::Delete {
        key: key.into(),
        prev_kv: false,
    }
}

/// `if mod_revision(key) == revision then put key=value else get key`.
pub(crate) fn cas(key: &str, revision: i64, value: &str) -> Call {
    Call::Txn {
        compares: vec![Compare::mod_revision(key.into(), revision)],
        success: vec![TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }],
        failure: vec![TxnOp::Get { key: key.into() }],
    }
}

pub(crate) fn grant(id: i64, ttl_secs: i64) -> Call {
    Call::LeaseGrant { id, ttl_secs }
}

pub(crate) fn keep_alive(id: i64) -> Call {
    Call::LeaseKeepAlive { id }
}

pub(crate) fn revoke(id: i64) -> Call {
    Call::LeaseRevoke { id }
}

pub(crate) fn compact(revision: i64) -> Call {
    Call::Compact { revision }
}

pub(crate) fn put_ok(revision: i64) -> Outcome {
    Outcome::Ok(Reply::Put {
        revision,
        prev: None,
    })
}

pub(crate) fn put_ok_prev(revision: i64, prev: Option<Kv>) -> Outcome {
    Outcome::Ok(Reply::Put { revision, prev })
}

pub(crate) fn get_ok(revision: i64, kvs: Vec<Kv>) -> Outcome {
    Outcome::Ok(Reply::Get { revision, kvs })
}

pub(crate) fn delete_ok(revision: i64, deleted: i64) -> Outcome {
    Outcome::Ok(Reply::Delete {
        revision,
        deleted,
        prev: Vec::new(),
    })
}

pub(crate) fn cas_ok(revision: i64, succeeded: bool, got: Option<Kv>) -> Outcome {
    let results = if succeeded {
        vec![TxnResult::Put { prev: None }]
    } else {
        vec![TxnResult::Get {
            kvs: got.into_iter().collect(),
        }]
    };
    Outcome::Ok(Reply::Txn {
        revision,
        succeeded,
        results,
    })
}

pub(crate) fn grant_ok(ttl_secs: i64) -> Outcome {
    Outcome::Ok(Reply::LeaseGrant {
        revision: 0,
        ttl_secs,
    })
}

pub(crate) fn ttl_ok(ttl_secs: i64) -> Outcome {
    Outcome::Ok(Reply::LeaseKeepAlive { ttl_secs })
}

pub(crate) fn revoke_ok(revision: i64) -> Outcome {
    Outcome::Ok(Reply::LeaseRevoke { revision })
}

pub(crate) fn compact_ok(revision: i64) -> Outcome {
    Outcome::Ok(Reply::Compact { revision })
}

pub(crate) fn lost() -> Outcome {
    Outcome::Unknown("request timed out".into())
}

pub(crate) fn failed(why: &str) -> Outcome {
    Outcome::Failed(why.into())
}

pub(crate) fn put_event(kv: Kv) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
        prev: None,
    }
}

pub(crate) fn delete_event(key: &str, revision: i64) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: Kv {
            key: key.into(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
        },
        prev: None,
    }
}

pub(crate) fn events(t: u64, header_revision: i64, events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        at: t * MS,
        header_revision,
        events,
        compact_revision: 0,
        canceled: false,
        progress: false,
    }
}

pub(crate) fn progress(t: u64, header_revision: i64) -> WatchResponse {
    WatchResponse {
        progress: true,
        ..events(t, header_revision, Vec::new())
    }
}

pub(crate) fn state(term: u64, leader: Option<u64>, is_leader: bool) -> RaftEvent {
    RaftEvent::State {
        term,
        leader,
        is_leader,
    }
}

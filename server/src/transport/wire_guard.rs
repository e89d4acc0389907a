//! Pre-decode guard for raft messages received from peers (RUSTSEC-2024-0437).
//!
//! # What it guards
//!
//! Peers send raft-rs 0.7 `eraftpb::Message`s, decoded by the `protobuf` 2.28 crate.
//! RUSTSEC-2024-0437 reports that the `protobuf` crate's parser can recurse without bound on
//! crafted input made of deeply nested (unknown) *groups* — wire types 3 and 4, start and end
//! group — and overflow the stack. [`check_raft_message`] runs on every received frame before
//! `Message::parse_from_bytes`, so no such input ever reaches `protobuf`.
//!
//! # The rule
//!
//! The bytes must be a well-formed protobuf encoding of a message that, at every level we
//! walk, contains:
//! - tags that fit in 32 bits, with field number ≥ 1 and wire type 0, 1, 2 or 5: no group
//!   tag (3 or 4) anywhere, and nothing undefined (6 or 7);
//! - varints of at most 10 bytes, fixed32/fixed64 values and length-delimited payloads that
//!   fit in what is left of the enclosing message (lengths must also fit in 32 bits);
//! - message nesting at most [`MAX_DEPTH`] levels deep, the top-level `Message` counting as 1.
//!
//! A length-delimited field is walked as a message exactly when protobuf would decode it as
//! one: the message-typed fields of the eraftpb schema (`Message.entries`,
//! `Message.snapshot`, `Snapshot.metadata`, `SnapshotMetadata.conf_state`). Every other
//! length-delimited field — `bytes` fields and unknown fields alike — is opaque, because
//! protobuf stores it as bytes without parsing it. The packed `repeated uint64` fields of
//! `ConfState` are additionally checked to be a clean run of varints.
//!
//! # Why it is sound
//!
//! protobuf's parser only goes deeper in two ways: decoding a known message-typed field
//! (which re-enters `merge_from` for the sub-message) and skipping an unknown group. We refuse
//! every group tag in every message we walk, and we walk every field that protobuf would
//! decode as a message — same field numbers, same tag interpretation (tags wider than 32 bits
//! are refused because protobuf would truncate them to a different field number) — so no
//! group reaches a place where protobuf would parse it. The eraftpb schema is acyclic and
//! needs 4 levels; the depth bound keeps the walk (and protobuf after it) bounded even if the
//! schema table here ever grows a cycle.
//!
//! The guard does not promise that decoding then succeeds (a known field with the wrong wire
//! type, for example, is left for protobuf to refuse); it only promises that what it passes
//! cannot drive protobuf into unbounded recursion.
//!
//! # Cost
//!
//! One linear pass over the bytes with an explicit stack of [`MAX_DEPTH`] frames: no
//! recursion and no allocation.

use std::fmt;

/// Deepest message nesting accepted, counting the top-level `Message` as depth 1.
///
/// The eraftpb schema needs 4 (`Message` → `Snapshot` → `SnapshotMetadata` → `ConfState`);
/// the headroom costs nothing and keeps the stack a small fixed array.
pub const MAX_DEPTH: usize = 8;

/// A varint is at most 10 bytes: 64 bits in 7-bit groups.
const MAX_VARINT_LEN: usize = 10;

/// Why a raft message's bytes were refused before decoding.
///
/// Every `offset` is a byte offset into the checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The item starting at `offset` (a varint or a fixed-width value) runs past the end of
    /// the input or of its enclosing message.
    Truncated { offset: usize },
    /// The varint starting at `offset` has a continuation bit on its 10th byte.
    VarintTooLong { offset: usize },
    /// The tag at `offset` has field number 0, which protobuf never assigns.
    FieldZero { offset: usize },
    /// The tag at `offset` does not fit in 32 bits; protobuf would silently truncate it into
    /// a different field number, so the walk could not agree with the decoder.
    TagOutOfRange { offset: usize },
    /// The tag at `offset` has wire type 6 or 7, which do not exist.
    BadWireType { offset: usize, wire_type: u8 },
    /// The tag at `offset` starts or ends a group (wire type 3 or 4) for `field`.
    Group { offset: usize, field: u32 },
    /// The length at `offset` claims `len` bytes but only `remaining` are left in the
    /// enclosing message.
    LengthOverrun {
        offset: usize,
        len: u64,
        remaining: usize,
    },
    /// The length at `offset` does not fit in 32 bits (protobuf reads some lengths as 32-bit
    /// and would truncate it).
    LengthTooLarge { offset: usize, len: u64 },
    /// The sub-message whose tag is at `offset` would be nested `depth` levels deep, more
    /// than [`MAX_DEPTH`].
    TooDeep { offset: usize, depth: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::Truncated { offset } => write!(
                f,
                "truncated item at byte {offset} (runs past the end of its message)"
            ),
            WireError::VarintTooLong { offset } => {
                write!(f, "varint at byte {offset} is longer than 10 bytes")
            }
            WireError::FieldZero { offset } => write!(f, "field number 0 at byte {offset}"),
            WireError::TagOutOfRange { offset } => {
                write!(f, "tag at byte {offset} does not fit in 32 bits")
            }
            WireError::BadWireType { offset, wire_type } => {
                write!(f, "invalid wire type {wire_type} at byte {offset}")
            }
            WireError::Group { offset, field } => write!(
                f,
                "group field {field} at byte {offset} (groups are refused)"
            ),
            WireError::LengthOverrun {
                offset,
                len,
                remaining,
            } => write!(
                f,
                "length {len} at byte {offset} overruns its message ({remaining} bytes left)"
            ),
            WireError::LengthTooLarge { offset, len } => {
                write!(f, "length {len} at byte {offset} does not fit in 32 bits")
            }
            WireError::TooDeep { offset, depth } => write!(
                f,
                "message at byte {offset} nested {depth} deep (limit {MAX_DEPTH})"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Checks the protobuf wire format of an `eraftpb::Message`.
///
/// Call it on every raft message received from a peer, before
/// `Message::parse_from_bytes`; see the module docs for the rule and why it suffices.
///
/// # Errors
///
/// The first violation found, in byte order: any group tag, malformed tag, varint or
/// length, or nesting deeper than [`MAX_DEPTH`]. Refused bytes must not be decoded.
pub fn check_raft_message(bytes: &[u8]) -> Result<(), WireError> {
    walk(bytes, eraftpb_payload)
}

/// The eraftpb message types that have fields worth descending into or checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message,
    Entry,
    Snapshot,
    SnapshotMetadata,
    ConfState,
}

/// How a length-delimited field's payload is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// A sub-message protobuf will parse: walk it.
    Message(Kind),
    /// A packed `repeated uint64`: a run of varints, parsed by protobuf without recursion.
    PackedVarints,
    /// Stored as bytes by protobuf (a `bytes` field or an unknown field): skip it.
    Opaque,
}

/// Maps a length-delimited field of a message type to how protobuf will read it.
type Schema = fn(Kind, u32) -> Payload;

/// raft-rs 0.7 `proto/eraftpb.proto`, as far as length-delimited fields go.
///
/// Only message-typed fields must be listed for soundness: anything missing here would be
/// skipped as opaque while protobuf parses it. Entry has no message fields (its `data` and
/// `context` are `bytes`, even when `data` holds an encoded `ConfChange`).
fn eraftpb_payload(kind: Kind, field: u32) -> Payload {
    match (kind, field) {
        (Kind::Message, 7) => Payload::Message(Kind::Entry),
        (Kind::Message, 9) => Payload::Message(Kind::Snapshot),
        (Kind::Snapshot, 2) => Payload::Message(Kind::SnapshotMetadata),
        (Kind::SnapshotMetadata, 1) => Payload::Message(Kind::ConfState),
        // voters, learners, voters_outgoing, learners_next.
        (Kind::ConfState, 1..=4) => Payload::PackedVarints,
        _ => Payload::Opaque,
    }
}

/// One message being walked: its type and the offset just past its last byte.
#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: Kind,
    end: usize,
}

/// The explicit stack replacing recursion: fixed size, so no input can make it allocate.
struct Stack {
    frames: [Frame; MAX_DEPTH],
    /// Frames in use; always at least 1 (the top-level message).
    len: usize,
}

impl Stack {
    fn new(root: Frame) -> Self {
        Stack {
            frames: [root; MAX_DEPTH],
            len: 1,
        }
    }

    fn top(&self) -> Frame {
        self.frames[self.len - 1]
    }

    /// Enters a sub-message whose tag is at `offset`.
    fn push(&mut self, frame: Frame, offset: usize) -> Result<(), WireError> {
        if self.len == MAX_DEPTH {
            return Err(WireError::TooDeep {
                offset,
                depth: self.len + 1,
            });
        }
        self.frames[self.len] = frame;
        self.len += 1;
        Ok(())
    }

    /// Leaves the current sub-message; false once only the top-level message is left.
    fn pop(&mut self) -> bool {
        if self.len == 1 {
            return false;
        }
        self.len -= 1;
        true
    }
}

/// Walks `bytes` as a top-level `Message`, descending as `schema` says.
///
/// Invariant: `pos <= top().end <= bytes.len()`, and every read is bounded by `top().end`,
/// so a sub-message can never read into its parent's remaining bytes.
fn walk(bytes: &[u8], schema: Schema) -> Result<(), WireError> {
    let mut stack = Stack::new(Frame {
        kind: Kind::Message,
        end: bytes.len(),
    });
    let mut pos = 0;
    loop {
        let frame = stack.top();
        if pos == frame.end {
            // A sub-message ends exactly where its length said; resume its parent there.
            if !stack.pop() {
                return Ok(());
            }
            continue;
        }
        pos = step(bytes, pos, frame, &mut stack, schema)?;
    }
}

/// The four wire types that are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    LengthDelimited,
    Fixed32,
}

/// Checks one field of `frame` starting at `pos` and returns where the next field starts
/// (which is inside the pushed sub-message when the field is one).
fn step(
    bytes: &[u8],
    pos: usize,
    frame: Frame,
    stack: &mut Stack,
    schema: Schema,
) -> Result<usize, WireError> {
    let (field, wire, value_at) = read_tag(bytes, pos, frame.end)?;
    match wire {
        Wire::Varint => read_varint(bytes, value_at, frame.end).map(|(_, next)| next),
        Wire::Fixed64 => skip_fixed(value_at, 8, frame.end),
        Wire::Fixed32 => skip_fixed(value_at, 4, frame.end),
        Wire::LengthDelimited => {
            let (start, end) = read_length(bytes, value_at, frame.end)?;
            match schema(frame.kind, field) {
                Payload::Message(kind) => {
                    stack.push(Frame { kind, end }, pos)?;
                    Ok(start)
                }
                Payload::PackedVarints => {
                    check_packed_varints(bytes, start, end)?;
                    Ok(end)
                }
                Payload::Opaque => Ok(end),
            }
        }
    }
}

/// Reads the tag at `pos`: (field number, wire type, offset of the value).
fn read_tag(bytes: &[u8], pos: usize, end: usize) -> Result<(u32, Wire, usize), WireError> {
    let (tag, next) = read_varint(bytes, pos, end)?;
    // protobuf reads tags as varint32, dropping high bits; refuse rather than guess.
    let tag = u32::try_from(tag).map_err(|_| WireError::TagOutOfRange { offset: pos })?;
    let field = tag >> 3;
    if field == 0 {
        return Err(WireError::FieldZero { offset: pos });
    }
    let wire = match tag & 7 {
        0 => Wire::Varint,
        1 => Wire::Fixed64,
        2 => Wire::LengthDelimited,
        5 => Wire::Fixed32,
        3 | 4 => return Err(WireError::Group { offset: pos, field }),
        // Only 6 and 7 are left; `as u8` is exact for a 3-bit value.
        other => {
            return Err(WireError::BadWireType {
                offset: pos,
                wire_type: other as u8,
            })
        }
    };
    Ok((field, wire, next))
}

/// Reads the varint at `pos`, not past `end`: (value, offset after it).
///
/// Like protobuf, bits beyond 64 in a 10th byte are dropped rather than refused.
fn read_varint(bytes: &[u8], pos: usize, end: usize) -> Result<(u64, usize), WireError> {
    let mut value = 0u64;
    for i in 0..MAX_VARINT_LEN {
        let at = pos + i;
        let byte = match bytes.get(at) {
            Some(&b) if at < end => b,
            _ => return Err(WireError::Truncated { offset: pos }),
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, at + 1));
        }
    }
    Err(WireError::VarintTooLong { offset: pos })
}

/// Skips a fixed-width value of `width` bytes at `pos`, not past `end`.
fn skip_fixed(pos: usize, width: usize, end: usize) -> Result<usize, WireError> {
    if end - pos < width {
        return Err(WireError::Truncated { offset: pos });
    }
    Ok(pos + width)
}

/// Reads the length at `pos` and bounds the payload by `end`: (payload start, payload end).
fn read_length(bytes: &[u8], pos: usize, end: usize) -> Result<(usize, usize), WireError> {
    let (len, start) = read_varint(bytes, pos, end)?;
    // protobuf reads `bytes` and unknown-field lengths as varint32, dropping high bits.
    if len > u64::from(u32::MAX) {
        return Err(WireError::LengthTooLarge { offset: pos, len });
    }
    let remaining = end - start;
    match usize::try_from(len) {
        Ok(n) if n <= remaining => Ok((start, start + n)),
        _ => Err(WireError::LengthOverrun {
            offset: pos,
            len,
            remaining,
        }),
    }
}

/// Checks that `bytes[start..end]` is a whole number of varints, as a packed field must be.
fn check_packed_varints(bytes: &[u8], start: usize, end: usize) -> Result<(), WireError> {
    let mut pos = start;
    while pos < end {
        pos = read_varint(bytes, pos, end)?.1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    // --- A tiny protobuf encoder, enough to build eraftpb messages by hand. ---

    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LEN: u8 = 2;
    const START_GROUP: u8 = 3;
    const END_GROUP: u8 = 4;
    const FIXED32: u8 = 5;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    fn field_varint(out: &mut Vec<u8>, field: u32, v: u64) {
        tag(out, field, VARINT);
        varint(out, v);
    }

    fn field_bytes(out: &mut Vec<u8>, field: u32, body: &[u8]) {
        tag(out, field, LEN);
        varint(out, body.len() as u64);
        out.extend_from_slice(body);
    }

    fn entry(term: u64, index: u64, data: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        field_varint(&mut e, 1, 0); // entry_type
        field_varint(&mut e, 2, term);
        field_varint(&mut e, 3, index);
        field_bytes(&mut e, 4, data);
        field_bytes(&mut e, 6, b"ctx"); // context
        field_varint(&mut e, 5, 1); // sync_log
        e
    }

    fn conf_state() -> Vec<u8> {
        let mut c = Vec::new();
        // voters, packed.
        let mut packed = Vec::new();
        for id in [1u64, 2, 300, u64::MAX] {
            varint(&mut packed, id);
        }
        field_bytes(&mut c, 1, &packed);
        // learners, unpacked.
        field_varint(&mut c, 2, 4);
        field_varint(&mut c, 2, 5);
        field_bytes(&mut c, 3, &[]); // voters_outgoing, empty packed
        field_varint(&mut c, 5, 1); // auto_leave
        c
    }

    fn snapshot_metadata(conf_state: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        field_bytes(&mut m, 1, conf_state);
        field_varint(&mut m, 2, 90);
        field_varint(&mut m, 3, 4);
        m
    }

    fn snapshot(metadata: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        field_bytes(&mut s, 1, b"snapshot data");
        field_bytes(&mut s, 2, metadata);
        s
    }

    /// A top-level `Message` around the given entries and snapshot.
    fn message(entries: &[Vec<u8>], snapshot: Option<&[u8]>) -> Vec<u8> {
        let mut m = Vec::new();
        field_varint(&mut m, 1, 3); // MsgAppend
        field_varint(&mut m, 2, 2); // to
        field_varint(&mut m, 3, 1); // from
        field_varint(&mut m, 4, 5); // term
        field_varint(&mut m, 5, 4); // log_term
        field_varint(&mut m, 6, 100); // index
        for e in entries {
            field_bytes(&mut m, 7, e);
        }
        field_varint(&mut m, 8, 99); // commit
        if let Some(s) = snapshot {
            field_bytes(&mut m, 9, s);
        }
        field_varint(&mut m, 10, 0); // reject
        field_varint(&mut m, 11, 0); // reject_hint
        field_bytes(&mut m, 12, b"context"); // context
        field_varint(&mut m, 13, 0); // request_snapshot
        field_varint(&mut m, 14, 0); // deprecated_priority
        field_varint(&mut m, 15, 4); // commit_term
        field_varint(&mut m, 16, (-1i64) as u64); // priority: int64, 10-byte varint
        m
    }

    fn valid_message() -> Vec<u8> {
        let entries = [entry(5, 101, b"put k v"), entry(5, 102, &[0x0b; 32])];
        message(&entries, Some(&snapshot(&snapshot_metadata(&conf_state()))))
    }

    /// A group that is opened, holds a field, and is closed: what an old proto2 peer sends.
    fn group(field: u32) -> Vec<u8> {
        let mut g = Vec::new();
        tag(&mut g, field, START_GROUP);
        field_varint(&mut g, 1, 7);
        tag(&mut g, field, END_GROUP);
        g
    }

    fn group_error(bytes: &[u8]) -> (usize, u32) {
        match check_raft_message(bytes) {
            Err(WireError::Group { offset, field }) => (offset, field),
            other => panic!("expected a group error, got {other:?}"),
        }
    }

    // --- Accepted ---

    #[test]
    fn empty_message_is_accepted() {
        assert_eq!(check_raft_message(&[]), Ok(()));
    }

    #[test]
    fn realistic_append_with_snapshot_is_accepted() {
        assert_eq!(check_raft_message(&valid_message()), Ok(()));
    }

    #[test]
    fn unknown_non_group_fields_are_accepted_at_every_level() {
        let mut extra = Vec::new();
        field_varint(&mut extra, 100, 1);
        tag(&mut extra, 101, FIXED64);
        extra.extend_from_slice(&[0; 8]);
        tag(&mut extra, 102, FIXED32);
        extra.extend_from_slice(&[0; 4]);
        field_bytes(&mut extra, 103, b"opaque");
        let with = |mut body: Vec<u8>| {
            body.extend_from_slice(&extra);
            body
        };
        let entries = [with(entry(1, 1, b"x"))];
        let snap = with(snapshot(&with(snapshot_metadata(&with(conf_state())))));
        let msg = with(message(&entries, Some(&snap)));
        assert_eq!(check_raft_message(&msg), Ok(()));
    }

    #[test]
    fn groups_inside_opaque_payloads_are_accepted() {
        // protobuf keeps these as bytes and never parses them, so they cannot recurse.
        let nested = vec![0x0b; 1000];
        let mut msg = Vec::new();
        field_bytes(&mut msg, 99, &nested); // unknown length-delimited field
        field_bytes(&mut msg, 12, &nested); // Message.context
        field_bytes(&mut msg, 7, &entry(1, 1, &nested)); // Entry.data
        let mut snap = Vec::new();
        field_bytes(&mut snap, 1, &nested); // Snapshot.data
        field_bytes(&mut msg, 9, &snap);
        assert_eq!(check_raft_message(&msg), Ok(()));
    }

    #[test]
    fn ten_byte_varint_is_accepted() {
        let mut msg = Vec::new();
        field_varint(&mut msg, 4, u64::MAX);
        assert_eq!(msg.len(), 11); // 1-byte tag + 10-byte value
        assert_eq!(check_raft_message(&msg), Ok(()));
    }

    #[test]
    fn empty_sub_messages_are_accepted() {
        let msg = message(&[Vec::new()], Some(&snapshot(&snapshot_metadata(&[]))));
        assert_eq!(check_raft_message(&msg), Ok(()));
    }

    // --- Groups refused ---

    #[test]
    fn group_at_top_level_is_refused() {
        let mut msg = Vec::new();
        field_varint(&mut msg, 2, 2);
        let at = msg.len();
        msg.extend_from_slice(&group(5));
        assert_eq!(group_error(&msg), (at, 5));
    }

    #[test]
    fn lone_end_group_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 9, END_GROUP);
        assert_eq!(group_error(&msg), (0, 9));
    }

    #[test]
    fn group_on_a_known_message_field_number_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 7, START_GROUP);
        assert_eq!(group_error(&msg), (0, 7));
    }

    #[test]
    fn group_inside_entry_is_refused() {
        let mut e = entry(1, 1, b"x");
        e.extend_from_slice(&group(40));
        let msg = message(&[entry(1, 0, b"ok"), e], None);
        let (offset, field) = group_error(&msg);
        assert_eq!(field, 40);
        assert_eq!(msg[offset], (40 << 3 | 3) as u8 | 0x80);
    }

    #[test]
    fn group_inside_snapshot_metadata_is_refused() {
        let mut meta = snapshot_metadata(&conf_state());
        meta.extend_from_slice(&group(6));
        let msg = message(&[], Some(&snapshot(&meta)));
        assert_eq!(group_error(&msg).1, 6);
    }

    #[test]
    fn group_inside_conf_state_is_refused() {
        let mut cs = conf_state();
        cs.extend_from_slice(&group(7));
        let msg = message(&[], Some(&snapshot(&snapshot_metadata(&cs))));
        let (offset, field) = group_error(&msg);
        assert_eq!(field, 7);
        assert_eq!(msg[offset], 7 << 3 | 3);
    }

    #[test]
    fn rustsec_payload_of_nested_groups_is_refused_quickly() {
        // The advisory's shape: start-group tags nested 10,000 deep, at the top level and
        // inside a sub-message protobuf would parse.
        let nested = vec![0x0b; 10_000]; // field 1, start group
        let mut in_entry = Vec::new();
        field_bytes(&mut in_entry, 7, &nested);
        let started = Instant::now();
        assert_eq!(group_error(&nested), (0, 1));
        // Tag (1 byte) + 2-byte length, then the first group tag.
        assert_eq!(group_error(&in_entry), (3, 1));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    // --- Malformed wire format refused ---

    #[test]
    fn truncated_varint_is_refused() {
        let mut msg = Vec::new();
        field_varint(&mut msg, 2, 2);
        tag(&mut msg, 4, VARINT);
        msg.push(0x80); // continuation bit, then nothing
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::Truncated { offset: 3 })
        );
    }

    #[test]
    fn missing_value_is_refused() {
        assert_eq!(
            check_raft_message(&[0x08]),
            Err(WireError::Truncated { offset: 1 })
        );
    }

    #[test]
    fn truncated_tag_is_refused() {
        assert_eq!(
            check_raft_message(&[0x80]),
            Err(WireError::Truncated { offset: 0 })
        );
    }

    #[test]
    fn truncated_length_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 12, LEN);
        msg.push(0xff); // length varint cut short
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::Truncated { offset: 1 })
        );
    }

    #[test]
    fn truncated_fixed_values_are_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 50, FIXED64);
        msg.extend_from_slice(&[0; 7]);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::Truncated { offset: 2 })
        );
        let mut msg = Vec::new();
        tag(&mut msg, 5, FIXED32);
        msg.extend_from_slice(&[0; 3]);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::Truncated { offset: 1 })
        );
    }

    #[test]
    fn length_past_end_of_input_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 12, LEN);
        varint(&mut msg, 10);
        msg.extend_from_slice(b"short");
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::LengthOverrun {
                offset: 1,
                len: 10,
                remaining: 5
            })
        );
    }

    #[test]
    fn length_overrunning_enclosing_snapshot_is_refused() {
        // Snapshot.data claims 10 bytes, but the Snapshot itself holds only 2 + 4; the
        // message's bytes after the Snapshot must not count.
        let mut snap = Vec::new();
        tag(&mut snap, 1, LEN);
        varint(&mut snap, 10);
        snap.extend_from_slice(b"abcd");
        let mut msg = Vec::new();
        field_bytes(&mut msg, 9, &snap);
        field_bytes(&mut msg, 12, b"plenty of trailing bytes here");
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::LengthOverrun {
                offset: 3,
                len: 10,
                remaining: 4
            })
        );
    }

    #[test]
    fn varint_overrunning_enclosing_entry_is_refused() {
        // The Entry ends in the middle of a varint that the next top-level bytes would
        // "complete" if the bound were not enforced.
        let mut msg = Vec::new();
        tag(&mut msg, 7, LEN);
        varint(&mut msg, 2);
        msg.extend_from_slice(&[0x10, 0x80]); // term = <continues...>
        msg.push(0x01);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::Truncated { offset: 3 })
        );
    }

    #[test]
    fn field_number_zero_is_refused() {
        assert_eq!(
            check_raft_message(&[0x00, 0x01]),
            Err(WireError::FieldZero { offset: 0 })
        );
        let mut msg = Vec::new();
        field_varint(&mut msg, 4, 1);
        msg.extend_from_slice(&[0x02, 0x00]); // field 0, length-delimited
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::FieldZero { offset: 2 })
        );
    }

    #[test]
    fn wire_types_6_and_7_are_refused() {
        for wire_type in [6u8, 7] {
            let mut msg = Vec::new();
            tag(&mut msg, 3, wire_type);
            assert_eq!(
                check_raft_message(&msg),
                Err(WireError::BadWireType {
                    offset: 0,
                    wire_type
                })
            );
        }
    }

    #[test]
    fn eleven_byte_varint_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 4, VARINT);
        msg.extend_from_slice(&[0xff; 10]);
        msg.push(0x01);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::VarintTooLong { offset: 1 })
        );
    }

    #[test]
    fn tag_wider_than_32_bits_is_refused() {
        // protobuf would truncate this to field 7 (entries), length-delimited: the walk must
        // not mistake it for an unknown field and skip a payload protobuf then parses.
        let mut msg = Vec::new();
        varint(&mut msg, (1u64 << 32) | (7 << 3) | 2);
        varint(&mut msg, 1);
        msg.push(0x0b);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::TagOutOfRange { offset: 0 })
        );
    }

    #[test]
    fn length_wider_than_32_bits_is_refused() {
        let mut msg = Vec::new();
        tag(&mut msg, 99, LEN);
        varint(&mut msg, (1u64 << 32) | 1);
        msg.push(0);
        assert_eq!(
            check_raft_message(&msg),
            Err(WireError::LengthTooLarge {
                offset: 2,
                len: (1u64 << 32) | 1
            })
        );
    }

    #[test]
    fn broken_packed_conf_state_field_is_refused() {
        let mut cs = Vec::new();
        field_bytes(&mut cs, 1, &[0x01, 0x80]); // voters: 1, then a cut-short varint
        let msg = message(&[], Some(&snapshot(&snapshot_metadata(&cs))));
        assert!(matches!(
            check_raft_message(&msg),
            Err(WireError::Truncated { .. })
        ));
    }

    // --- Depth bound ---

    /// A schema in which field 1 of every message is itself a message: the acyclic eraftpb
    /// schema can never reach `MAX_DEPTH`, so the bound is exercised through this one.
    fn recursive_schema(_: Kind, field: u32) -> Payload {
        if field == 1 {
            Payload::Message(Kind::Message)
        } else {
            Payload::Opaque
        }
    }

    /// `depth` messages nested through field 1, the top level included.
    fn nested(depth: usize) -> Vec<u8> {
        let mut body = Vec::new();
        field_varint(&mut body, 2, 1);
        for _ in 1..depth {
            let mut outer = Vec::new();
            field_bytes(&mut outer, 1, &body);
            body = outer;
        }
        body
    }

    #[test]
    fn nesting_up_to_max_depth_is_accepted() {
        assert_eq!(walk(&nested(MAX_DEPTH), recursive_schema), Ok(()));
    }

    #[test]
    fn nesting_past_max_depth_is_refused() {
        let bytes = nested(MAX_DEPTH + 1);
        match walk(&bytes, recursive_schema) {
            Err(WireError::TooDeep { depth, offset }) => {
                assert_eq!(depth, MAX_DEPTH + 1);
                assert_eq!(bytes[offset], 1 << 3 | 2);
            }
            other => panic!("expected TooDeep, got {other:?}"),
        }
    }

    #[test]
    fn stack_unwinds_between_siblings() {
        // Many sibling sub-messages at depth MAX_DEPTH must not accumulate frames.
        let mut inner = nested(MAX_DEPTH - 1);
        let copy = inner.clone();
        for _ in 0..20 {
            inner.extend_from_slice(&copy);
        }
        assert_eq!(walk(&inner, recursive_schema), Ok(()));
    }

    // --- Messages ---

    #[test]
    fn display_is_one_lower_case_line() {
        let e = WireError::Group {
            offset: 17,
            field: 5,
        };
        assert_eq!(
            e.to_string(),
            "group field 5 at byte 17 (groups are refused)"
        );
        let all = [
            WireError::Truncated { offset: 1 },
            WireError::VarintTooLong { offset: 1 },
            WireError::FieldZero { offset: 1 },
            WireError::TagOutOfRange { offset: 1 },
            WireError::BadWireType {
                offset: 1,
                wire_type: 6,
            },
            e,
            WireError::LengthOverrun {
                offset: 1,
                len: 9,
                remaining: 2,
            },
            WireError::LengthTooLarge { offset: 1, len: 9 },
            WireError::TooDeep {
                offset: 1,
                depth: 9,
            },
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert!(s.starts_with(|c: char| c.is_ascii_lowercase()), "{s}");
        }
    }

    // --- Fuzzing against a recursive reference ---

    /// The same rule written the obvious, recursive way (bounded here by the input size,
    /// so fine for test inputs): the iterative walk must agree with it exactly.
    fn reference(bytes: &[u8]) -> Result<(), WireError> {
        reference_message(bytes, Kind::Message, 0, bytes.len(), 1)
    }

    fn reference_message(
        bytes: &[u8],
        kind: Kind,
        mut pos: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), WireError> {
        while pos < end {
            let tag_at = pos;
            let (field, wire, at) = read_tag(bytes, pos, end)?;
            pos = match wire {
                Wire::Varint => read_varint(bytes, at, end)?.1,
                Wire::Fixed64 => skip_fixed(at, 8, end)?,
                Wire::Fixed32 => skip_fixed(at, 4, end)?,
                Wire::LengthDelimited => {
                    let (start, stop) = read_length(bytes, at, end)?;
                    match eraftpb_payload(kind, field) {
                        Payload::Message(child) => {
                            if depth == MAX_DEPTH {
                                return Err(WireError::TooDeep {
                                    offset: tag_at,
                                    depth: depth + 1,
                                });
                            }
                            reference_message(bytes, child, start, stop, depth + 1)?;
                        }
                        Payload::PackedVarints => check_packed_varints(bytes, start, stop)?,
                        Payload::Opaque => {}
                    }
                    stop
                }
            };
        }
        Ok(())
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Mostly bytes that mean something here (known tags, groups, small lengths,
        /// continuation bits), so random inputs get past the first field.
        fn byte(&mut self) -> u8 {
            const INTERESTING: [u8; 16] = [
                0x08, 0x0a, 0x0b, 0x0c, 0x12, 0x3a, 0x4a, 0x0d, 0x09, 0x00, 0x01, 0x02, 0x04, 0x80,
                0xff, 0x07,
            ];
            if self.next() & 1 == 0 {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }
    }

    fn agree(bytes: &[u8]) -> bool {
        let got = check_raft_message(bytes);
        assert_eq!(got, reference(bytes), "input {bytes:02x?}");
        got.is_ok()
    }

    #[test]
    fn fuzz_random_bytes() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = rng.below(65);
            let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if agree(&bytes) {
                accepted += 1;
            }
        }
        // Sanity: the generator reaches both outcomes.
        assert!(accepted > 0 && accepted < 20_000, "accepted {accepted}");
    }

    #[test]
    fn fuzz_mutations_of_valid_message() {
        let valid = valid_message();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut refused = 0;
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(3) {
                    0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
                    1 => bytes.insert(at, rng.byte()),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(rng.byte()),
                }
            }
            if !agree(&bytes) {
                refused += 1;
            }
        }
        assert!(refused > 0 && refused < 20_000, "refused {refused}");
    }

    #[test]
    fn every_prefix_of_valid_message_is_handled() {
        let valid = valid_message();
        for end in 0..=valid.len() {
            agree(&valid[..end]);
        }
    }
}

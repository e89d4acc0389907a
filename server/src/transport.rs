//! Peer transport: raft messages between members over ordered TCP streams.
//!
//! Each member dials every peer it sends to and keeps one outgoing stream per peer; peers'
//! incoming streams are read by the listener. A stream opens with a `Hello` naming the cluster
//! and both members, so a member of another cluster (or a stale address) is refused at once.
//! Messages to one peer go out in the order sent. A peer that cannot be reached is redialed
//! with exponential back-off (50 ms → 2 s), and the engine is told (`Unreachable`) so raft
//! probes instead of streaming appends. A full send queue drops the message (raft retries),
//! it never blocks the driver. Snapshots travel as chunks of at most [`CHUNK_BYTES`], and the
//! engine learns whether the whole snapshot got through (`SnapshotSent`).
//!
//! The same listener answers `MembersRequest`: a member joining an existing cluster
//! (`--initial-cluster-state existing`) asks a peer for the member list to learn its own id,
//! as etcd fetches `/members` from its peers.
//!
//! Frame: `u32` big-endian length of what follows, a kind byte, the payload.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest frame a peer may send (a chunk of a snapshot or a batch of entries).
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Snapshot chunk size.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Messages queued per peer before new ones are dropped.
const QUEUE_LEN: usize = 4096;

const KIND_HELLO: u8 = 1;
const KIND_RAFT: u8 = 2;
const KIND_SNAPSHOT_CHUNK: u8 = 3;
const KIND_MEMBERS_REQUEST: u8 = 4;
const KIND_MEMBERS_RESPONSE: u8 = 5;

/// What the transport reports to the driver.
#[derive(Debug)]
pub enum PeerEvent {
    Message(Box<Message>),
    Unreachable(NodeId),
    SnapshotSent { to: NodeId, ok: bool },
}

/// Answers a joining member's `MembersRequest` with the current member list.
pub type MembersSource = Arc<dyn Fn() -> Vec<MemberRecord> + Send + Sync>;

/// The sending half, shared by the driver.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.inner.id)
            .finish()
    }
}

struct Inner {
    id: NodeId,
    cluster_id: u64,
    events: mpsc::UnboundedSender<PeerEvent>,
    peers: Mutex<HashMap<NodeId, Peer>>,
}

struct Peer {
    urls: Vec<String>,
    queue: mpsc::Sender<Message>,
}

impl Transport {
    pub fn new(id: NodeId, cluster_id: u64, events: mpsc::UnboundedSender<PeerEvent>) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                id,
                cluster_id,
                events,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Queues `msg` for its recipient. Never blocks; a full queue or unknown peer drops it.
    pub fn send(&self, msg: Message) {
        let to = NodeId(msg.to);
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let peers = self.inner.peers.lock().expect("peers lock");
        let Some(peer) = peers.get(&to) else {
            drop(peers);
            self.report_failure(to, is_snapshot);
            return;
        };
        if peer.queue.try_send(msg).is_err() {
            drop(peers);
            self.report_failure(to, is_snapshot);
        }
    }

    fn report_failure(&self, to: NodeId, is_snapshot: bool) {
        let _ = self.inner.events.send(PeerEvent::Unreachable(to));
        if is_snapshot {
            let _ = self
                .inner
                .events
                .send(PeerEvent::SnapshotSent { to, ok: false });
        }
    }

    /// Makes the peer set match `peers` (every member but this one, with its peer URLs):
    /// starts a sender for new or moved peers, stops senders of removed ones.
    pub fn set_peers(&self, peers: BTreeMap<NodeId, Vec<String>>) {
        let mut current = self.inner.peers.lock().expect("peers lock");
        current.retain(|id, p| peers.get(id) == Some(&p.urls));
        for (id, urls) in peers {
            if id == self.inner.id || current.contains_key(&id) || urls.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_LEN);
            tokio::spawn(sender_loop(self.inner.clone(), id, urls.clone(), rx));
            current.insert(id, Peer { urls, queue: tx });
        }
    }
}

/// `http://host:port` (or a bare `host:port`) → `host:port`.
pub fn url_host_port(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
}

async fn sender_loop(
    inner: Arc<Inner>,
    to: NodeId,
    urls: Vec<String>,
    mut rx: mpsc::Receiver<Message>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0usize;
    'connect: loop {
        let addr = url_host_port(&urls[attempt % urls.len()]).to_string();
        attempt += 1;
        let stream = match TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %format!("{:x}", to.0), %addr, error = %e, "peer unreachable");
                // Drop what is queued: raft resends after it learns the peer is unreachable.
                if drain_as_unreachable(&inner, to, &mut rx) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut w = BufWriter::with_capacity(256 * 1024, stream);
        let mut hello = Vec::with_capacity(24);
        hello.extend_from_slice(&inner.cluster_id.to_be_bytes());
        hello.extend_from_slice(&inner.id.0.to_be_bytes());
        hello.extend_from_slice(&to.0.to_be_bytes());
        if write_frame(&mut w, KIND_HELLO, &hello).await.is_err() || w.flush().await.is_err() {
            continue 'connect;
        }
        tracing::debug!(peer = %format!("{:x}", to.0), %addr, "peer stream open");
        backoff = Duration::from_millis(50);
        loop {
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            for msg in batch {
                let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                let sent = write_message(&mut w, &msg).await;
                let sent = match sent {
                    Ok(()) if is_snapshot => w.flush().await,
                    other => other,
                };
                if is_snapshot {
                    let _ = inner.events.send(PeerEvent::SnapshotSent {
                        to,
                        ok: sent.is_ok(),
                    });
                }
                if let Err(e) = sent {
                    tracing::debug!(peer = %format!("{:x}", to.0), error = %e, "peer stream broke");
                    let _ = inner.events.send(PeerEvent::Unreachable(to));
                    continue 'connect;
                }
            }
            if let Err(e) = w.flush().await {
                tracing::debug!(peer = %format!("{:x}", to.0), error = %e, "peer stream broke");
                let _ = inner.events.send(PeerEvent::Unreachable(to));
                continue 'connect;
            }
        }
    }
}

/// Reports everything queued for an unreachable peer as lost. True once the queue is closed.
fn drain_as_unreachable(inner: &Inner, to: NodeId, rx: &mut mpsc::Receiver<Message>) -> bool {
    let mut lost = false;
    loop {
        match rx.try_recv() {
            Ok(m) => {
                lost = true;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let _ = inner.events.send(PeerEvent::SnapshotSent { to, ok: false });
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return true,
        }
    }
    if lost {
        let _ = inner.events.send(PeerEvent::Unreachable(to));
    }
    false
}

async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    w.write_all(&((payload.len() + 1) as u32).to_be_bytes())
        .await?;
    w.write_all(&[kind]).await?;
    w.write_all(payload).await
}

async fn write_message<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &Message) -> std::io::Result<()> {
    let bytes = msg.write_to_bytes().map_err(std::io::Error::other)?;
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return write_frame(w, KIND_RAFT, &bytes).await;
    }
    // A snapshot goes in chunks: first byte of each chunk says whether more follow.
    let mut chunks = bytes.chunks(CHUNK_BYTES).peekable();
    while let Some(chunk) = chunks.next() {
        let more = chunks.peek().is_some() as u8;
        w.write_all(&((chunk.len() + 2) as u32).to_be_bytes())
            .await?;
        w.write_all(&[KIND_SNAPSHOT_CHUNK, more]).await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let kind = buf[0];
    buf.remove(0);
    Ok((kind, buf))
}

/// Accepts peers' streams and hands their messages to the driver.
pub async fn serve(
    listener: TcpListener,
    id: NodeId,
    cluster_id: u64,
    events: mpsc::UnboundedSender<PeerEvent>,
    members: MembersSource,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let events = events.clone();
        let members = members.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(stream, id, cluster_id, events, members).await {
                tracing::debug!(%addr, error = %e, "peer stream closed");
            }
        });
    }
}

async fn serve_stream(
    mut stream: TcpStream,
    id: NodeId,
    cluster_id: u64,
    events: mpsc::UnboundedSender<PeerEvent>,
    members: MembersSource,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (kind, payload) = read_frame(&mut stream).await?;
    match kind {
        KIND_MEMBERS_REQUEST => {
            let list = MembersList {
                cluster_id,
                members: members(),
            };
            let mut w = BufWriter::new(stream);
            write_frame(&mut w, KIND_MEMBERS_RESPONSE, &list.encode()).await?;
            return w.flush().await;
        }
        KIND_HELLO if payload.len() == 24 => {}
        _ => return Err(invalid("stream did not open with a hello")),
    }
    let their_cluster = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    let from = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes"));
    let to = u64::from_be_bytes(payload[16..24].try_into().expect("8 bytes"));
    if their_cluster != cluster_id || to != id.0 {
        tracing::warn!(
            from = %format!("{from:x}"),
            "refusing a peer stream for cluster {their_cluster:x} member {to:x} (this is cluster {cluster_id:x} member {:x})",
            id.0
        );
        return Err(invalid("cluster or member mismatch"));
    }
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, stream);
    let mut snapshot: Vec<u8> = Vec::new();
    loop {
        let (kind, payload) = read_frame(&mut r).await?;
        let msg = match kind {
            KIND_RAFT => Message::parse_from_bytes(&payload).map_err(invalid)?,
            KIND_SNAPSHOT_CHUNK if !payload.is_empty() => {
                snapshot.extend_from_slice(&payload[1..]);
                if payload[0] == 1 {
                    continue;
                }
                let msg = Message::parse_from_bytes(&snapshot).map_err(invalid)?;
                snapshot = Vec::new();
                msg
            }
            _ => return Err(invalid("unexpected frame")),
        };
        if msg.from != from || msg.to != id.0 {
            return Err(invalid("message addressed inconsistently with its stream"));
        }
        if events.send(PeerEvent::Message(Box::new(msg))).is_err() {
            return Ok(());
        }
    }
}

fn invalid<E: std::fmt::Display>(e: E) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// A peer's answer to `MembersRequest`.
#[derive(Clone, Debug, PartialEq)]
pub struct MembersList {
    pub cluster_id: u64,
    pub members: Vec<MemberRecord>,
}

impl MembersList {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.cluster_id.to_be_bytes().to_vec();
        for m in &self.members {
            let body = m.encode_to_vec();
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    fn decode(mut buf: &[u8]) -> std::io::Result<MembersList> {
        if buf.len() < 8 {
            return Err(invalid("short members list"));
        }
        let cluster_id = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
        buf = &buf[8..];
        let mut members = Vec::new();
        while !buf.is_empty() {
            if buf.len() < 4 {
                return Err(invalid("short members list"));
            }
            let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            let body = buf
                .get(4..4 + len)
                .ok_or_else(|| invalid("short members list"))?;
            members.push(MemberRecord::decode(body).map_err(invalid)?);
            buf = &buf[4 + len..];
        }
        Ok(MembersList {
            cluster_id,
            members,
        })
    }
}

/// Asks the member at `peer_url` for the cluster's member list.
pub async fn fetch_members(peer_url: &str) -> std::io::Result<MembersList> {
    let mut stream = TcpStream::connect(url_host_port(peer_url)).await?;
    write_frame(&mut stream, KIND_MEMBERS_REQUEST, &[]).await?;
    stream.flush().await?;
    let (kind, payload) = read_frame(&mut stream).await?;
    if kind != KIND_MEMBERS_RESPONSE {
        return Err(invalid("unexpected answer to a members request"));
    }
    MembersList::decode(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_list_round_trips() {
        let list = MembersList {
            cluster_id: 7,
            members: vec![
                MemberRecord {
                    id: 1,
                    name: "a".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    client_urls: vec![],
                    is_learner: false,
                },
                MemberRecord {
                    id: 2,
                    name: "b".into(),
                    peer_urls: vec![],
                    client_urls: vec!["http://x".into()],
                    is_learner: true,
                },
            ],
        };
        assert_eq!(MembersList::decode(&list.encode()).expect("decode"), list);
    }

    #[test]
    fn urls_become_socket_addresses() {
        assert_eq!(url_host_port("http://127.0.0.1:2380"), "127.0.0.1:2380");
        assert_eq!(url_host_port("127.0.0.1:2380/"), "127.0.0.1:2380");
    }
}

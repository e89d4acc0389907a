//! Peer transport: raft messages between members over ordered TCP streams.
//!
//! Each member dials every peer it sends to and keeps one outgoing stream per peer; peers'
//! incoming streams are read by the listener. A stream opens with a `Hello` naming the cluster,
//! both members and the dialer's peer URLs, and the listener answers it before any message
//! flows:
//! - another cluster or a stale address: refused, the dialer backs off and redials;
//! - a member this one knows was removed: refused as removed, and the dialer stops (etcd's
//!   "the member has been permanently removed from the cluster"), so a removed member that is
//!   restarted from its old data dir does not go on serving stale reads;
//! - a member this one does not know yet (it joined while this one was down, and this one has
//!   not applied its addition): accepted, and its URLs kept as a *remote* so this member can
//!   answer it — without that, a restarted member behind a newly added leader never catches up.
//!
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
//!
//! TLS (etcd's peer TLS): an `https://` peer listener runs the handshake before it reads a
//! byte, with the peer port's [`PeerTls`]: a peer without a certificate from
//! `--peer-trusted-ca-file`, or whose CN is not `--peer-cert-allowed-cn`, fails the handshake,
//! so not one frame of it is decoded — no hello, no raft message, no snapshot, no member list.
//! A member dials `https://` peer URLs with TLS, presenting its peer (client) certificate.
//! Simulated builds have no TLS: [`PeerTls`] has no value there.

mod wire_guard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use strata_engine::proto::strata::internal::MemberRecord;
use strata_engine::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The peer port's TLS ([`crate::tls::PortTls`]).
#[cfg(not(madsim))]
pub type PeerTls = crate::tls::PortTls;

/// Simulated sockets carry no TLS: there is no peer TLS to configure.
#[cfg(madsim)]
#[derive(Debug)]
pub enum PeerTls {}

/// Refused peer handshakes, logged at most once a second ([`crate::tls::HandshakeLog`]).
#[cfg(not(madsim))]
type RefusedLog = crate::tls::HandshakeLog;

/// No handshake is ever refused in simulation (no TLS).
#[cfg(madsim)]
#[derive(Debug)]
struct RefusedLog;

#[cfg(madsim)]
impl RefusedLog {
    fn new() -> RefusedLog {
        RefusedLog
    }

    fn refused(&self, _port: (), remote: std::net::SocketAddr, error: &dyn std::fmt::Display) {
        tracing::warn!(%remote, %error, "rejected peer connection");
    }
}

#[cfg(not(madsim))]
const PEER_PORT: crate::tls::Port = crate::tls::Port::Peer;
#[cfg(madsim)]
const PEER_PORT: () = ();

/// A peer stream: plain TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

/// How long a peer may take over its TLS handshake.
#[cfg(not(madsim))]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `url` (`http://` plain, `https://` TLS with this member's peer certificate).
async fn connect(url: &str, tls: Option<&PeerTls>) -> std::io::Result<BoxStream> {
    let addr = url_host_port(url);
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    if !url.starts_with("https://") {
        return Ok(Box::new(tcp));
    }
    let Some(tls) = tls else {
        return Err(std::io::Error::other(format!(
            "{url} is https but this member has no peer TLS (--peer-cert-file, --peer-key-file)"
        )));
    };
    secure_dial(tls, tcp, addr).await
}

#[cfg(not(madsim))]
async fn secure_dial(tls: &PeerTls, tcp: TcpStream, addr: &str) -> std::io::Result<BoxStream> {
    let name = crate::tls::server_name(addr).map_err(std::io::Error::other)?;
    let stream = within_handshake_timeout(tls.connector().connect(name, tcp)).await?;
    Ok(Box::new(stream))
}

/// A TLS handshake, or `TimedOut` after [`HANDSHAKE_TIMEOUT`].
#[cfg(not(madsim))]
async fn within_handshake_timeout<T>(
    handshake: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

#[cfg(madsim)]
async fn secure_dial(tls: &PeerTls, _tcp: TcpStream, _addr: &str) -> std::io::Result<BoxStream> {
    match *tls {}
}

/// The server side of [`connect`]: TLS when the listener is `https://`.
#[cfg(not(madsim))]
async fn secure_accept(tls: Option<&PeerTls>, tcp: TcpStream) -> std::io::Result<BoxStream> {
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let stream = within_handshake_timeout(tls.acceptor().accept(tcp)).await?;
    Ok(Box::new(stream))
}

#[cfg(madsim)]
async fn secure_accept(tls: Option<&PeerTls>, tcp: TcpStream) -> std::io::Result<BoxStream> {
    match tls {
        None => Ok(Box::new(tcp)),
        Some(t) => match *t {},
    }
}

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
const KIND_HELLO_ACK: u8 = 6;

/// The listener's answer to a hello.
const ACK_OK: u8 = 0;
const ACK_REMOVED: u8 = 1;
const ACK_MISMATCH: u8 = 2;
/// How long a dialer waits for the answer to its hello before it treats the peer as down.
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// What the transport reports to the driver.
#[derive(Debug)]
pub enum PeerEvent {
    Message(Box<Message>),
    Unreachable(NodeId),
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
    /// A peer refused this member's stream: this member was removed from the cluster.
    RemovedFromCluster {
        by: NodeId,
    },
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
    /// This member's advertised peer URLs, sent in every hello.
    urls: Vec<String>,
    events: mpsc::UnboundedSender<PeerEvent>,
    directory: Mutex<Directory>,
    /// Peer TLS, for `https://` peer URLs (dialing and listening).
    tls: Option<Arc<PeerTls>>,
}

#[derive(Default)]
struct Directory {
    peers: HashMap<NodeId, Peer>,
    /// Members removed from the cluster: never dialed, their streams refused.
    removed: BTreeSet<NodeId>,
}

struct Peer {
    urls: Vec<String>,
    queue: mpsc::Sender<Message>,
    /// Learnt from the peer's own hello, not from the applied membership (etcd's "remote"):
    /// kept until the membership names the peer or its removal.
    remote: bool,
}

impl Transport {
    /// `urls` are this member's advertised peer URLs, told to every peer it dials.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        urls: Vec<String>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Transport {
        Transport {
            inner: Arc::new(Inner {
                id,
                cluster_id,
                urls,
                events,
                directory: Mutex::new(Directory::default()),
                tls: None,
            }),
        }
    }

    /// The same transport with peer TLS for `https://` peer URLs. Call before any send.
    pub fn with_tls(self, tls: Option<Arc<PeerTls>>) -> Transport {
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            panic!("Transport::with_tls called after the transport was shared");
        };
        Transport {
            inner: Arc::new(Inner { tls, ..inner }),
        }
    }

    /// The peer TLS this transport dials and listens with.
    pub fn tls(&self) -> Option<Arc<PeerTls>> {
        self.inner.tls.clone()
    }

    /// Queues `msg` for its recipient. Never blocks; a full queue or unknown peer drops it.
    pub fn send(&self, msg: Message) {
        let to = NodeId(msg.to);
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let peers = self.inner.directory.lock().expect("directory lock");
        let Some(peer) = peers.peers.get(&to) else {
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

    /// Makes the peer set match the membership: `peers` is every member but this one, with
    /// its peer URLs, `removed` the ids removed from the cluster. Starts a sender for new or
    /// moved peers, stops senders of peers no longer members; a remote stays until the
    /// membership names it or its removal.
    pub fn set_members(&self, peers: BTreeMap<NodeId, Vec<String>>, removed: BTreeSet<NodeId>) {
        let mut dir = self.inner.directory.lock().expect("directory lock");
        dir.peers.retain(|id, p| match peers.get(id) {
            Some(urls) => *urls == p.urls,
            None => p.remote && !removed.contains(id),
        });
        for (id, urls) in peers {
            if id == self.inner.id || urls.is_empty() {
                continue;
            }
            match dir.peers.get_mut(&id) {
                Some(peer) => peer.remote = false,
                None => {
                    let peer = self.start_sender(id, urls, false);
                    dir.peers.insert(id, peer);
                }
            }
        }
        dir.removed = removed;
    }

    /// A hello came from `id`, which this member does not know yet: keep its URLs so raft's
    /// answers reach it.
    fn learn_remote(&self, id: NodeId, urls: Vec<String>) {
        let mut dir = self.inner.directory.lock().expect("directory lock");
        if id == self.inner.id
            || urls.is_empty()
            || dir.removed.contains(&id)
            || dir.peers.contains_key(&id)
        {
            return;
        }
        tracing::info!(peer = %format!("{:x}", id.0), urls = %urls.join(","), "answering a member not yet in the applied membership");
        let peer = self.start_sender(id, urls, true);
        dir.peers.insert(id, peer);
    }

    fn is_removed(&self, id: NodeId) -> bool {
        let dir = self.inner.directory.lock().expect("directory lock");
        dir.removed.contains(&id)
    }

    fn start_sender(&self, id: NodeId, urls: Vec<String>, remote: bool) -> Peer {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(sender_loop(self.inner.clone(), id, urls.clone(), rx));
        Peer {
            urls,
            queue: tx,
            remote,
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

/// Why a dial did not give an open stream.
enum DialError {
    /// Unreachable, refused as another cluster's, or no answer: back off and redial.
    Down(String),
    /// The peer says this member was removed from the cluster.
    Removed,
}

/// Dials `url`, says hello and waits for the answer.
async fn dial(inner: &Inner, to: NodeId, url: &str) -> Result<BoxStream, DialError> {
    let mut stream = connect(url, inner.tls.as_deref())
        .await
        .map_err(|e| DialError::Down(e.to_string()))?;
    let mut hello = Vec::with_capacity(64);
    hello.extend_from_slice(&inner.cluster_id.to_be_bytes());
    hello.extend_from_slice(&inner.id.0.to_be_bytes());
    hello.extend_from_slice(&to.0.to_be_bytes());
    hello.extend_from_slice(inner.urls.join(",").as_bytes());
    let said = match write_frame(&mut stream, KIND_HELLO, &hello).await {
        Ok(()) => stream.flush().await,
        Err(e) => Err(e),
    };
    said.map_err(|e| DialError::Down(e.to_string()))?;
    let answer = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream)).await;
    match answer {
        Err(_) => Err(DialError::Down("no answer to hello".into())),
        Ok(Err(e)) => Err(DialError::Down(e.to_string())),
        Ok(Ok((KIND_HELLO_ACK, ack))) if ack == [ACK_OK] => Ok(stream),
        Ok(Ok((KIND_HELLO_ACK, ack))) if ack == [ACK_REMOVED] => Err(DialError::Removed),
        Ok(Ok((KIND_HELLO_ACK, ack))) if ack == [ACK_MISMATCH] => Err(DialError::Down(
            "refused: another cluster, or another member at that address".into(),
        )),
        Ok(Ok(_)) => Err(DialError::Down("unexpected answer to hello".into())),
    }
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
        let url = &urls[attempt % urls.len()];
        let addr = url_host_port(url).to_string();
        attempt += 1;
        let stream = match dial(&inner, to, url).await {
            Ok(s) => s,
            Err(DialError::Removed) => {
                tracing::warn!(peer = %format!("{:x}", to.0), %addr, "peer refused this member: removed from the cluster");
                let _ = inner.events.send(PeerEvent::RemovedFromCluster { by: to });
                return;
            }
            Err(DialError::Down(reason)) => {
                tracing::debug!(peer = %format!("{:x}", to.0), %addr, %reason, "peer unreachable");
                // Drop what is queued: raft resends after it learns the peer is unreachable.
                if drain_as_unreachable(&inner, to, &mut rx) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut w = BufWriter::with_capacity(256 * 1024, stream);
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

/// Accepts peers' streams and hands their messages to the driver; `secure` (an `https://`
/// listener) runs the TLS handshake first.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    members: MembersSource,
    secure: bool,
) {
    let tls = if secure { transport.tls() } else { None };
    let refused = Arc::new(RefusedLog::new());
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let transport = transport.clone();
        let members = members.clone();
        let (tls, refused) = (tls.clone(), refused.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let stream = match secure_accept(tls.as_deref(), stream).await {
                Ok(s) => s,
                Err(e) => {
                    refused.refused(PEER_PORT, addr, &e);
                    return;
                }
            };
            if let Err(e) = serve_stream(stream, transport, members).await {
                tracing::debug!(%addr, error = %e, "peer stream closed");
            }
        });
    }
}

/// A dialer's hello: who it is, whom it wants, where it can be reached.
struct Hello {
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    urls: Vec<String>,
}

impl Hello {
    fn decode(payload: &[u8]) -> std::io::Result<Hello> {
        if payload.len() < 24 {
            return Err(invalid("short hello"));
        }
        let word = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let urls = std::str::from_utf8(&payload[24..]).map_err(invalid)?;
        Ok(Hello {
            cluster_id: word(0),
            from: NodeId(word(8)),
            to: NodeId(word(16)),
            urls: urls
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

async fn serve_stream(
    mut stream: BoxStream,
    transport: Transport,
    members: MembersSource,
) -> std::io::Result<()> {
    let (id, cluster_id) = (transport.inner.id, transport.inner.cluster_id);
    let (kind, payload) = read_frame(&mut stream).await?;
    let hello = match kind {
        KIND_MEMBERS_REQUEST => {
            let list = MembersList {
                cluster_id,
                members: members(),
            };
            let mut w = BufWriter::new(stream);
            write_frame(&mut w, KIND_MEMBERS_RESPONSE, &list.encode()).await?;
            return w.flush().await;
        }
        KIND_HELLO => Hello::decode(&payload)?,
        _ => return Err(invalid("stream did not open with a hello")),
    };
    let from = hello.from;
    if hello.cluster_id != cluster_id || hello.to != id {
        tracing::warn!(
            from = %format!("{:x}", from.0),
            "refusing a peer stream for cluster {:x} member {:x} (this is cluster {cluster_id:x} member {:x})",
            hello.cluster_id, hello.to.0, id.0
        );
        answer(&mut stream, ACK_MISMATCH).await?;
        return Err(invalid("cluster or member mismatch"));
    }
    if transport.is_removed(from) {
        tracing::warn!(from = %format!("{:x}", from.0), "refusing a peer stream from a removed member");
        answer(&mut stream, ACK_REMOVED).await?;
        return Ok(());
    }
    transport.learn_remote(from, hello.urls);
    answer(&mut stream, ACK_OK).await?;
    let events = transport.inner.events.clone();
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, stream);
    read_messages(&mut r, from, id, |msg| {
        events.send(PeerEvent::Message(Box::new(msg))).is_ok()
    })
    .await
}

/// Reads raft messages (whole, or a snapshot in chunks) from an accepted stream and hands
/// each to `deliver` until it says stop (`false`) or the stream ends or breaks the protocol.
/// Every message must be addressed from the stream's dialer to this member.
async fn read_messages<R: AsyncRead + Unpin>(
    r: &mut R,
    from: NodeId,
    to: NodeId,
    mut deliver: impl FnMut(Message) -> bool,
) -> std::io::Result<()> {
    let mut snapshot: Vec<u8> = Vec::new();
    loop {
        let (kind, payload) = read_frame(r).await?;
        let msg = match kind {
            KIND_RAFT => decode_raft(&payload)?,
            KIND_SNAPSHOT_CHUNK if !payload.is_empty() => {
                snapshot.extend_from_slice(&payload[1..]);
                if payload[0] == 1 {
                    continue;
                }
                let msg = decode_raft(&snapshot)?;
                snapshot = Vec::new();
                msg
            }
            _ => return Err(invalid("unexpected frame")),
        };
        if msg.from != from.0 || msg.to != to.0 {
            return Err(invalid("message addressed inconsistently with its stream"));
        }
        if !deliver(msg) {
            return Ok(());
        }
    }
}

/// A peer's raft message, checked by [`wire_guard`] before protobuf 2.28 parses it
/// (RUSTSEC-2024-0437: crafted groups could overflow its parser's stack).
fn decode_raft(bytes: &[u8]) -> std::io::Result<Message> {
    wire_guard::check_raft_message(bytes).map_err(invalid)?;
    Message::parse_from_bytes(bytes).map_err(invalid)
}

/// Answers a hello (flushed: the dialer waits for it).
async fn answer(stream: &mut BoxStream, ack: u8) -> std::io::Result<()> {
    write_frame(stream, KIND_HELLO_ACK, &[ack]).await?;
    stream.flush().await
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

/// Asks the member at `peer_url` for the cluster's member list (over TLS for `https://`).
pub async fn fetch_members(peer_url: &str, tls: Option<&PeerTls>) -> std::io::Result<MembersList> {
    let mut stream = connect(peer_url, tls).await?;
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

    /// A transport listening on a loopback port, with the events it reports.
    async fn member(
        id: u64,
        cluster_id: u64,
    ) -> (Transport, String, mpsc::UnboundedReceiver<PeerEvent>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = Transport::new(NodeId(id), cluster_id, vec![url.clone()], tx);
        let members: MembersSource = Arc::new(Vec::new);
        tokio::spawn(serve(listener, transport.clone(), members, false));
        (transport, url, rx)
    }

    fn heartbeat(from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m
    }

    /// The next event that is not an `Unreachable` report.
    async fn next_event(rx: &mut mpsc::UnboundedReceiver<PeerEvent>) -> PeerEvent {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("an event within 10 s")
                .expect("events open");
            if !matches!(ev, PeerEvent::Unreachable(_)) {
                return ev;
            }
        }
    }

    #[tokio::test]
    async fn a_member_answers_a_peer_it_does_not_know_yet() {
        // Member 2 was down when member 1 joined: its membership does not name 1.
        let (one, _, mut one_events) = member(1, 9).await;
        let (two, two_url, mut two_events) = member(2, 9).await;
        one.set_members(
            BTreeMap::from([(NodeId(2), vec![two_url])]),
            BTreeSet::new(),
        );
        two.set_members(BTreeMap::new(), BTreeSet::new());

        one.send(heartbeat(1, 2));
        match next_event(&mut two_events).await {
            PeerEvent::Message(m) => assert_eq!((m.from, m.to), (1, 2)),
            other => panic!("expected the heartbeat, got {other:?}"),
        }
        // Two learnt one's URLs from the hello and can answer.
        two.send(heartbeat(2, 1));
        match next_event(&mut one_events).await {
            PeerEvent::Message(m) => assert_eq!((m.from, m.to), (2, 1)),
            other => panic!("expected the answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_removed_member_is_told_so() {
        let (one, one_url, _one_events) = member(1, 9).await;
        let (two, _, mut two_events) = member(2, 9).await;
        one.set_members(BTreeMap::new(), BTreeSet::from([NodeId(2)]));
        // Two restarted from an old data dir still thinks it is a member alongside one.
        two.set_members(
            BTreeMap::from([(NodeId(1), vec![one_url])]),
            BTreeSet::new(),
        );

        two.send(heartbeat(2, 1));
        match next_event(&mut two_events).await {
            PeerEvent::RemovedFromCluster { by } => assert_eq!(by, NodeId(1)),
            other => panic!("expected removal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_from_another_cluster_is_refused() {
        let (_one, one_url, mut one_events) = member(1, 9).await;
        let (two, _, mut two_events) = member(2, 10).await;
        two.set_members(
            BTreeMap::from([(NodeId(1), vec![one_url])]),
            BTreeSet::new(),
        );
        two.send(heartbeat(2, 1));
        match tokio::time::timeout(Duration::from_secs(10), two_events.recv()).await {
            Ok(Some(PeerEvent::Unreachable(to))) => assert_eq!(to, NodeId(1)),
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(one_events.try_recv().is_err(), "nothing got through");
    }

    /// The frames a dialer sends: a hello, raft messages, a snapshot in chunks.
    fn peer_seeds() -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut hello = Vec::new();
            let mut payload = 9u64.to_be_bytes().to_vec();
            payload.extend_from_slice(&1u64.to_be_bytes());
            payload.extend_from_slice(&2u64.to_be_bytes());
            payload.extend_from_slice(b"http://127.0.0.1:1");
            write_frame(&mut hello, KIND_HELLO, &payload)
                .await
                .expect("frame");
            let mut append = heartbeat(1, 2);
            append.set_msg_type(MessageType::MsgAppend);
            let entry = raft::eraftpb::Entry {
                data: b"some entry".to_vec().into(),
                ..Default::default()
            };
            append.entries = vec![entry.clone(), entry].into();
            let mut snap = heartbeat(1, 2);
            snap.set_msg_type(MessageType::MsgSnapshot);
            snap.mut_snapshot().data = vec![7u8; 3000].into();
            snap.mut_snapshot().mut_metadata().index = 5;
            snap.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            let mut stream = Vec::new();
            for m in [heartbeat(1, 2), append, snap] {
                write_message(&mut stream, &m).await.expect("message");
            }
            let mut members = Vec::new();
            write_frame(&mut members, KIND_MEMBERS_REQUEST, &[])
                .await
                .expect("frame");
            let mut both = hello.clone();
            both.extend_from_slice(&stream);
            vec![hello, stream, both, members]
        })
    }

    /// Whatever bytes a peer sends, decoding them ends in messages, a clean end or an error:
    /// never a panic, a hang or a message addressed to someone else.
    #[test]
    fn fuzz_peer_frames() {
        use proptest::prelude::*;
        let corpus = crate::fuzzing::corpus("peer", peer_seeds());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        proptest!(crate::fuzzing::config(), |(input in crate::fuzzing::inputs(corpus))| {
            rt.block_on(async {
                let mut r: &[u8] = &input;
                // The first frame as a listener reads it: a hello or a members request.
                if let Ok((kind, payload)) = read_frame(&mut r).await {
                    match kind {
                        KIND_HELLO => drop(Hello::decode(&payload)),
                        KIND_MEMBERS_RESPONSE => drop(MembersList::decode(&payload)),
                        _ => {}
                    }
                }
                let mut delivered = 0;
                let mut whole: &[u8] = &input;
                let done = tokio::time::timeout(
                    Duration::from_secs(5),
                    read_messages(&mut whole, NodeId(1), NodeId(2), |m| {
                        assert_eq!((m.from, m.to), (1, 2));
                        delivered += 1;
                        true
                    }),
                )
                .await;
                assert!(done.is_ok(), "decoding {} bytes hung", input.len());
            });
        });
    }
}

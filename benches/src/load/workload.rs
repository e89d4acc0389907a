//! The workloads, driven against any etcd v3 endpoint through the `etcd-client` crate.
//!
//! A run opens `conns` gRPC connections, connection `i` to endpoint `i mod endpoints` (as
//! etcd's `benchmark` does unless `--target-leader`), and hands client `c` connection
//! `c mod conns`. Every client first sets up what it needs (a lease, a watch, the revision it
//! will compare against), untimed; then the timed phase starts and `clients` tasks take
//! tickets `0..total` from one shared counter until none are left, so the run ends after
//! exactly `total` operations, whatever each client's share — unless `max_duration` passes
//! first: then no ticket is handed out after it, and the run ends with the operations in
//! flight (a guard that bounds a run against a slow system; the summary counts what ran). An
//! operation that fails or takes longer than [`OP_TIMEOUT`] counts as an error and leaves no
//! latency; so does every setup call, which fails the run. A client whose watch or keep-alive
//! stream broke reopens it before its next operation, untimed, as applications do: one broken
//! stream costs the operations it failed, not every ticket the client takes afterwards.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseKeepAliveStream,
    LeaseKeeper, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::keys::{self, SplitMix64};
use super::stats::{Recorder, Summary};

/// How long one operation may take before it counts as an error (etcd's client default
/// request timeout is 5 s; a stuck operation must not stall the run forever).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The shape of a run, common to all workloads (etcd `benchmark`'s flags).
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub total: u64,
    pub key_size: usize,
    pub val_size: usize,
    /// Stop handing out tickets after this long, even if fewer than `total` ran.
    pub max_duration: Option<Duration>,
    /// TLS to the members (`https://` endpoints).
    pub tls: Option<TlsFiles>,
}

/// The CA the members' certificates chain to, and the client certificate and key, if any.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TlsFiles {
    fn options(&self) -> Result<etcd_client::TlsOptions, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

#[derive(Clone, Debug)]
pub enum Workload {
    /// Puts into the shared keyspace: key `n mod key_space` for ticket `n`, or a random one.
    Put { sequential: bool, key_space: u64 },
    /// Single-key gets of random keys of `0..key_space`, written first if missing.
    Range { serializable: bool, key_space: u64 },
    /// A txn per operation: if the client's key still has the `mod_revision` the client last
    /// wrote, put it; else read it (a failed compare counts as an error: nobody else writes it).
    TxnPut,
    /// A put, timed until a watcher on another connection receives its event.
    WatchLatency,
    /// One keep-alive request and its answer on the client's keep-alive stream.
    LeaseKeepalive { ttl_secs: i64 },
}

impl Workload {
    /// The name a result is filed under.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put {
                sequential: true, ..
            } => "put-seq",
            Workload::Put {
                sequential: false, ..
            } => "put-random",
            Workload::Range {
                serializable: false,
                ..
            } => "range-linearizable",
            Workload::Range {
                serializable: true, ..
            } => "range-serializable",
            Workload::TxnPut => "txn-put",
            Workload::WatchLatency => "watch-latency",
            Workload::LeaseKeepalive { .. } => "lease-keepalive",
        }
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct Measurement {
    pub summary: Summary,
    /// A few distinct error texts, for the operator.
    pub error_samples: Vec<String>,
}

/// Connects, sets the clients up, and runs `workload` for `config.total` operations. `Err` is
/// a failure before the timed phase (no connection, a setup call refused).
pub async fn run(config: &Config, workload: &Workload) -> Result<Measurement, String> {
    assert!(!config.endpoints.is_empty(), "no endpoints");
    assert!(
        config.conns > 0 && config.clients > 0,
        "no connections or clients"
    );
    let conns = connect(config).await?;
    let value = keys::value(config.val_size);
    let key_size = config.key_size;
    match *workload {
        Workload::Put {
            sequential,
            key_space,
        } => {
            let clients = put_clients(config, &conns, sequential, key_space);
            Ok(measure(clients, config.total, config.max_duration).await)
        }
        Workload::Range {
            serializable,
            key_space,
        } => {
            preload(config, &conns, key_space).await?;
            let clients = (0..config.clients)
                .map(|c| RangeClient {
                    kv: conn_for(&conns, c).kv_client(),
                    key_size,
                    key_space,
                    options: serializable.then(|| GetOptions::new().with_serializable()),
                    rng: SplitMix64(c as u64),
                })
                .collect();
            Ok(measure(clients, config.total, config.max_duration).await)
        }
        Workload::TxnPut => {
            let mut clients = Vec::with_capacity(config.clients);
            for c in 0..config.clients {
                clients.push(TxnPutClient::new(config, &conns, c, value.clone()).await?);
            }
            Ok(measure(clients, config.total, config.max_duration).await)
        }
        Workload::WatchLatency => {
            let mut clients = Vec::with_capacity(config.clients);
            for c in 0..config.clients {
                clients.push(WatchClient::new(config, &conns, c, value.clone()).await?);
            }
            Ok(measure(clients, config.total, config.max_duration).await)
        }
        Workload::LeaseKeepalive { ttl_secs } => {
            let mut clients = Vec::with_capacity(config.clients);
            for c in 0..config.clients {
                clients.push(KeepaliveClient::new(conn_for(&conns, c), ttl_secs).await?);
            }
            Ok(measure(clients, config.total, config.max_duration).await)
        }
    }
}

/// A setup call, bounded by [`OP_TIMEOUT`] and named in its error.
async fn within<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {OP_TIMEOUT:?}")),
    }
}

/// Opens the connections, each with one untimed call so the timed phase pays no handshake.
async fn connect(config: &Config) -> Result<Vec<Client>, String> {
    let mut conns = Vec::with_capacity(config.conns);
    for i in 0..config.conns {
        let endpoint = &config.endpoints[i % config.endpoints.len()];
        let mut options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.options()?);
        }
        let client = within(
            &format!("cannot connect to {endpoint} (see --endpoints)"),
            Client::connect([endpoint], Some(options)),
        )
        .await?;
        within(
            &format!("{endpoint} does not answer a range"),
            client
                .kv_client()
                .get("warm-up", Some(GetOptions::new().with_serializable())),
        )
        .await?;
        conns.push(client);
    }
    Ok(conns)
}

fn conn_for(conns: &[Client], client: usize) -> &Client {
    &conns[client % conns.len()]
}

/// One client of a workload: runs the operation of a ticket and says how long it took.
trait ClientOp: Send + 'static {
    fn op(&mut self, ticket: u64) -> impl Future<Output = Result<Duration, String>> + Send;
}

/// The timed phase: every client takes tickets until `total` are taken or the deadline passed.
async fn measure<C: ClientOp>(
    clients: Vec<C>,
    total: u64,
    max_duration: Option<Duration>,
) -> Measurement {
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = max_duration.map(|d| start + d);
    let tasks: Vec<JoinHandle<Recorder>> = clients
        .into_iter()
        .map(|mut client| {
            let tickets = Arc::clone(&tickets);
            tokio::spawn(async move {
                let mut recorder = Recorder::since(start);
                loop {
                    let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                        return recorder;
                    }
                    match tokio::time::timeout(OP_TIMEOUT, client.op(ticket)).await {
                        Ok(Ok(latency)) => recorder.ok(latency),
                        Ok(Err(e)) => recorder.error(e),
                        Err(_) => recorder.error(format!("no answer within {OP_TIMEOUT:?}")),
                    }
                }
            })
        })
        .collect();
    let mut all = Recorder::default();
    for task in tasks {
        all.merge(task.await.expect("a client task panicked"));
    }
    let elapsed = start.elapsed();
    let error_samples = all.error_samples().to_vec();
    Measurement {
        summary: all.summary(elapsed),
        error_samples,
    }
}

struct PutClient {
    kv: KvClient,
    key_size: usize,
    value: Vec<u8>,
    key_space: u64,
    /// `None`: sequential keys.
    rng: Option<SplitMix64>,
}

fn put_clients(
    config: &Config,
    conns: &[Client],
    sequential: bool,
    key_space: u64,
) -> Vec<PutClient> {
    let value = keys::value(config.val_size);
    (0..config.clients)
        .map(|c| PutClient {
            kv: conn_for(conns, c).kv_client(),
            key_size: config.key_size,
            value: value.clone(),
            key_space,
            rng: (!sequential).then_some(SplitMix64(c as u64)),
        })
        .collect()
}

impl ClientOp for PutClient {
    async fn op(&mut self, ticket: u64) -> Result<Duration, String> {
        let n = match &mut self.rng {
            Some(rng) => rng.below(self.key_space),
            None => ticket % self.key_space,
        };
        let key = keys::key(n, self.key_size);
        let start = Instant::now();
        self.kv
            .put(key, self.value.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(start.elapsed())
    }
}

/// Writes keys `0..key_space` (untimed) unless they are all there already: a range of missing
/// keys would measure less work than a read.
async fn preload(config: &Config, conns: &[Client], key_space: u64) -> Result<(), String> {
    assert!(key_space > 0, "empty keyspace");
    let mut end = keys::key(key_space - 1, config.key_size);
    end.push(0);
    let mut kv = conns[0].kv_client();
    let present = within(
        "counting the keys to read",
        kv.get(
            keys::key(0, config.key_size),
            Some(GetOptions::new().with_range(end).with_count_only()),
        ),
    )
    .await?
    .count();
    if u64::try_from(present).unwrap_or(0) >= key_space {
        return Ok(());
    }
    let loaded = measure(put_clients(config, conns, true, key_space), key_space, None).await;
    match loaded.error_samples.first() {
        None => Ok(()),
        Some(e) => Err(format!("writing the {key_space} keys to read: {e}")),
    }
}

struct RangeClient {
    kv: KvClient,
    key_size: usize,
    key_space: u64,
    /// `None`: linearizable.
    options: Option<GetOptions>,
    rng: SplitMix64,
}

impl ClientOp for RangeClient {
    async fn op(&mut self, _ticket: u64) -> Result<Duration, String> {
        let key = keys::key(self.rng.below(self.key_space), self.key_size);
        let start = Instant::now();
        self.kv
            .get(key, self.options.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(start.elapsed())
    }
}

struct TxnPutClient {
    kv: KvClient,
    key: Vec<u8>,
    value: Vec<u8>,
    /// The key's `mod_revision` as this client last saw it (0: absent).
    mod_revision: i64,
}

impl TxnPutClient {
    async fn new(
        config: &Config,
        conns: &[Client],
        c: usize,
        value: Vec<u8>,
    ) -> Result<TxnPutClient, String> {
        let key = keys::client_key(b't', c as u64, config.key_size);
        let mut kv = conn_for(conns, c).kv_client();
        let found = within("reading the txn key", kv.get(key.clone(), None)).await?;
        let mod_revision = found.kvs().first().map_or(0, |kv| kv.mod_revision());
        Ok(TxnPutClient {
            kv,
            key,
            value,
            mod_revision,
        })
    }
}

impl ClientOp for TxnPutClient {
    async fn op(&mut self, _ticket: u64) -> Result<Duration, String> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.mod_revision,
            )])
            .and_then([TxnOp::put(self.key.clone(), self.value.clone(), None)])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let start = Instant::now();
        let response = self.kv.txn(txn).await.map_err(|e| e.to_string())?;
        let latency = start.elapsed();
        if response.succeeded() {
            self.mod_revision = response.header().ok_or("txn without header")?.revision();
            return Ok(latency);
        }
        let expected = self.mod_revision;
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                self.mod_revision = get.kvs().first().map_or(0, |kv| kv.mod_revision());
            }
        }
        Err(format!(
            "txn compare failed: mod_revision {} instead of {expected}",
            self.mod_revision
        ))
    }
}

struct WatchClient {
    kv: KvClient,
    /// The connection the watch goes through.
    watch_conn: Client,
    key: Vec<u8>,
    value: Vec<u8>,
    /// `(mod_revision, when it arrived)` of every event the watcher received; `None` after the
    /// stream broke, until the next operation reopens it.
    events: Option<mpsc::UnboundedReceiver<(i64, Instant)>>,
    reader: Option<JoinHandle<()>>,
}

impl WatchClient {
    /// Client `c` puts through its own connection and watches through the next one, so with
    /// several endpoints the event travels through replication to another member.
    async fn new(
        config: &Config,
        conns: &[Client],
        c: usize,
        value: Vec<u8>,
    ) -> Result<WatchClient, String> {
        let mut client = WatchClient {
            kv: conn_for(conns, c).kv_client(),
            watch_conn: conn_for(conns, c + 1).clone(),
            key: keys::client_key(b'w', c as u64, config.key_size),
            value,
            events: None,
            reader: None,
        };
        client.open().await?;
        Ok(client)
    }

    /// Opens the watch and waits until it is created, so no event of a later put is missed.
    async fn open(&mut self) -> Result<(), String> {
        let mut watch = self.watch_conn.watch_client();
        let mut stream = within("opening a watch", watch.watch(self.key.clone(), None)).await?;
        match within("creating a watch", stream.message()).await? {
            Some(created) if created.created() => {}
            other => return Err(format!("watch not created: {other:?}")),
        }
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let arrived = Instant::now();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    if tx.send((kv.mod_revision(), arrived)).is_err() {
                        return;
                    }
                }
            }
        });
        if let Some(old) = self.reader.replace(reader) {
            old.abort();
        }
        self.events = Some(events);
        Ok(())
    }
}

impl Drop for WatchClient {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

impl ClientOp for WatchClient {
    async fn op(&mut self, _ticket: u64) -> Result<Duration, String> {
        if self.events.is_none() {
            self.open().await?;
        }
        let start = Instant::now();
        let put = self
            .kv
            .put(self.key.clone(), self.value.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        let revision = put.header().ok_or("put without header")?.revision();
        let events = self.events.as_mut().expect("opened above");
        // The event may arrive before the put's answer; it waits in the channel. Events of
        // earlier puts (an operation that timed out) are skipped.
        loop {
            match events.recv().await {
                Some((seen, arrived)) if seen >= revision => {
                    return Ok(arrived.saturating_duration_since(start))
                }
                Some(_) => {}
                None => {
                    self.events = None;
                    return Err("watch stream ended".into());
                }
            }
        }
    }
}

struct KeepaliveClient {
    conn: Client,
    id: i64,
    /// The keep-alive stream; `None` after it broke, until the next operation reopens it.
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl KeepaliveClient {
    async fn new(conn: &Client, ttl_secs: i64) -> Result<KeepaliveClient, String> {
        let mut lease = conn.lease_client();
        let id = within("granting a lease", lease.grant(ttl_secs, None))
            .await?
            .id();
        let mut client = KeepaliveClient {
            conn: conn.clone(),
            id,
            stream: None,
        };
        client.open().await?;
        Ok(client)
    }

    async fn open(&mut self) -> Result<(), String> {
        let mut lease = self.conn.lease_client();
        let stream = within("opening a keep-alive stream", lease.keep_alive(self.id)).await?;
        self.stream = Some(stream);
        Ok(())
    }

    async fn keep_alive(&mut self) -> Result<(), String> {
        let (keeper, answers) = self.stream.as_mut().expect("stream open");
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match answers.message().await.map_err(|e| e.to_string())? {
            Some(answer) if answer.ttl() > 0 => Ok(()),
            Some(_) => Err(format!("lease {:x} not found", self.id)),
            None => Err("keep-alive stream ended".into()),
        }
    }
}

impl ClientOp for KeepaliveClient {
    async fn op(&mut self, _ticket: u64) -> Result<Duration, String> {
        if self.stream.is_none() {
            self.open().await?;
        }
        let start = Instant::now();
        let result = self.keep_alive().await;
        if result.is_err() {
            // The stream may be broken or hold an answer late; start over on a new one.
            self.stream = None;
        }
        result.map(|()| start.elapsed())
    }
}

//! The Strata node: the driver that runs the engine ([`driver`]) and its bounded watch queues
//! ([`watch_queue`]), storage ([`storage`]), the peer transport ([`transport`]), etcd's gRPC
//! services ([`api`]), the client port with the HTTP/JSON endpoints ([`http`]) and etcd's JSON
//! gateway ([`gateway`]), TLS on both ports ([`tls`]), JWT auth tokens ([`jwt`]), systemd
//! readiness ([`notify`]), etcd's snapshot files ([`snapshot`], [`bolt`]), the command line
//! ([`config`]) and member start-up ([`startup`], shared with the simulator, and [`server`]).

pub mod api;
#[cfg(not(madsim))]
pub mod authority;
pub mod bolt;
pub mod clock;
pub mod config;
#[cfg(not(madsim))]
pub mod corruption;
pub mod driver;
#[cfg(all(test, not(madsim)))]
mod fuzzing;
#[cfg(not(madsim))]
pub mod gateway;
#[cfg(not(madsim))]
pub mod http;
pub mod jwt;
#[cfg(not(madsim))]
pub mod logging;
pub mod metrics;
#[cfg(not(madsim))]
pub mod notify;
#[cfg(not(madsim))]
pub mod range_body;
pub mod read_budget;
#[cfg(not(madsim))]
pub mod server;
pub mod snapshot;
pub mod startup;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;
pub mod watch_queue;

//! cachet: a sidecar consistency proxy for Redis.
//!
//! An application points its Redis URL at cachet; cachet parses every command, decides
//! what it touches, and forwards it to the upstream Redis over a few shared, pipelined
//! connections (or a pinned one while the client is in a stateful mode).
//!
//! # Layout
//!
//! A command's life, stage by stage, with the file that owns each stage:
//!
//! | stage | file |
//! |---|---|
//! | start-up wiring and background tasks, in the order they start | `startup.rs` |
//! | accept, connection limit, drain and shutdown | `listener.rs` |
//! | TLS: acceptor and upstream connector from the configuration | `tls.rs` |
//! | a plain or TLS connection, and its two halves | `stream.rs` |
//! | one client: read, order, reply | `session/mod.rs` |
//! | where a command goes (a pure decision) | `session/dispatch.rs` |
//! | decode requests with limits (RESP2/RESP3/inline) | `resp/request.rs` |
//! | find reply frame boundaries, encode local replies | `resp/reply.rs` |
//! | command table, flags, key positions, per-command counters | `command/` |
//! | policy: renamed, disabled, denied commands; refused scripts | `policy.rs` |
//! | client logins answered by cachet (`[auth]`) | `auth.rs` |
//! | logins checked by Redis, `HELLO`, `RESET` | `session/login.rs` |
//! | glob patterns as Redis matches them | `glob.rs` |
//! | key pattern -> keyspace mode | `keyspace.rs` |
//! | session state answered locally (`SELECT`, `HELLO`, `CLIENT`) | `session/local.rs` |
//! | stateful modes on a dedicated connection (`MULTI`, subscribe, blocking) | `session/pinned.rs` |
//! | the engine: plans, replies, the fill protocol, invalidations | `engine/` |
//! | what a client's Redis user must be allowed for cachet's rewrites | `engine/acl.rs` |
//! | per-key ordering tokens | `key_lock.rs` |
//! | shared multiplexed upstream connections | `upstream/shared.rs` |
//! | connecting and the per-connection handshake | `upstream/connect.rs` |
//! | who upstream connections log in as | `upstream/login.rs` |
//! | the primary Redis Sentinel names | `upstream/sentinel.rs` |
//! | a Redis Cluster's slot map and nodes | `upstream/cluster.rs` |
//! | a session before a cluster: routing by slot, redirects, split commands | `session/cluster.rs` |
//! | what all sessions share (upstream, table, server facts) | `context.rs` |
//! | configuration: TOML schema, defaults, validation | `config/` |
//! | live reload (SIGHUP, `CACHET RELOAD`) | `reload.rs` |
//! | `CACHET INFO`/`KEYSPACE`/`EXPLAIN`/`RELOAD`/`HELP`, answered by the session | `session/admin_cmd.rs` |
//! | counters, latency histogram, Prometheus exposition | `metrics.rs` |
//! | admin HTTP: `/metrics`, `/healthz`, `/readyz` | `admin.rs` |
//!
//! The design is in `docs/` (`design.md`, `fill-protocol.md`, `security.md`,
//! `architecture.md`, `configuration.md`).
//!
//! The consistency checker (`cachet-check`) is a crate of its own in `check/`: the proxy
//! links neither its database clients nor its Redis client.

pub mod admin;
pub mod auth;
pub mod command;
pub mod config;
pub mod context;
pub mod engine;
pub mod glob;
pub mod key_lock;
pub mod keyspace;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod resp;
pub mod session;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use listener::{Server, ServerError};

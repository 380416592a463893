//! Upstream: the server pools both the proxy and the migration engine talk to. A pool's
//! servers, their pipelined connections (RESP2 and RESP3), routing by nutcracker's
//! placement, ejection and return of failing servers, and their counters; and a
//! replication client of one server (the migration's second feed of writes).
//!
//! May import: `config`, `hash`, `resp`, `command` (for counter labels). Never `migrate`
//! or `proxy`: what rides on a request to be told of its outcome (a migration's mirror
//! hook) is a [`ReplyHook`], defined here and implemented above.

mod backend;
mod counters;
mod fence;
mod hook;
mod pool;
pub mod replication;
mod version;

pub use backend::{
    BackendError, CONNECTION_NAME, CONNECTION_NAME_TEXT, ReplyResult, connection_member,
    is_cutover_connection, process_connection_name,
};
pub use counters::{ErrorKind, PoolCounters, ServerCounters};
pub use fence::SendFence;
pub use hook::ReplyHook;
pub use pool::{Pool, ReplaySlot, Route, Server, ServerState};

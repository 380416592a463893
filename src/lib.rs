//! cutover: a twemproxy-compatible Redis proxy that moves data to a new pool with no
//! downtime and no lost write.
//!
//! The library holds everything the `cutover` binary is made of, so integration tests
//! and benchmarks can reach the same code the proxy runs.

pub mod admin;
pub mod command;
pub mod config;
pub mod engine;
pub mod fleet;
pub mod hash;
pub mod logging;
pub mod migrate;
pub mod proxy;
pub mod resp;
pub mod stats;
pub mod upstream;

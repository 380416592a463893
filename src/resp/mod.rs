//! RESP: our own client request parser (with limits), the backend reply scanner, a
//! small encoder for replies the proxy makes itself, and the fields of an `INFO` reply.
//!
//! May import: nothing of the crate (the bottom layer).

pub mod encode;
mod info;
mod reply;
mod request;

pub use encode::Protocol;
pub use info::info_field;
pub use reply::{MAX_REPLY_DEPTH, ReplyError, ReplyScanner, integer};
pub use request::{Parsed, Request, RequestError, RequestLimits, RequestParser};

//! What may ride on a request to a server to be told of its outcome, the moment it is
//! known, on the connection's own task: the migration engine's mirror hooks (rule 1 of
//! the lane rules: a write's mirror event is queued when the source's reply is read,
//! before the client sees it).

use bytes::Bytes;

/// A request's companion, told when the request is written, answered, or lost.
///
/// Some hooks number the requests they ride on when they go on the wire (the migration's
/// sequence numbers, rule 2); a connection then publishes, for the migration's low-water
/// mark, a number no higher than that of its oldest numbered request still in flight.
pub trait ReplyHook: Send {
    /// Whether the request is numbered when it is written.
    fn numbered(&self) -> bool;

    /// The numbering counter's value now: a mark no higher than the number this request
    /// is about to take.
    fn counter_now(&self) -> u64;

    /// Take the request's number; called as it goes on the wire.
    fn assign_number(&mut self) -> u64;

    /// The request's number (0 until it is written).
    fn number(&self) -> u64;

    /// The request's bytes, as they go on the wire.
    fn sending(&mut self, request: Bytes);

    /// The server answered `reply` (read before anyone else sees it).
    fn on_reply(self: Box<Self>, reply: &Bytes);

    /// The request was written and its outcome is unknown (timeout, connection lost).
    fn on_unknown(self: Box<Self>);
}

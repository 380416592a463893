//! The replies a client is owed, in request order: ready ones (local replies, errors),
//! one backend's, or the parts of a split command to merge. A session keeps a queue of
//! them and writes each as soon as it and every one before it are ready; here is how one
//! is polled and turned into the bytes the client gets, and its latency taken.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::fragment::{self, MergeError, MergePlan};
use crate::command::CommandClass;
use crate::resp::encode;
use crate::upstream::{BackendError, ErrorKind, Pool, ReplyResult};

/// A reply owed to the client, in request order.
pub(super) enum Pending {
    /// Ready now (a local reply or an error).
    Ready(Bytes),
    /// Forwarded to one backend.
    Forward {
        /// The backend's reply.
        rx: oneshot::Receiver<ReplyResult>,
        /// The command's class, for latency.
        class: CommandClass,
        /// When the request was read.
        started: Instant,
    },
    /// Split across backends.
    Split {
        /// Each part's reply, filled in as they arrive.
        parts: Vec<PartState>,
        /// How to merge them.
        plan: MergePlan,
        /// When the request was read.
        started: Instant,
    },
    /// Close the connection once everything before this is written (QUIT, protocol error).
    Close,
}

/// One part of a split command.
pub(super) enum PartState {
    /// Still waiting.
    Waiting(oneshot::Receiver<ReplyResult>),
    /// Answered.
    Done(ReplyResult),
}

/// The time replies were found ready, read once however many are found in one pass: a
/// pipelining client's replies come in batches, and reading the clock for each one cost
/// more than the rest of timing it.
#[derive(Default)]
pub(super) struct Clock(Option<Instant>);

impl Clock {
    /// The time of this pass.
    pub(super) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Poll the reply at the front of the queue; its latency is taken at `clock`'s time.
pub(super) fn poll_reply(
    pool: &Pool,
    pending: &mut Pending,
    cx: &mut Context<'_>,
    clock: &mut Clock,
) -> Poll<Bytes> {
    match pending {
        Pending::Ready(bytes) => Poll::Ready(std::mem::take(bytes)),
        Pending::Close => Poll::Pending,
        Pending::Forward { rx, class, started } => match Pin::new(rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                pool.counters
                    .latency(*class, (clock.now() - *started).as_secs_f64());
                Poll::Ready(render(pool, result.unwrap_or(Err(BackendError::Reset))))
            }
        },
        Pending::Split {
            parts,
            plan,
            started,
        } => {
            let mut waiting = false;
            for part in parts.iter_mut() {
                if let PartState::Waiting(rx) = part {
                    match Pin::new(rx).poll(cx) {
                        Poll::Pending => waiting = true,
                        Poll::Ready(result) => {
                            *part = PartState::Done(result.unwrap_or(Err(BackendError::Reset)))
                        }
                    }
                }
            }
            if waiting {
                return Poll::Pending;
            }
            pool.counters
                .latency(CommandClass::Split, (clock.now() - *started).as_secs_f64());
            let replies = parts
                .drain(..)
                .map(|p| match p {
                    PartState::Done(result) => result,
                    PartState::Waiting(_) => Err(BackendError::Reset),
                })
                .collect();
            Poll::Ready(match fragment::merge(plan, replies) {
                Ok(bytes) => bytes,
                Err(MergeError::Backend(text)) => {
                    pool.counters.error(ErrorKind::Backend);
                    error_bytes(&format!("ERR {text}"))
                }
                Err(MergeError::Shape) => {
                    pool.counters.error(ErrorKind::Backend);
                    error_bytes("ERR Invalid argument")
                }
            })
        }
    }
}

/// A backend reply as the client sees it: the raw bytes, or `-ERR <reason>`.
pub(super) fn render(pool: &Pool, result: ReplyResult) -> Bytes {
    match result {
        Ok(bytes) => bytes,
        Err(error) => {
            pool.counters.error(ErrorKind::of(error));
            backend_error_bytes(error)
        }
    }
}

/// A backend error as the client sees it: `-ERR Connection refused`, or `-TRYAGAIN ...`
/// from a fenced fleet member.
pub(super) fn backend_error_bytes(error: BackendError) -> Bytes {
    error_bytes(&format!("{} {error}", error.code()))
}

/// `-text\r\n` as bytes.
pub(super) fn error_bytes(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    encode::error(&mut out, text);
    out.freeze()
}

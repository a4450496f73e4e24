//! A one-shot slot for a mutation's answer, and the future that waits on it: what a
//! [`DrivenMirror`](super::DrivenMirror)'s session holds per request, without a runtime's
//! channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::machine::{MutationError, Outcome};

type Answer = Result<Outcome, MutationError>;

#[derive(Debug, Default)]
struct Slot {
    answer: Option<Answer>,
    waker: Option<Waker>,
}

/// Where the session's answer to one request goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reply(Arc<Mutex<Slot>>);

impl Reply {
    /// Leaves the answer and wakes the caller (if it still waits).
    pub fn send(&self, answer: Answer) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            slot.answer = Some(answer);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The future that resolves with the answer.
    pub fn wait(&self) -> ReplyFuture {
        ReplyFuture(self.clone())
    }
}

/// Resolves with a request's answer.
#[derive(Debug)]
pub(crate) struct ReplyFuture(Reply);

impl Future for ReplyFuture {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let mut slot = (self.0).0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

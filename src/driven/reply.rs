//! A one-shot slot for a request's answer (a mutation's outcome, the source's last error), and
//! the future that waits on it: what a [`DrivenMirror`](super::DrivenMirror)'s session holds
//! per request, without a runtime's channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Debug)]
struct Slot<T> {
    answer: Option<T>,
    waker: Option<Waker>,
}

/// Where the session's answer to one request goes.
#[derive(Debug)]
pub(crate) struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Clone for Reply<T> {
    fn clone(&self) -> Self {
        Reply(self.0.clone())
    }
}

impl<T> Default for Reply<T> {
    fn default() -> Self {
        Reply(Arc::new(Mutex::new(Slot {
            answer: None,
            waker: None,
        })))
    }
}

impl<T> Reply<T> {
    /// Leaves the answer and wakes the caller (if it still waits).
    pub fn send(&self, answer: T) {
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
    pub fn wait(&self) -> ReplyFuture<T> {
        ReplyFuture(self.clone())
    }
}

/// Resolves with a request's answer.
#[derive(Debug)]
pub(crate) struct ReplyFuture<T>(Reply<T>);

impl<T> Future for ReplyFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
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

//! A connection's remote waits (`WhenArgs`), the driver's side: one task per wait, awaiting
//! the served source's `when_args` and handing the end to the session. A withdrawn wait's task
//! is aborted, and so is every task when the connection ends: the source's waiter goes with
//! the dropped future (on a served mirror, the wait further up is withdrawn with it). The
//! session bounds how many a client may have ([`crate::proto::config::Limits`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::{AbortHandle, JoinSet};

use super::hub::Hub;
use super::push::Outlet;
use crate::machine::Args;

/// The waits of one connection; dropping it ends them all.
#[derive(Default)]
pub(super) struct Waits {
    tasks: JoinSet<u64>,
    /// By the session's key of each wait.
    running: HashMap<u64, AbortHandle>,
}

impl Waits {
    /// Starts the wait the session handed out as `ServerEvent::WhenArgs`. The source's waiter
    /// is registered now, before anything the client sent after it runs.
    pub fn start(
        &mut self,
        hub: &Hub,
        outlet: &Arc<Outlet>,
        (id, wait): (u64, u64),
        state: &str,
        args: Args,
    ) {
        self.reap();
        let when = hub.source.when_args(state, args);
        let outlet = outlet.clone();
        let handle = self.tasks.spawn(async move {
            let result = when.await;
            outlet.lock().session.handle_wait_result(id, wait, result);
            outlet.nudge.notify_one();
            wait
        });
        self.running.insert(wait, handle);
    }

    /// Ends the wait the client withdrew (`ServerEvent::CancelWait`).
    pub fn cancel(&mut self, wait: u64) {
        if let Some(handle) = self.running.remove(&wait) {
            handle.abort();
        }
        self.reap();
    }

    /// Forgets the tasks that finished.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            if let Ok(wait) = done {
                self.running.remove(&wait);
            }
        }
    }
}

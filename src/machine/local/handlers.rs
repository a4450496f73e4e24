//! Registering a machine's handlers: negotiation and final handlers per state and for any state.

use super::*;

impl Machine {
    // ----- handlers -----

    /// Negotiation handler of a state that is about to become active (or, for a multi state,
    /// active again). Return `false` (or an error) to cancel the transition.
    pub fn on_enter<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.register_negotiation(HandlerKind::Enter, state, f)
    }

    /// Negotiation handler of a state that is about to become inactive.
    pub fn on_exit<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.register_negotiation(HandlerKind::Exit, state, f)
    }

    /// Final handler of a state that became active.
    pub fn on_state<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.register_final(HandlerKind::State, state, f)
    }

    /// Final handler of a state that became inactive.
    pub fn on_end<F, R>(&self, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.register_final(HandlerKind::End, state, f)
    }

    /// Negotiation handler of every transition that changes the clock; runs after the
    /// per-state `exit` and `enter` handlers, and only when none of them refused.
    pub fn on_any_enter<F, R>(&self, f: F)
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        let f: NegotiationFn = Arc::new(move |e| f(e).into_verdict());
        self.update_handlers(|t| t.any_enter.push(f));
    }

    /// Final handler of every transition that changed the clock; runs after the per-state ones.
    pub fn on_any_state<F, R>(&self, f: F)
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        let f: FinalFn = Arc::new(move |e| f(e).into_completion());
        self.update_handlers(|t| t.any_state.push(f));
    }

    fn register_negotiation<F, R>(
        &self,
        kind: HandlerKind,
        state: &str,
        f: F,
    ) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        let s = self
            .schema_ref()
            .index(state)
            .ok_or_else(|| UnknownState(state.to_owned()))?;
        let f: NegotiationFn = Arc::new(move |e| f(e).into_verdict());
        self.update_handlers(|t| match kind {
            HandlerKind::Enter => t.enter[s].push(f),
            _ => t.exit[s].push(f),
        });
        Ok(())
    }

    fn register_final<F, R>(&self, kind: HandlerKind, state: &str, f: F) -> Result<(), UnknownState>
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        let s = self
            .schema_ref()
            .index(state)
            .ok_or_else(|| UnknownState(state.to_owned()))?;
        let f: FinalFn = Arc::new(move |e| f(e).into_completion());
        self.update_handlers(|t| match kind {
            HandlerKind::State => t.state[s].push(f),
            _ => t.end[s].push(f),
        });
        Ok(())
    }

    fn update_handlers(&self, change: impl FnOnce(&mut HandlerTable)) {
        let mut table = lock(&self.shared.handlers);
        change(Arc::make_mut(&mut table));
    }
}

//! Changing a running machine's schema (Go's `SetSchema`): only by enlarging it at its end, so
//! that every position keeps its state and every clock, waiter and handler stays valid. The
//! number of states is the schema's version.

use super::*;

/// Why a schema change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaChangeError {
    /// A transition is running (the change was made from a handler).
    #[error("a transition is running; change the schema outside of handlers and mutations")]
    Busy,
    /// The machine was disposed.
    #[error("the machine is disposed")]
    Disposed,
    /// The new schema has no more states than the current one.
    #[error(
        "the new schema has {new} states and the current one {current}: a schema can only be \
         enlarged (add the new states at its end)"
    )]
    NotLarger {
        /// States in the current schema.
        current: usize,
        /// States in the new one.
        new: usize,
    },
    /// A current state is missing from its position in the new schema.
    #[error(
        "state {position} is {current:?} now but {new:?} in the new schema: keep the current \
         states, in their order, and add the new ones at the end"
    )]
    Reordered {
        /// The position (0-based) where the schemas differ.
        position: usize,
        /// The current schema's state there.
        current: String,
        /// The new schema's state there.
        new: String,
    },
}

impl Machine {
    /// Replaces the schema with one that has every current state at the same position and more
    /// after them (Go's `SetSchema`). Relations of the current states may change too. The new
    /// states start inactive (tick 0); waiters and handlers stay. Observers are told with a
    /// [`ClockChange`] whose `after` is longer than its `before` and whose `changed` lists the
    /// new positions, so a server serving the machine passes the new schema on.
    pub fn set_schema(&self, schema: impl Into<Arc<Schema>>) -> Result<(), SchemaChangeError> {
        let schema = schema.into();
        let (old, before, after, changed, queue_tick, observers) = {
            let mut core = self.core();
            let core = &mut *core;
            if core.disposed {
                return Err(SchemaChangeError::Disposed);
            }
            if core.processing {
                return Err(SchemaChangeError::Busy);
            }
            let current = core.schema.len();
            if schema.len() <= current {
                return Err(SchemaChangeError::NotLarger {
                    current,
                    new: schema.len(),
                });
            }
            if let Some((position, (old, new))) = core
                .schema
                .names()
                .zip(schema.names())
                .enumerate()
                .find(|(_, (old, new))| old != new)
            {
                return Err(SchemaChangeError::Reordered {
                    position,
                    current: old.to_owned(),
                    new: new.to_owned(),
                });
            }
            let before = core.ticks.clone();
            core.ticks.resize(schema.len(), 0);
            core.waiters.grow(schema.len());
            Arc::make_mut(&mut core.handlers).grow(schema.len());
            let old = std::mem::replace(&mut core.schema, schema.clone());
            debug!(machine = %self.shared.id, states = core.schema.len(), "schema enlarged");
            (
                old,
                before,
                core.ticks.clone(),
                (current..core.ticks.len()).collect::<Vec<_>>(),
                core.queue_tick,
                core.observers.snapshot(),
            )
        };
        observers.clock_changed(&ClockChange {
            source: self,
            schema: &schema,
            before: &before,
            after: &after,
            changed: &changed,
            queue_tick,
            transition: None,
        });
        let handlers = self.core().handlers.clone();
        for (_, tracer) in handlers.tracers() {
            tracer.schema_change(self, &old);
        }
        Ok(())
    }
}

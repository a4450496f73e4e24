//! Restoring a machine's state (Go's `Import`): the clock and the queue tick of an
//! [`ExportedState`] replace the machine's, as if it had run up to them. Which states may
//! import into which schema is the format's rule (`machine::export`); this file applies it to
//! the machine's core, tells its waiters and observers, and runs what queued meanwhile.
//!
//! Differs from Go: Go's `Import` swaps the clock under the machine's locks and tells no one
//! (its docs warn against importing into a machine in use); here a running transition refuses
//! the import, waiters whose condition now holds resolve, and observers hear of the new clock
//! as of any change, with no transition, so a server serving the machine pushes it on.

use tracing::info;

use super::*;
use crate::machine::export::{ExportedState, ImportError};

impl Machine {
    /// Replaces the clock and the queue tick with `state`'s (Go's `Import`). States of the
    /// schema that `state` does not list (a schema grown at its end) start at tick 0; no
    /// handler runs. Refused, changing nothing, when `state` is of another machine id or does
    /// not fit the schema (see `machine::export`), while a transition runs (import before the
    /// machine is used, or between mutations), and once disposed.
    ///
    /// Waiters whose condition holds on the new clock resolve, and observers are told of the
    /// change with no transition. Mutations submitted while the import is told run after it.
    pub fn import(&self, state: ExportedState) -> Result<(), ImportError> {
        let schema = self.schema_ref();
        let positions = state.positions(&schema)?;
        if state.id != self.shared.id {
            return Err(ImportError::OtherMachine {
                found: state.id,
                expected: self.shared.id.clone(),
            });
        }
        if state.schema_hash != schema.hash() {
            // Names decide; the relations or flags changed, or the schema grew.
            debug!(machine = %self.shared.id, "importing a state of another version of the schema");
        }
        let mut ticks = vec![0; schema.len()];
        for (&at, &tick) in positions.iter().zip(&state.ticks) {
            ticks[at] = tick;
        }
        let (before, after, changed, observers) = {
            let mut core = self.core();
            let core = &mut *core;
            if core.disposed {
                return Err(ImportError::Disposed);
            }
            // A schema enlarged since it was read is a change under way, as a transition is.
            if core.processing || !Arc::ptr_eq(&core.schema, &schema) {
                return Err(ImportError::Busy);
            }
            // The import takes the processing role, as a transition does: what is submitted
            // while observers hear of it queues, and runs after it, in order.
            core.start_processing();
            let before = std::mem::replace(&mut core.ticks, ticks);
            let queue_moved = core.queue_tick != state.queue_tick;
            core.queue_tick = state.queue_tick;
            core.order = (0..schema.len())
                .filter(|&s| is_active(core.ticks[s]))
                .collect();
            let changed: Vec<usize> = (0..schema.len())
                .filter(|&s| before[s] != core.ticks[s])
                .collect();
            core.waiters
                .clock_changed(&core.ticks, changed.iter().copied());
            core.waiters.queue_advanced(core.queue_tick);
            let observers = (queue_moved || !changed.is_empty()).then(|| core.observers.snapshot());
            (before, core.ticks.clone(), changed, observers)
        };
        self.process(|_| {
            if let Some(observers) = observers {
                observers.clock_changed(&ClockChange {
                    source: self,
                    schema: &schema,
                    before: &before,
                    after: &after,
                    changed: &changed,
                    queue_tick: state.queue_tick,
                    transition: None,
                });
            }
        });
        info!(machine = %self.shared.id, queue_tick = state.queue_tick, changed = changed.len(), "state imported");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::machine::schema::StateDef;

    fn schema(names: &[&str]) -> Schema {
        names
            .iter()
            .fold(Schema::builder(), |b, n| {
                let def = StateDef::new(*n);
                b.state(if *n == "Counter" { def.multi() } else { def })
            })
            .build()
            .expect("valid schema")
    }

    fn machine(names: &[&str]) -> Machine {
        Machine::builder(schema(names)).id("m").build()
    }

    #[test]
    fn an_exported_state_imports_into_a_fresh_machine_of_the_same_id() {
        let first = machine(&["Start", "Counter"]);
        first.add(&["Start"], Args::new()).expect("runs");
        for _ in 0..3 {
            first.add(&["Counter"], Args::new()).expect("runs");
        }
        let exported = first.export();
        assert_eq!(
            exported.ticks,
            vec![1, 5, 0],
            "a multi state: +1, then +2 per activation"
        );
        assert_eq!(exported.queue_tick, 4);

        let second = machine(&["Start", "Counter"]);
        second.import(exported.clone()).expect("imports");
        assert_eq!(second.clock(), first.clock());
        assert_eq!(second.queue_tick(), 4);
        assert_eq!(second.export(), exported);
        // It continues from there.
        second.add(&["Counter"], Args::new()).expect("runs");
        assert_eq!(second.tick("Counter"), 7);
        assert_eq!(second.queue_tick(), 5);
    }

    #[test]
    fn a_grown_schema_keeps_the_ticks_and_starts_new_states_at_zero() {
        let small = machine(&["Start", "Counter"]);
        small.add(&["Start", "Counter"], Args::new()).expect("runs");
        let grown = machine(&["Start", "Counter", "Extra"]);
        grown
            .import(small.export())
            .expect("a grown schema imports");
        assert_eq!(grown.clock(), vec![1, 1, 0, 0]);
        assert!(grown.is(&["Start", "Counter"]));
        assert!(grown.add(&["Extra"], Args::new()).is_ok());
    }

    #[test]
    fn another_machine_or_schema_is_refused_and_nothing_changes() {
        let source = machine(&["Start", "Counter"]);
        source.add(&["Start"], Args::new()).expect("runs");
        let renamed = machine(&["Start", "Count"]);
        let err = renamed.import(source.export()).expect_err("another name");
        assert!(
            matches!(&err, ImportError::Schema(e) if e.contains("\"Counter\"")),
            "{err}"
        );
        assert_eq!(renamed.clock(), vec![0, 0, 0]);
        let shrunk = machine(&["Start"]);
        assert!(matches!(
            shrunk.import(source.export()),
            Err(ImportError::Schema(_))
        ));
        let other = Machine::builder(schema(&["Start", "Counter"]))
            .id("other")
            .build();
        assert!(matches!(
            other.import(source.export()),
            Err(ImportError::OtherMachine { .. })
        ));
        assert_eq!(other.queue_tick(), 0);
        let mut damaged = source.export();
        damaged.ticks.pop();
        assert!(matches!(
            machine(&["Start", "Counter"]).import(damaged),
            Err(ImportError::Inconsistent { .. })
        ));
    }

    #[test]
    fn waiters_resolve_on_the_imported_clock() {
        let source = machine(&["Start", "Counter"]);
        source.add(&["Start"], Args::new()).expect("runs");
        source.add(&["Counter"], Args::new()).expect("runs");
        let target = machine(&["Start", "Counter"]);
        let started = target.when(&["Start"]);
        let counted = target.when_ticks("Counter", 1);
        let queued = target.when_queue(2);
        let never = target.when_ticks("Counter", 5);
        assert!(!started.is_ready() && !counted.is_ready() && !queued.is_ready());
        target.import(source.export()).expect("imports");
        assert!(started.is_ready(), "Start is active in the imported clock");
        assert!(counted.is_ready());
        assert!(queued.is_ready(), "the queue tick reached 2");
        assert!(!never.is_ready());
    }

    #[test]
    fn observers_hear_of_the_import_with_no_transition() {
        let source = machine(&["Start", "Counter"]);
        source
            .add(&["Start", "Counter"], Args::new())
            .expect("runs");
        let target = machine(&["Start", "Counter"]);
        target.add(&["Counter"], Args::new()).expect("runs");
        let told = Arc::new(Mutex::new(Vec::new()));
        let log = told.clone();
        let (_, start) = target.observe(Arc::new(move |c: &ClockChange<'_>| {
            lock(&log).push((
                c.before.to_vec(),
                c.after.to_vec(),
                c.changed.to_vec(),
                c.queue_tick,
                c.transition.is_none(),
            ));
        }));
        assert_eq!(start, vec![0, 1, 0]);
        target.import(source.export()).expect("imports");
        assert_eq!(
            *lock(&told),
            vec![(vec![0, 1, 0], vec![1, 1, 0], vec![0], 1, true)]
        );
        // Importing the same state again changes nothing and tells no one.
        target.import(source.export()).expect("imports");
        assert_eq!(lock(&told).len(), 1);
    }

    #[test]
    fn an_import_is_refused_while_a_transition_runs_and_once_disposed() {
        let target = machine(&["Start", "Counter"]);
        let exported = target.export();
        let refused = Arc::new(AtomicUsize::new(0));
        let seen = refused.clone();
        let state = exported.clone();
        target
            .on_state("Start", move |e| {
                if matches!(e.machine().import(state.clone()), Err(ImportError::Busy)) {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            })
            .expect("registers");
        target.add(&["Start"], Args::new()).expect("runs");
        assert_eq!(refused.load(Ordering::Relaxed), 1, "refused from a handler");
        assert!(target.is1("Start"), "the refused import changed nothing");
        target.dispose();
        assert_eq!(target.import(exported), Err(ImportError::Disposed));
    }
}

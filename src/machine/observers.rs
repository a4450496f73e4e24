//! The observer registry local machines and mirrors share: who observes a source, by id, and
//! a snapshot of the list to tell outside the source's lock.

use std::sync::Arc;

use super::source::{ClockChange, Observer, ObserverId};

/// The observers of one source.
#[derive(Default)]
pub struct Observers {
    /// Shared with whoever is telling them: a registration while a change is told applies to
    /// the next change.
    list: Arc<Vec<(u64, Arc<dyn Observer>)>>,
    next: u64,
}

/// The observers as of one moment, to tell outside the lock.
#[derive(Clone, Default)]
pub struct ObserverSnapshot(Arc<Vec<(u64, Arc<dyn Observer>)>>);

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("len", &self.list.len())
            .finish()
    }
}

impl std::fmt::Debug for ObserverSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverSnapshot")
            .field("len", &self.0.len())
            .finish()
    }
}

impl Observers {
    pub fn add(&mut self, observer: Arc<dyn Observer>) -> ObserverId {
        let id = self.next;
        self.next += 1;
        Arc::make_mut(&mut self.list).push((id, observer));
        ObserverId(id)
    }

    /// Whether the observer was registered.
    pub fn remove(&mut self, id: ObserverId) -> bool {
        let before = self.list.len();
        Arc::make_mut(&mut self.list).retain(|(i, _)| *i != id.0);
        self.list.len() != before
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn clear(&mut self) {
        self.list = Arc::default();
    }

    pub fn snapshot(&self) -> ObserverSnapshot {
        ObserverSnapshot(self.list.clone())
    }
}

impl ObserverSnapshot {
    /// Tells every observer of a clock change.
    pub fn clock_changed(&self, change: &ClockChange<'_>) {
        for (_, observer) in self.0.iter() {
            observer.clock_changed(change);
        }
    }

    /// Tells every observer of a new ancestry.
    pub fn ancestry_changed(&self, ancestry: &[String]) {
        for (_, observer) in self.0.iter() {
            observer.ancestry_changed(ancestry);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::machine::StateSource;

    #[test]
    fn a_snapshot_tells_the_observers_of_its_time() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let mut observers = Observers::default();
        let id = observers.add(Arc::new(move |_: &ClockChange<'_>| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let before = observers.snapshot();
        assert!(observers.remove(id));
        assert!(!observers.remove(id), "removed once");
        let machine = crate::machine::Machine::new(
            crate::machine::Schema::new(crate::machine::SchemaDef::of_states(vec![
                crate::machine::StateDef::new("A"),
            ]))
            .expect("valid"),
        );
        let schema = machine.schema();
        let change = ClockChange {
            source: &machine,
            schema: &schema,
            before: &[0],
            after: &[1],
            changed: &[0],
            queue_tick: 1,
            transition: None,
        };
        observers.snapshot().clock_changed(&change);
        assert_eq!(seen.load(Ordering::Relaxed), 0);
        before.clock_changed(&change);
        assert_eq!(seen.load(Ordering::Relaxed), 1);
    }
}

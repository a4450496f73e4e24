//! The state machine core: schemas, clocks, relation resolution, handlers, the mutation queue,
//! waiters and observers.
//!
//! Pure logic: no sockets, no async runtime, no clock of its own. Futures here ([`When`],
//! [`MutationFuture`]) use plain `std::task` wakers and run under any executor.
//!
//! - [`schema`]: states, relations, flags; validation and the stable schema hash.
//! - [`resolve`]: from a clock and a mutation to who exits and enters, or why not.
//! - [`local`]: [`Machine`], the local machine that runs handlers and owns a queue (its handler
//!   registration and its queries of errors, waits and the queue in files of their own).
//! - [`source`]: [`StateSource`], the one trait for local machines and remote mirrors.
//! - [`observers`]: the observer registry both keep.
//! - [`waiters`]: [`When`] futures and [`StateCtx`] cancellations.
//! - [`handlers`]: the [`Event`] handlers receive and what they may return.
//! - [`value`]: [`Args`] and [`Value`], arguments any language can send.

pub mod handlers;
pub mod local;
pub mod observers;
pub mod resolve;
pub mod schema;
pub mod source;
pub mod value;
pub mod waiters;

pub use handlers::{Completion, Event, HandlerKind, Verdict};
pub use local::{Machine, MachineBuilder, Receipt, UnknownState};
pub use resolve::{CancelReason, MutationKind, Plan, is_active, resolve};
pub use schema::{EXCEPTION, Relation, Schema, SchemaBuilder, SchemaDef, SchemaError, StateDef};
pub use source::{
    ClockChange, ERROR_ARG, ErrFuture, Mutation, MutationError, MutationFuture, Observer,
    ObserverId, Outcome, StateSource, Transition, UpstreamInfo,
};
pub use value::{Args, Value};
pub use waiters::{Bound, Canceled, Condition, StateCtx, Until, WaitError, When};

//! The state machine core: schemas, clocks, relation resolution, handlers, the mutation queue,
//! waiters and observers.
//!
//! Pure logic: no sockets, no async runtime, no clock of its own. Futures here ([`When`],
//! [`MutationFuture`]) use plain `std::task` wakers and run under any executor.
//!
//! - [`schema`]: states, relations, flags; validation and the stable schema hash.
//! - [`groups`]: named sets of a schema's states, part of its definition.
//! - [`resolve`](mod@resolve): from a clock and a mutation to who exits and enters, or why not.
//! - [`local`]: [`Machine`], the local machine that runs handlers and owns a queue (its handler
//!   registration and its queries of errors, waits and the queue in files of their own).
//! - [`source`]: [`StateSource`], the one trait for local machines and remote mirrors.
//! - `observers`: the observer registry both keep.
//! - [`waiters`]: [`When`] futures and [`StateCtx`] cancellations.
//! - [`handlers`]: the [`Event`] handlers receive and what they may return.
//! - [`final_handlers`]: [`FinalHandlers`], run after a change on any source (a mirror too).
//! - [`bind`]: binding sets of handlers and tracers, and unbinding them.
//! - [`tracer`]: the [`Tracer`] hooks and the steps of a transition they see.
//! - [`log`]: a machine's own log and its levels.
//! - [`value`]: [`Args`] and [`Value`], arguments any language can send.
//! - [`export`]: [`ExportedState`], a machine's state as a file keeps it (Go's `Serialized`),
//!   and why an import is refused.

pub mod bind;
pub(crate) mod bounded;
pub mod export;
pub mod final_handlers;
pub mod groups;
pub mod handlers;
pub mod local;
pub mod log;
pub(crate) mod observers;
pub mod resolve;
pub mod schema;
pub mod source;
pub mod tracer;
pub mod value;
pub mod waiters;

pub use bind::{Binding, Handlers, TracerId};
pub use export::{EXPORT_FORMAT, ExportedState, ImportError, MAX_EXPORT_BYTES, MAX_TICK};
pub use final_handlers::{FinalBinding, FinalEvent, FinalHandlers};
pub use groups::{GroupDef, MAX_GROUPS};
pub use handlers::{Completion, Event, HandlerCall, HandlerKind, Verdict};
pub use local::{
    EvalFuture, Machine, MachineBuilder, Receipt, SchemaChangeError, TimeSource, UnknownState,
};
pub use log::{LogArgs, LogLevel, Logger};
pub use resolve::{CancelReason, MutationKind, Plan, is_active, resolve};
pub use schema::{EXCEPTION, Relation, Schema, SchemaBuilder, SchemaDef, SchemaError, StateDef};
pub use source::{
    ClockChange, DisposeHook, ERROR_ARG, ErrFuture, Mutation, MutationError, MutationFuture,
    MutationKey, Observer, ObserverId, Outcome, StateSource, Transition, UpstreamInfo,
};
pub use tracer::{Step, StepKind, Tracer, TransitionTrace};
pub use value::{Args, Value};
pub use waiters::{Bound, Canceled, Condition, StateCtx, Until, WaitError, When};

//! am-node's library: what the `am-node` binary runs besides the nodes of a topology (those
//! are `asyncmachine::node`), kept out of the `asyncmachine` library that users build.
//!
//! Layout:
//! - [`bench`](mod@bench): the benchmark scenarios of DESIGN.md section 9 (`am-node bench`), their
//!   reports and the tables those print.
//! - [`sgp`]: the subscribe-get-process scenario's schema, worker and consumer loop.
//! - [`fault`]: a fault-injecting TCP proxy (`am-node fault-proxy`, the fault tests).

pub mod bench;
pub mod fault;
pub mod sgp;

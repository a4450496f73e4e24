//! am-node's library: what the `am-node` binary runs besides the nodes of a topology (those
//! are `asyncmachine::node`), kept out of the `asyncmachine` library that users build.
//!
//! Layout:
//! - [`bench`](mod@bench): the benchmark scenarios of DESIGN.md section 9 (`am-node bench`), their
//!   reports and the tables those print.
//! - [`repl`]: `am-node repl`, a prompt over mirrors: its language and completion (pure),
//!   the commands on the machines, the line editor.
//! - [`sgp`]: the subscribe-get-process scenario's schema, worker and consumer loop.
//! - [`diagram`]: diagrams of a topology's schemas and tree (`am-node diagram`): graphs,
//!   SVG, mermaid, DOT.
//! - [`fault`]: a fault-injecting TCP proxy (`am-node fault-proxy`, the fault tests).

pub mod bench;
pub mod diagram;
pub mod fault;
pub mod repl;
pub mod sgp;

//! Diagrams of a topology: each schema's states and relations, and the tree of nodes and
//! machines (which mirrors which, over what transport), as SVG, mermaid or DOT.
//!
//! Owns the graphs and their rendering, not reading files: [`Diagram::of_topology`] takes a
//! loaded [`Topology`] (the CLI's `am-node diagram`, and later a web console, load it) and
//! builds plain [`Graph`]s; `text` writes them as mermaid or DOT, `svg` lays them out with
//! layout-rs and draws them. Names reach the output only as labels, cut to
//! [`MAX_LABEL_CHARS`], with control characters escaped and each format's special characters
//! quoted; identifiers in the output are ours (`n0`, `n1`, ...), never a name.

mod svg;
mod text;

use std::sync::Arc;

use asyncmachine::machine::Schema;
use asyncmachine::printable::printable;
use asyncmachine::topology::{MachineKind, Topology};
use asyncmachine::transport::{Endpoint, Scheme};

/// Longest label drawn, in characters; a longer name is cut and ends with `…`.
pub const MAX_LABEL_CHARS: usize = 48;

/// Most nodes plus edges of one graph laid out as SVG: layout-rs's cost grows steeply with
/// the size (a dense 50-state schema takes a minute), so a bigger graph is refused with a
/// pointer to the text formats, which have no layout to do.
pub const MAX_SVG_ELEMENTS: usize = 300;

/// What went wrong making a diagram, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagramError {
    #[error("no machine named {name:?} in the topology; it has: {known}")]
    UnknownMachine { name: String, known: String },
    #[error(
        "{graph} has {elements} nodes and edges, more than {max} can be laid out as SVG; \
         use --format dot or --format mermaid, or --machine NAME for one schema"
    )]
    TooLarge {
        graph: String,
        elements: usize,
        max: usize,
    },
    #[error("laying out {graph} failed ({reason}); use --format dot or --format mermaid")]
    Layout { graph: String, reason: String },
}

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Mermaid,
    Dot,
}

/// Which graphs a diagram holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only the schema of this machine (`MACHINE` or `NODE/MACHINE`), and no tree.
    pub machine: Option<String>,
    /// Only the tree, no schema.
    pub tree_only: bool,
}

/// What a node of a graph stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    State {
        multi: bool,
        auto: bool,
    },
    /// A node of the topology (a process).
    Node,
    /// A machine of a node: a root runs its transitions, a mirror replicates one.
    Machine {
        root: bool,
    },
    /// An upstream endpoint outside the file.
    External,
}

/// What an edge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    Require,
    Add,
    Remove,
    After,
    /// A node runs a machine.
    Runs,
    /// A machine is mirrored (edge from the source to its mirror) over a transport.
    Mirrors(Scheme),
}

impl EdgeKind {
    /// The edge's label, the same in every format.
    pub fn label(self) -> &'static str {
        match self {
            EdgeKind::Require => "require",
            EdgeKind::Add => "add",
            EdgeKind::Remove => "remove",
            EdgeKind::After => "after",
            EdgeKind::Runs => "runs",
            EdgeKind::Mirrors(scheme) => scheme.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    /// The name as written (uncut, unescaped): renderers make labels of it.
    pub name: String,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphEdge {
    /// Indices into [`Graph::nodes`].
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
}

/// One graph of a diagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub title: String,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

impl Graph {
    fn new(title: String) -> Graph {
        Graph {
            title,
            nodes: Vec::new(),
            edges: Vec::new(),
        }
    }

    fn node(&mut self, name: impl Into<String>, kind: NodeKind) -> usize {
        self.nodes.push(GraphNode {
            name: name.into(),
            kind,
        });
        self.nodes.len() - 1
    }

    /// The graph of a schema: one node per state, one edge per relation.
    pub fn of_schema(title: String, schema: &Schema) -> Graph {
        let mut graph = Graph::new(title);
        for i in 0..schema.len() {
            let def = schema.state(i);
            graph.node(
                schema.name(i),
                NodeKind::State {
                    multi: def.is_some_and(|d| d.multi),
                    auto: def.is_some_and(|d| d.auto),
                },
            );
        }
        for from in 0..schema.len() {
            let Some(def) = schema.state(from) else {
                continue;
            };
            let relations = [
                (&def.require, EdgeKind::Require),
                (&def.add, EdgeKind::Add),
                (&def.remove, EdgeKind::Remove),
                (&def.after, EdgeKind::After),
            ];
            for (targets, kind) in relations {
                for target in targets {
                    // A valid schema names only its own states; skip anything else.
                    if let Some(to) = schema.index(target) {
                        graph.edges.push(GraphEdge { from, to, kind });
                    }
                }
            }
        }
        graph
    }

    /// The tree of a topology: its nodes, the machines each runs, and which machine mirrors
    /// which (an edge from the source down to its mirror, labelled with the transport).
    pub fn of_tree(topology: &Topology) -> Graph {
        let mut graph = Graph::new("tree".to_owned());
        // (node index, machine name, graph index) of every machine, to find upstreams.
        let mut machines = Vec::new();
        for node in &topology.nodes {
            let at = graph.node(node.name.as_str(), NodeKind::Node);
            for machine in &node.machines {
                let root = matches!(machine.kind, MachineKind::Root);
                let m = graph.node(
                    format!("{}/{}", node.name, machine.name),
                    NodeKind::Machine { root },
                );
                graph.edges.push(GraphEdge {
                    from: at,
                    to: m,
                    kind: EdgeKind::Runs,
                });
                machines.push((&node.listen, machine.name.as_str(), m));
            }
        }
        let mut i = 0;
        for node in &topology.nodes {
            for machine in &node.machines {
                let mirror = machines[i].2;
                i += 1;
                let MachineKind::Mirror { upstream, .. } = &machine.kind else {
                    continue;
                };
                let source = machines
                    .iter()
                    .find(|(listen, name, _)| {
                        upstream.machine.as_deref().unwrap_or(&machine.name) == *name
                            && listen.iter().any(|l| reaches(upstream, l))
                    })
                    .map(|m| m.2);
                let from = source.unwrap_or_else(|| {
                    graph.node(without_secrets(upstream).to_string(), NodeKind::External)
                });
                graph.edges.push(GraphEdge {
                    from,
                    to: mirror,
                    kind: EdgeKind::Mirrors(upstream.scheme),
                });
            }
        }
        graph
    }

    fn elements(&self) -> usize {
        self.nodes.len() + self.edges.len()
    }
}

/// Whether a mirror's upstream endpoint is this listener (a wildcard bind is reached on
/// loopback, as `topology` connects mirrors).
fn reaches(upstream: &Endpoint, listener: &Endpoint) -> bool {
    let address = listener
        .address
        .replacen("0.0.0.0:", "127.0.0.1:", 1)
        .replacen("[::]:", "[::1]:", 1);
    upstream.scheme == listener.scheme && upstream.address == address
}

/// An endpoint as drawn: a relay's upgrade token stays out of pictures.
fn without_secrets(endpoint: &Endpoint) -> Endpoint {
    Endpoint {
        upgrade_token: None,
        ..endpoint.clone()
    }
}

/// The graphs of one diagram, in the order drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagram {
    pub graphs: Vec<Graph>,
}

impl Diagram {
    /// The graphs of a topology in `scope`: by default every distinct schema (titled with the
    /// machines that run it) and the tree.
    pub fn of_topology(topology: &Topology, scope: &Scope) -> Result<Diagram, DiagramError> {
        let mut graphs = Vec::new();
        if let Some(wanted) = &scope.machine {
            let found = topology.nodes.iter().find_map(|node| {
                node.machines
                    .iter()
                    .find(|m| *wanted == m.name || *wanted == format!("{}/{}", node.name, m.name))
                    .map(|m| (node, m))
            });
            let Some((node, machine)) = found else {
                let known: Vec<String> = topology
                    .nodes
                    .iter()
                    .flat_map(|n| {
                        n.machines
                            .iter()
                            .map(move |m| format!("{}/{}", n.name, m.name))
                    })
                    .collect();
                return Err(DiagramError::UnknownMachine {
                    name: printable(wanted).into_owned(),
                    known: printable(&known.join(", ")).into_owned(),
                });
            };
            let title = format!("schema of {}/{}", node.name, machine.name);
            graphs.push(Graph::of_schema(title, &machine.schema));
            return Ok(Diagram { graphs });
        }
        if !scope.tree_only {
            // One graph per distinct schema, named by the machines that run it.
            let mut schemas: Vec<(Arc<Schema>, Vec<String>)> = Vec::new();
            for node in &topology.nodes {
                for machine in &node.machines {
                    let name = format!("{}/{}", node.name, machine.name);
                    match schemas
                        .iter_mut()
                        .find(|(s, _)| s.hash() == machine.schema.hash())
                    {
                        Some((_, users)) => users.push(name),
                        None => schemas.push((machine.schema.clone(), vec![name])),
                    }
                }
            }
            for (schema, users) in schemas {
                let title = match users.as_slice() {
                    [one] => format!("schema of {one}"),
                    [first, rest @ ..] => {
                        format!("schema of {first} and {} more", rest.len())
                    }
                    [] => "schema".to_owned(),
                };
                graphs.push(Graph::of_schema(title, &schema));
            }
        }
        graphs.push(Graph::of_tree(topology));
        Ok(Diagram { graphs })
    }

    /// The diagram in a format: SVG (laid out; every graph stacked in one picture), or
    /// mermaid or DOT text (every graph in one document).
    pub fn render(&self, format: Format) -> Result<String, DiagramError> {
        match format {
            Format::Svg => svg::render(&self.graphs),
            Format::Mermaid => Ok(text::mermaid(&self.graphs)),
            Format::Dot => Ok(text::dot(&self.graphs)),
        }
    }
}

/// A name as a label: control characters escaped, cut to [`MAX_LABEL_CHARS`].
pub fn label(name: &str) -> String {
    let shown = printable(name);
    // The two noncharacters XML refuses even escaped; every other char printable leaves is
    // valid XML.
    let shown = if shown.contains(['\u{FFFE}', '\u{FFFF}']) {
        std::borrow::Cow::Owned(shown.replace(['\u{FFFE}', '\u{FFFF}'], "\u{fffd}"))
    } else {
        shown
    };
    if shown.chars().count() <= MAX_LABEL_CHARS {
        return shown.into_owned();
    }
    let mut cut: String = shown.chars().take(MAX_LABEL_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// A node's label with its marks: a state's `multi`/`auto`, a machine's `root`.
pub fn node_label(node: &GraphNode) -> String {
    let name = label(&node.name);
    match node.kind {
        NodeKind::State { multi, auto } => {
            let marks: Vec<&str> = [(multi, "multi"), (auto, "auto")]
                .into_iter()
                .filter_map(|(on, mark)| on.then_some(mark))
                .collect();
            if marks.is_empty() {
                name
            } else {
                format!("{name} ({})", marks.join(", "))
            }
        }
        NodeKind::Machine { root: true } => format!("{name} (root)"),
        NodeKind::Machine { root: false } => format!("{name} (mirror)"),
        NodeKind::Node => format!("node {name}"),
        NodeKind::External => name,
    }
}

#[cfg(test)]
mod tests;

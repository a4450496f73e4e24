//! Mermaid and DOT text of a diagram's graphs: one document, a subgraph (cluster) per graph,
//! identifiers `gGnN` of ours, names only inside quoted, escaped labels.

use std::fmt::Write as _;

use super::{EdgeKind, Graph, NodeKind, node_label};

/// How an edge kind looks: DOT attributes, mermaid arrow and link style.
struct Look {
    dot: &'static str,
    arrow: &'static str,
    link: &'static str,
}

fn look(kind: EdgeKind) -> Look {
    match kind {
        EdgeKind::Require => Look {
            dot: "color=\"#333333\"",
            arrow: "-->",
            link: "stroke:#333333",
        },
        EdgeKind::Add => Look {
            dot: "color=\"#1565c0\", penwidth=2",
            arrow: "==>",
            link: "stroke:#1565c0",
        },
        EdgeKind::Remove => Look {
            dot: "color=\"#c62828\", style=dashed",
            arrow: "-.->",
            link: "stroke:#c62828,stroke-dasharray:6 4",
        },
        EdgeKind::After => Look {
            dot: "color=\"#757575\", style=dotted",
            arrow: "-.->",
            link: "stroke:#757575,stroke-dasharray:2 3",
        },
        EdgeKind::Runs => Look {
            dot: "color=\"#9e9e9e\", arrowhead=none",
            arrow: "---",
            link: "stroke:#9e9e9e",
        },
        EdgeKind::Mirrors(_) => Look {
            dot: "color=\"#2e7d32\", penwidth=2",
            arrow: "==>",
            link: "stroke:#2e7d32",
        },
    }
}

/// A node's fill, by what it is.
pub(super) fn fill(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::State {
            multi: true,
            auto: true,
        } => "#d1c4e9",
        NodeKind::State { multi: true, .. } => "#bbdefb",
        NodeKind::State { auto: true, .. } => "#c8e6c9",
        NodeKind::State { .. } => "#ffffff",
        NodeKind::Node => "#eeeeee",
        NodeKind::Machine { root: true } => "#ffe0b2",
        NodeKind::Machine { root: false } => "#fff8e1",
        NodeKind::External => "#f5f5f5",
    }
}

/// Text inside a DOT double-quoted string.
fn dot_quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Text inside a mermaid `"..."` label: anything but plain letters, digits and a few marks
/// becomes an entity code (`#60;`), so no name can end the label or open markup.
fn mermaid_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || " ,.()/_-:".contains(c) {
            out.push(c);
        } else {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

pub(super) fn dot(graphs: &[Graph]) -> String {
    let mut out = String::from(
        "digraph asyncmachine {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=12];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
    );
    for (g, graph) in graphs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{g} {{\n    label=\"{}\";",
            dot_quoted(&super::label(&graph.title))
        );
        for (n, node) in graph.nodes.iter().enumerate() {
            let shape = match node.kind {
                NodeKind::State { .. } => "box, style=\"rounded,filled\"",
                NodeKind::Node => "folder, style=filled",
                NodeKind::Machine { .. } => "box, style=filled",
                NodeKind::External => "box, style=\"dashed,filled\"",
            };
            let _ = writeln!(
                out,
                "    g{g}n{n} [label=\"{}\", shape={shape}, fillcolor=\"{}\"];",
                dot_quoted(&node_label(node)),
                fill(node.kind)
            );
        }
        for edge in &graph.edges {
            let _ = writeln!(
                out,
                "    g{g}n{} -> g{g}n{} [label=\"{}\", {}];",
                edge.from,
                edge.to,
                edge.kind.label(),
                look(edge.kind).dot
            );
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

pub(super) fn mermaid(graphs: &[Graph]) -> String {
    let mut out = String::from("flowchart TB\n");
    let mut links: Vec<&'static str> = Vec::new();
    let mut classes: Vec<(String, &'static str)> = Vec::new();
    for (g, graph) in graphs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph g{g} [\"{}\"]",
            mermaid_quoted(&super::label(&graph.title))
        );
        for (n, node) in graph.nodes.iter().enumerate() {
            let (open, close) = match node.kind {
                NodeKind::State { .. } => ("(\"", "\")"),
                NodeKind::Node => ("[[\"", "\"]]"),
                NodeKind::Machine { .. } | NodeKind::External => ("[\"", "\"]"),
            };
            let _ = writeln!(
                out,
                "    g{g}n{n}{open}{}{close}",
                mermaid_quoted(&node_label(node))
            );
            classes.push((format!("g{g}n{n}"), class(node.kind)));
        }
        out.push_str("  end\n");
        for edge in &graph.edges {
            let look = look(edge.kind);
            let _ = writeln!(
                out,
                "  g{g}n{} {}|{}| g{g}n{}",
                edge.from,
                look.arrow,
                edge.kind.label(),
                edge.to
            );
            links.push(look.link);
        }
    }
    for (name, style) in [
        ("state", "fill:#ffffff,stroke:#333333"),
        ("multi", "fill:#bbdefb,stroke:#333333"),
        ("auto", "fill:#c8e6c9,stroke:#333333"),
        ("multiauto", "fill:#d1c4e9,stroke:#333333"),
        ("node", "fill:#eeeeee,stroke:#616161"),
        ("root", "fill:#ffe0b2,stroke:#e65100"),
        ("mirror", "fill:#fff8e1,stroke:#f9a825"),
        (
            "external",
            "fill:#f5f5f5,stroke:#9e9e9e,stroke-dasharray:4 3",
        ),
    ] {
        let _ = writeln!(out, "  classDef {name} {style}");
    }
    for (id, class) in classes {
        let _ = writeln!(out, "  class {id} {class}");
    }
    for (i, link) in links.iter().enumerate() {
        let _ = writeln!(out, "  linkStyle {i} {link}");
    }
    out
}

fn class(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::State {
            multi: true,
            auto: true,
        } => "multiauto",
        NodeKind::State { multi: true, .. } => "multi",
        NodeKind::State { auto: true, .. } => "auto",
        NodeKind::State { .. } => "state",
        NodeKind::Node => "node",
        NodeKind::Machine { root: true } => "root",
        NodeKind::Machine { root: false } => "mirror",
        NodeKind::External => "external",
    }
}

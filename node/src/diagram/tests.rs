use std::path::{Path, PathBuf};

use asyncmachine::topology::{self, Topology};

use super::*;

fn shipped(name: &str) -> Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../topologies")
        .join(name);
    topology::load(&path).expect("a shipped topology loads")
}

/// Every piece of text an SVG shows (text nodes, unescaped by the parser); panics unless the
/// document is well-formed XML with an `<svg>` root.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

#[test]
fn svg_of_a_real_topology_parses_and_names_every_state_and_node() {
    for file in ["demo.toml", "tree.toml", "duplex.toml", "chain.toml"] {
        let topology = shipped(file);
        let svg = Diagram::of_topology(&topology, &Scope::default())
            .and_then(|d| d.render(Format::Svg))
            .expect("renders");
        let texts = svg_texts(&svg);
        let shows = |name: &str| {
            texts
                .iter()
                .any(|t| t == name || t.starts_with(&format!("{name} (")))
        };
        for node in &topology.nodes {
            assert!(
                shows(&format!("node {}", node.name)),
                "{file}: node {}",
                node.name
            );
            for machine in &node.machines {
                assert!(
                    shows(&format!("{}/{}", node.name, machine.name)),
                    "{file}: {}",
                    machine.name
                );
                for state in machine.schema.names() {
                    assert!(shows(state), "{file}: state {state} in {texts:?}");
                }
            }
        }
        assert!(
            texts.iter().any(|t| t == "tcp"),
            "{file}: mirror edges show their transport"
        );
    }
}

#[test]
fn text_formats_name_every_state_and_every_relation() {
    let topology = shipped("demo.toml");
    let diagram = Diagram::of_topology(&topology, &Scope::default()).expect("builds");
    let schema = &topology.nodes[0].machines[0].schema;
    let dot = diagram.render(Format::Dot).expect("dot");
    let mermaid = diagram.render(Format::Mermaid).expect("mermaid");
    for (i, name) in schema.names().enumerate() {
        assert!(
            dot.contains(&format!("g0n{i} [label=\"{name}")),
            "{name} in {dot}"
        );
        assert!(
            mermaid.contains(&format!("g0n{i}(\"{name}")),
            "{name} in {mermaid}"
        );
    }
    let mut relations = 0;
    for from in 0..schema.len() {
        let def = schema.state(from).expect("a state");
        for (targets, kind, arrow) in [
            (&def.require, "require", "-->"),
            (&def.add, "add", "==>"),
            (&def.remove, "remove", "-.->"),
            (&def.after, "after", "-.->"),
        ] {
            for target in targets {
                let to = schema.index(target).expect("known");
                relations += 1;
                assert!(
                    dot.contains(&format!("g0n{from} -> g0n{to} [label=\"{kind}\"")),
                    "{kind} {from}->{to} in {dot}"
                );
                assert!(
                    mermaid.contains(&format!("g0n{from} {arrow}|{kind}| g0n{to}")),
                    "{kind} {from}->{to} in {mermaid}"
                );
            }
        }
    }
    assert!(relations >= 8, "the demo schema has relations");
    // The tree: hub-a's demo mirrors root's over tcp, leaf's mirrors hub-a's.
    assert!(dot.contains("label=\"root/demo (root)\""));
    let tree = &diagram.graphs[1];
    let id = |name: &str| {
        tree.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("drawn")
    };
    for (source, mirror) in [("root/demo", "hub-a/demo"), ("hub-a/demo", "leaf/demo")] {
        let line = format!("g1n{} ==>|tcp| g1n{}", id(source), id(mirror));
        assert!(mermaid.contains(&line), "{line} in {mermaid}");
    }
}

#[test]
fn scope_picks_one_schema_or_the_tree() {
    let topology = shipped("duplex.toml");
    let all = Diagram::of_topology(&topology, &Scope::default()).expect("builds");
    assert!(all.graphs.len() >= 2, "schemas and the tree");
    let tree = Diagram::of_topology(
        &topology,
        &Scope {
            tree_only: true,
            ..Scope::default()
        },
    )
    .expect("builds");
    assert_eq!(tree.graphs.len(), 1);
    assert_eq!(tree.graphs[0].title, "tree");
    let node = &topology.nodes[0];
    let one = Diagram::of_topology(
        &topology,
        &Scope {
            machine: Some(format!("{}/{}", node.name, node.machines[0].name)),
            ..Scope::default()
        },
    )
    .expect("builds");
    assert_eq!(one.graphs.len(), 1);
    assert_eq!(one.graphs[0].nodes.len(), node.machines[0].schema.len());
    let unknown = Diagram::of_topology(
        &topology,
        &Scope {
            machine: Some("nope".into()),
            ..Scope::default()
        },
    )
    .expect_err("no such machine");
    assert!(
        unknown.to_string().contains("no machine named \"nope\""),
        "{unknown}"
    );
}

fn hostile_topology(state: &str, node: &str) -> Topology {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let text = format!(
        "[schemas.s]\nstates = [{{ name = {state} }}, {{ name = \"B\", require = [{state}] }}]\n\n\
         [[nodes]]\nname = {node}\nlisten = [\"tcp://127.0.0.1:7999\"]\n\
         machines = [{{ name = \"m\", schema = \"s\" }}]\n",
        state = quote(state),
        node = quote(node),
    );
    topology::parse(Path::new("hostile.toml"), &text).expect("the topology is valid")
}

#[test]
fn markup_in_names_is_escaped_in_every_format() {
    let state = "<b>A&B \"q\" 'x'</b>";
    let node = "n<1>&\"2\"";
    let topology = hostile_topology(state, node);
    let diagram = Diagram::of_topology(&topology, &Scope::default()).expect("builds");
    let texts = svg_texts(&diagram.render(Format::Svg).expect("svg"));
    assert!(texts.iter().any(|t| t == state), "{texts:?}");
    assert!(
        texts.iter().any(|t| t == &format!("node {node}")),
        "{texts:?}"
    );
    let dot = diagram.render(Format::Dot).expect("dot");
    assert!(dot.contains(r#"label="<b>A&B \"q\" 'x'</b>""#), "{dot}");
    let mermaid = diagram.render(Format::Mermaid).expect("mermaid");
    for line in mermaid.lines().filter(|l| l.contains("g0n0(")) {
        let inside = &line[line.find("(\"").expect("label") + 2..line.rfind("\")").expect("end")];
        assert!(!inside.contains(['<', '>', '"', '&', '\'']), "{line}");
        assert!(inside.contains("#60;b#62;A#38;B"), "{line}");
    }
}

#[test]
fn huge_and_control_character_names_are_cut_and_escaped() {
    let long = "S".repeat(100_000);
    let topology = hostile_topology(&format!("{long}\u{1b}[31m"), "node\nwith\u{7}bell");
    let diagram = Diagram::of_topology(&topology, &Scope::default()).expect("builds");
    for format in [Format::Svg, Format::Dot, Format::Mermaid] {
        let out = diagram.render(format).expect("renders");
        assert!(out.len() < 40_000, "{format:?}: {} bytes", out.len());
        assert!(!out.contains(['\u{1b}', '\u{7}']), "{format:?}");
        assert!(out.contains("SSSS"), "{format:?}");
    }
    let texts = svg_texts(&diagram.render(Format::Svg).expect("svg"));
    let cut = texts
        .iter()
        .find(|t| t.starts_with("SSS"))
        .expect("the long state");
    assert!(
        cut.ends_with('…') && cut.chars().count() == MAX_LABEL_CHARS,
        "{cut}"
    );
    assert!(
        texts.iter().any(|t| t == "node node\\nwith\\u{7}bell"),
        "{texts:?}"
    );
}

#[test]
fn a_graph_too_large_to_lay_out_is_refused_for_svg_only() {
    let states: Vec<String> = (0..MAX_SVG_ELEMENTS)
        .map(|i| format!("{{ name = \"S{i}\" }}"))
        .collect();
    let text = format!(
        "[schemas.s]\nstates = [{}]\n\n[[nodes]]\nname = \"n\"\nlisten = [\"tcp://127.0.0.1:7999\"]\n\
         machines = [{{ name = \"m\", schema = \"s\" }}]\n",
        states.join(", ")
    );
    let topology = topology::parse(Path::new("big.toml"), &text).expect("valid");
    let diagram = Diagram::of_topology(&topology, &Scope::default()).expect("builds");
    let err = diagram.render(Format::Svg).expect_err("too large");
    assert!(matches!(err, DiagramError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("--format dot"), "{err}");
    let dot = diagram
        .render(Format::Dot)
        .expect("text has no layout to do");
    assert!(dot.contains(&format!("label=\"S{}\"", MAX_SVG_ELEMENTS - 1)));
}

#[test]
fn a_larger_graph_is_drawn_with_unlabelled_edges() {
    // 60 states, each requiring the one before and removing the one two before: 60 + 117
    // elements, past the labelled size, within the SVG limit.
    let states: Vec<String> = (0..60)
        .map(|i| match i {
            0 => "{ name = \"S0\" }".to_owned(),
            1 => "{ name = \"S1\", require = [\"S0\"] }".to_owned(),
            _ => format!(
                "{{ name = \"S{i}\", require = [\"S{}\"], remove = [\"S{}\"] }}",
                i - 1,
                i - 2
            ),
        })
        .collect();
    let text = format!(
        "[schemas.s]\nstates = [{}]\n\n[[nodes]]\nname = \"n\"\nlisten = [\"tcp://127.0.0.1:7999\"]\n\
         machines = [{{ name = \"m\", schema = \"s\" }}]\n",
        states.join(", ")
    );
    let topology = topology::parse(Path::new("mid.toml"), &text).expect("valid");
    let scope = Scope {
        machine: Some("m".into()),
        ..Scope::default()
    };
    let svg = Diagram::of_topology(&topology, &scope)
        .and_then(|d| d.render(Format::Svg))
        .expect("renders");
    let texts = svg_texts(&svg);
    for i in 0..60 {
        assert!(texts.iter().any(|t| *t == format!("S{i}")), "S{i}");
    }
    assert!(!texts.iter().any(|t| t == "require"), "edges unlabelled");
}

//! SVG of a diagram: each graph laid out and drawn by layout-rs (rank assignment, crossing
//! reduction, placement, edge routing), then stacked under its title in one picture.

use std::fmt::Write as _;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::text::fill;
use super::{DiagramError, EdgeKind, Graph, MAX_SVG_ELEMENTS, NodeKind, label, node_label};

/// Space for each graph's title above it.
const TITLE_HEIGHT: f64 = 32.0;
/// Graphs up to this many nodes and edges get labelled edges.
const LABELLED_ELEMENTS: usize = 150;
/// Graphs up to this many nodes and edges get crossing reduction, the costly pass.
const OPTIMIZED_ELEMENTS: usize = 60;
/// How long one graph's layout may take.
const LAYOUT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);
/// Space for the legend under a schema's title.
const LEGEND_HEIGHT: f64 = 22.0;
/// What a schema's edges and fills mean, in their colours.
const SCHEMA_LEGEND: &str = "<tspan fill=\"#333333\">require ──</tspan>\
    <tspan dx=\"16\" fill=\"#1565c0\" font-weight=\"bold\">add ━━</tspan>\
    <tspan dx=\"16\" fill=\"#c62828\">remove ╌╌</tspan>\
    <tspan dx=\"16\" fill=\"#757575\">after ┈┈</tspan>\
    <tspan dx=\"16\" fill=\"#1565c0\">■ multi</tspan><tspan dx=\"16\" fill=\"#2e7d32\">■ auto</tspan>";
/// Space between two graphs.
const GAP: f64 = 24.0;

pub(super) fn render(graphs: &[Graph]) -> Result<String, DiagramError> {
    let mut body = String::new();
    let (mut width, mut height) = (0.0_f64, 0.0_f64);
    for (g, graph) in graphs.iter().enumerate() {
        let (section, w, h) = section(graph, g)?;
        let _ = writeln!(
            body,
            "<text x=\"8\" y=\"{}\" class=\"am-title\">{}</text>",
            height + TITLE_HEIGHT * 0.7,
            xml_text(&label(&graph.title))
        );
        height += TITLE_HEIGHT;
        if graph
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::State { .. }))
        {
            let _ = writeln!(
                body,
                "<text x=\"8\" y=\"{}\" class=\"am-legend\">{SCHEMA_LEGEND}</text>",
                height + LEGEND_HEIGHT * 0.5
            );
            height += LEGEND_HEIGHT;
        }
        let _ = writeln!(
            body,
            "<svg x=\"0\" y=\"{height}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">{section}</svg>"
        );
        width = width.max(w);
        height += h + GAP;
    }
    width = width.max(320.0);
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n\
         <style>.am-title {{ font: bold 16px Helvetica, Arial, sans-serif; }} .am-legend {{ font: 12px Helvetica, Arial, sans-serif; }}</style>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n{body}</svg>\n"
    ))
}

/// One graph laid out: the inside of its `<svg>` (ids made unique to the section), its width
/// and height.
fn section(graph: &Graph, g: usize) -> Result<(String, f64, f64), DiagramError> {
    let elements = graph.elements();
    if elements > MAX_SVG_ELEMENTS {
        return Err(DiagramError::TooLarge {
            graph: label(&graph.title),
            elements,
            max: MAX_SVG_ELEMENTS,
        });
    }
    if graph.nodes.is_empty() {
        return Ok((String::new(), 1.0, 1.0));
    }
    let labelled = elements <= LABELLED_ELEMENTS;
    let optimized = elements <= OPTIMIZED_ELEMENTS;
    // The layout runs on a thread of its own, so a graph that takes it too long (its cost
    // grows steeply with long edges) is an error after LAYOUT_DEADLINE instead of a hang, and
    // a panic in the library is an error too. A thread past its deadline is left to finish
    // on its own: the library cannot be stopped.
    let (done, result) = std::sync::mpsc::channel();
    let owned = graph.clone();
    let spawned = std::thread::Builder::new()
        .name("diagram-layout".into())
        .spawn(move || {
            let drawn = std::panic::catch_unwind(|| lay_out(&owned, labelled, optimized));
            let _ = done.send(drawn.map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the layout library panicked".to_owned())
            }));
        });
    let failed = |reason: String| DiagramError::Layout {
        graph: label(&graph.title),
        reason: label(&reason),
    };
    spawned.map_err(|e| failed(format!("cannot start the layout thread: {e}")))?;
    let drawn = match result.recv_timeout(LAYOUT_DEADLINE) {
        Ok(Ok(drawn)) => drawn,
        Ok(Err(reason)) => return Err(failed(reason)),
        Err(_) => {
            return Err(failed(format!(
                "it took longer than {}s",
                LAYOUT_DEADLINE.as_secs()
            )));
        }
    };
    let (w, h) = (attr(&drawn, "width"), attr(&drawn, "height"));
    // Keep what is inside the library's <svg>, and make its ids (markers, edge paths that
    // labels follow, clips) unique to this section: the sections share one document.
    let inner = drawn
        .find("<svg")
        .and_then(|start| drawn[start..].find('>').map(|end| start + end + 1))
        .map_or("", |from| {
            let to = drawn.rfind("</svg>").unwrap_or(drawn.len());
            &drawn[from..to.max(from)]
        });
    let inner = inner
        .replace("id=\"", &format!("id=\"s{g}-"))
        .replace("url(#", &format!("url(#s{g}-"))
        .replace("href=\"#", &format!("href=\"#s{g}-"));
    Ok((inner, w.unwrap_or(1.0), h.unwrap_or(1.0)))
}

/// Lays out and draws one graph: its edges labelled with their kind when `labelled` (a larger
/// graph relies on the edges' colours and the legend), crossings reduced when `optimized`.
fn lay_out(graph: &Graph, labelled: bool, optimized: bool) -> String {
    let dir = Orientation::TopToBottom;
    let mut vg = VisualGraph::new(dir);
    let handles: Vec<_> = graph
        .nodes
        .iter()
        .map(|node| {
            let text = node_label(node);
            let shape = ShapeKind::new_box(&text);
            let rounded = if matches!(node.kind, NodeKind::State { .. }) {
                8
            } else {
                0
            };
            let look = StyleAttr::new(
                Color::fast(match node.kind {
                    NodeKind::External => "gray",
                    _ => "black",
                }),
                1,
                Color::from_name(fill(node.kind)),
                rounded,
                14,
            );
            let size = get_shape_size(dir, &shape, look.font_size, false);
            vg.add_node(Element::create(shape, look, dir, size))
        })
        .collect();
    // layout-rs checks every edge it adds for a path back (a search that can take
    // exponential time) and, by default, the whole graph after each one. So the graph goes in
    // acyclic already: back edges of a depth-first order are turned around here (their arrow
    // drawn at the other end), and edges are added in that order, so that each edge's head
    // has no edges yet when it is added and the search ends at once.
    vg.dag.set_validate(false);
    let position = depth_first_positions(graph);
    let mut edges: Vec<(usize, usize, bool, EdgeKind)> = graph
        .edges
        .iter()
        .map(|e| {
            if position[e.from] <= position[e.to] {
                (e.from, e.to, false, e.kind)
            } else {
                (e.to, e.from, true, e.kind)
            }
        })
        .collect();
    edges.sort_by_key(|&(from, ..)| position[from]);
    for (from, to, turned, kind) in edges {
        let (color, style, width) = match kind {
            EdgeKind::Require => ("#333333", LineStyleKind::Normal, 1),
            EdgeKind::Add => ("#1565c0", LineStyleKind::Normal, 2),
            EdgeKind::Remove => ("#c62828", LineStyleKind::Dashed, 1),
            EdgeKind::After => ("#757575", LineStyleKind::Dotted, 1),
            EdgeKind::Runs => ("#9e9e9e", LineStyleKind::Normal, 1),
            EdgeKind::Mirrors(_) => ("#2e7d32", LineStyleKind::Normal, 2),
        };
        let look = StyleAttr::new(Color::fast(color), width, None, 0, 11);
        let head = match kind {
            EdgeKind::Runs => LineEndKind::None,
            _ => LineEndKind::Arrow,
        };
        let (start, end) = if turned {
            (head, LineEndKind::None)
        } else {
            (LineEndKind::None, head)
        };
        let arrow = Arrow::new(
            start,
            end,
            style,
            if labelled { kind.label() } else { "" },
            &look,
            &None,
            &None,
        );
        vg.add_edge(arrow, handles[from], handles[to]);
    }
    let mut writer = SVGWriter::new();
    vg.do_it(false, !optimized, false, &mut writer);
    writer.finalize()
}

/// Each node's position in a depth-first order (reverse postorder, iterative): every edge
/// that is not a back edge of the search goes from a lower position to a higher one.
fn depth_first_positions(graph: &Graph) -> Vec<usize> {
    let n = graph.nodes.len();
    let mut successors = vec![Vec::new(); n];
    for e in &graph.edges {
        successors[e.from].push(e.to);
    }
    let mut visited = vec![false; n];
    let mut postorder = Vec::with_capacity(n);
    for root in 0..n {
        if visited[root] {
            continue;
        }
        visited[root] = true;
        let mut stack = vec![(root, 0_usize)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&succ) = successors[node].get(*next) {
                *next += 1;
                if !visited[succ] {
                    visited[succ] = true;
                    stack.push((succ, 0));
                }
            } else {
                postorder.push(node);
                stack.pop();
            }
        }
    }
    let mut position = vec![0; n];
    for (i, node) in postorder.into_iter().rev().enumerate() {
        position[node] = i;
    }
    position
}

/// A number attribute of the first `<svg` element.
fn attr(svg: &str, name: &str) -> Option<f64> {
    let tag = &svg[svg.find("<svg")?..];
    let tag = &tag[..tag.find('>')?];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let value = &tag[at..];
    value[..value.find('"')?].parse().ok()
}

/// Text as XML character data.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

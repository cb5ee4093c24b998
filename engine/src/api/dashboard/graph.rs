//! A run's step graph as inline SVG, laid out on the server: steps in layers by their longest
//! chain of needs (top to bottom), each layer ordered by the mean position of the steps it
//! needs (one barycentre pass, which keeps the usual workflow's edges from crossing), edges as
//! curves with arrowheads. Each step is coloured by its state and labelled with it in words, so
//! colour is never the only sign.

use std::fmt::Write as _;

use super::html::{E, class_token};

/// One step to draw.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Its id.
    pub id: String,
    /// The indexes of the steps it needs.
    pub needs: Vec<usize>,
    /// Its state's name (`queued`, `succeeded`, …).
    pub state: String,
    /// Its undo's state's name, once the run rolls back.
    pub undo: Option<String>,
}

const W: i64 = 176;
const H: i64 = 58;
const GAP_X: i64 = 20;
const GAP_Y: i64 = 36;
const PAD: i64 = 8;

/// Each node's layer: 0 for a step that needs nothing, else one more than its deepest need.
pub(crate) fn layers(nodes: &[Node]) -> Vec<usize> {
    let mut layer = vec![0usize; nodes.len()];
    // The plan is in dependency order, so one pass settles it; more passes cover any order
    // (bounded: a cycle cannot pass validation, and stops after `len` rounds regardless).
    for _ in 0..nodes.len().max(1) {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            let want = n
                .needs
                .iter()
                .filter(|&&p| p < nodes.len() && p != i)
                .map(|&p| layer[p] + 1)
                .max()
                .unwrap_or(0);
            if want != layer[i] {
                layer[i] = want;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

/// Each node's (layer, place in its layer).
pub(crate) fn layout(nodes: &[Node]) -> Vec<(usize, usize)> {
    let layer = layers(nodes);
    let depth = layer.iter().copied().max().map_or(0, |d| d + 1);
    let mut place = vec![0usize; nodes.len()];
    for l in 0..depth {
        let mut members: Vec<(f64, usize)> = (0..nodes.len())
            .filter(|&i| layer[i] == l)
            .map(|i| {
                let parents: Vec<usize> = nodes[i]
                    .needs
                    .iter()
                    .copied()
                    .filter(|&p| p < nodes.len() && layer[p] < l)
                    .collect();
                let centre = if parents.is_empty() {
                    i as f64
                } else {
                    parents.iter().map(|&p| place[p] as f64).sum::<f64>() / parents.len() as f64
                };
                (centre, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (k, (_, i)) in members.into_iter().enumerate() {
            place[i] = k;
        }
    }
    layer.into_iter().zip(place).collect()
}

fn short(id: &str, max: usize) -> String {
    if id.chars().count() <= max {
        id.to_owned()
    } else {
        let mut s: String = id.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

/// The words and sign under a step's name.
pub(crate) fn state_label(state: &str) -> String {
    let sign = match state {
        "succeeded" => "✓ ",
        "failed" => "✗ ",
        "skipped" | "cancelled" => "– ",
        "awaiting_approval" => "⏸ ",
        "queued" | "polling" | "retrying" => "↻ ",
        _ => "",
    };
    format!("{sign}{}", state.replace('_', " "))
}

/// The SVG of the graph, titled `title`.
pub(crate) fn svg(nodes: &[Node], title: &str) -> String {
    let pos = layout(nodes);
    let depth = pos.iter().map(|p| p.0 + 1).max().unwrap_or(0) as i64;
    let mut per_layer = vec![0i64; depth as usize];
    for (l, _) in &pos {
        per_layer[*l] += 1;
    }
    let widest = per_layer.iter().copied().max().unwrap_or(0).max(1);
    let width = PAD * 2 + widest * W + (widest - 1) * GAP_X;
    let height = PAD * 2 + depth.max(1) * H + (depth.max(1) - 1) * GAP_Y;
    let xy = |(l, k): (usize, usize)| {
        let count = per_layer[l];
        let row = count * W + (count - 1) * GAP_X;
        let x0 = (width - row) / 2;
        (x0 + k as i64 * (W + GAP_X), PAD + l as i64 * (H + GAP_Y))
    };
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in nodes {
        *counts.entry(n.state.as_str()).or_default() += 1;
    }
    let summary = counts
        .iter()
        .map(|(s, c)| format!("{c} {}", s.replace('_', " ")))
        .collect::<Vec<_>>()
        .join(", ");
    let mut h = String::new();
    let _ = write!(
        h,
        "<svg class=\"graph\" role=\"img\" aria-labelledby=\"graph-title graph-desc\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"graph-title\">{}</title><desc id=\"graph-desc\">{} steps: {}</desc>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" class=\"arrowhead\"/></marker></defs>",
        E(title),
        nodes.len(),
        E(&summary)
    );
    for (i, n) in nodes.iter().enumerate() {
        let (cx, cy) = xy(pos[i]);
        for &p in &n.needs {
            if p >= nodes.len() || p == i {
                continue;
            }
            let (px, py) = xy(pos[p]);
            let (x1, y1, x2, y2) = (px + W / 2, py + H, cx + W / 2, cy - 2);
            let mid = (y1 + y2) / 2;
            let _ = write!(
                h,
                "<path class=\"edge\" d=\"M{x1},{y1} C{x1},{mid} {x2},{mid} {x2},{y2}\" marker-end=\"url(#arrow)\"/>"
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = xy(pos[i]);
        let label = state_label(&n.state);
        let _ = write!(
            h,
            "<g class=\"node s-{cls}\" data-step=\"{id}\" data-state=\"{st}\"><title>{id}: {label}{undo_t}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\"/>\
             <text x=\"{tx}\" y=\"{y1}\" class=\"name\">{short}</text>\
             <text x=\"{tx}\" y=\"{y2}\" class=\"state\">{label}</text>",
            cls = class_token(&n.state),
            id = E(&n.id),
            st = E(&n.state),
            label = E(&label),
            undo_t = match &n.undo {
                Some(u) => format!("; undo {}", E(&u.replace('_', " "))),
                None => String::new(),
            },
            tx = x + 10,
            y1 = y + 20,
            y2 = y + 38,
            short = E(&short(&n.id, 20)),
        );
        if let Some(u) = &n.undo {
            let _ = write!(
                h,
                "<text x=\"{}\" y=\"{}\" class=\"undo\">undo: {}</text>",
                x + 10,
                y + 53,
                E(&u.replace('_', " "))
            );
        }
        h.push_str("</g>");
    }
    h.push_str("</svg>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, needs: &[usize], state: &str) -> Node {
        Node {
            id: id.to_owned(),
            needs: needs.to_vec(),
            state: state.to_owned(),
            undo: None,
        }
    }

    #[test]
    fn a_diamond_takes_three_layers_and_keeps_siblings_apart() {
        let nodes = [
            node("a", &[], "succeeded"),
            node("b", &[0], "queued"),
            node("c", &[0], "pending"),
            node("d", &[1, 2], "pending"),
        ];
        let pos = layout(&nodes);
        assert_eq!(pos, vec![(0, 0), (1, 0), (1, 1), (2, 0)]);
        let svg = svg(&nodes, "demo");
        assert_eq!(svg.matches("class=\"edge\"").count(), 4);
        assert!(svg.contains("✓ succeeded") && svg.contains("↻ queued"));
        assert!(svg.contains("4 steps: 2 pending, 1 queued, 1 succeeded"));
    }

    #[test]
    fn children_follow_their_parents_order() {
        // b's child is listed before a's: the barycentre puts it under b (right).
        let nodes = [
            node("a", &[], "pending"),
            node("b", &[], "pending"),
            node("from_b", &[1], "pending"),
            node("from_a", &[0], "pending"),
        ];
        let pos = layout(&nodes);
        assert_eq!(pos[3], (1, 0));
        assert_eq!(pos[2], (1, 1));
    }

    #[test]
    fn hostile_step_ids_are_escaped() {
        let svg = svg(&[node("<script>x</script>", &[], "failed")], "t\"");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
    }
}

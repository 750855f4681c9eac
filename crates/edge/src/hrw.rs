//! Rendezvous (highest random weight) hashing of a Call-ID over the healthy core nodes:
//! every message of a dialog reaches the same node, any node can leave or join while only
//! the dialogs that were on it (or that it now wins) move, and weights skew the share.
//!
//! The hash is xxh3 with a fixed seed, so every edge process, on any machine and any
//! version of Rust, picks the same node (never `DefaultHasher` or ahash: their output is
//! not stable across processes).

use switchyard_types::NodeId;
use xxhash_rust::xxh3::Xxh3;

/// Fixed so all edges agree.
const SEED: u64 = 0x5357_4954_4348_5944; // "SWITCHYD"

/// A candidate node and its relative capacity (1 = a standard node).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedNode {
    pub id: NodeId,
    pub weight: f64,
}

/// The score of `key` on `node`: the weighted HRW score `-w / ln(u)` with `u` the hash
/// mapped into (0, 1).
fn score(key: &[u8], node: &WeightedNode) -> f64 {
    // Streamed: the same hash as over `id \0 key` in one buffer, without building it.
    let mut hasher = Xxh3::with_seed(SEED);
    hasher.update(node.id.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(key);
    let h = hasher.digest();
    // (h + 1) / (2^64 + 1) lies strictly inside (0, 1).
    let u = (h as f64 + 1.0) / (u64::MAX as f64 + 2.0);
    -node.weight / u.ln()
}

/// The node for `call_id` among `nodes` (the healthy ones), or `None` if there are none.
pub fn pick<'a>(call_id: &str, nodes: &'a [WeightedNode]) -> Option<&'a WeightedNode> {
    pick_by(call_id, nodes, |n| n)
}

/// [`pick`] over anything that carries a node (a core and its address, say), without
/// collecting the nodes first. Each candidate is scored once.
pub fn pick_by<'a, T>(
    call_id: &str,
    items: impl IntoIterator<Item = &'a T>,
    node: impl Fn(&T) -> &WeightedNode,
) -> Option<&'a T> {
    items
        .into_iter()
        .filter(|item| node(item).weight > 0.0)
        .map(|item| (score(call_id.as_bytes(), node(item)), item))
        .max_by(|(sa, a), (sb, b)| {
            sa.total_cmp(sb)
                // Equal scores (practically never): the smaller id wins, on every edge.
                .then_with(|| node(b).id.cmp(&node(a).id))
        })
        .map(|(_, item)| item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[(&str, f64)]) -> Vec<WeightedNode> {
        names
            .iter()
            .map(|(n, w)| WeightedNode {
                id: NodeId::from(*n),
                weight: *w,
            })
            .collect()
    }

    fn call(i: usize) -> String {
        format!("{i:x}-a84b4c76e66710@pc33.atlanta.example.com")
    }

    const PINNED: [&str; 6] = ["core-3", "core-1", "core-3", "core-2", "core-2", "core-2"];

    #[test]
    fn the_choice_is_stable_and_known() {
        let n = nodes(&[("core-1", 1.0), ("core-2", 1.0), ("core-3", 1.0)]);
        let first = pick("abc@host", &n).unwrap().id.clone();
        // Pinned: a change of hash or seed would move live dialogs during a rolling
        // upgrade, so it must be a conscious one.
        let pinned: Vec<String> = (0..6)
            .map(|i| pick(&call(i), &n).unwrap().id.to_string())
            .collect();
        assert_eq!(pinned, PINNED);
        for _ in 0..10 {
            assert_eq!(pick("abc@host", &n).unwrap().id, first);
        }
        // The order nodes are listed in does not matter.
        let mut reversed = n.clone();
        reversed.reverse();
        assert_eq!(pick("abc@host", &reversed).unwrap().id, first);
        assert!(pick("abc@host", &[]).is_none());
    }

    #[test]
    fn load_spreads_evenly_and_follows_weights() {
        let n = nodes(&[
            ("core-1", 1.0),
            ("core-2", 1.0),
            ("core-3", 1.0),
            ("core-4", 2.0),
        ]);
        let mut counts = std::collections::HashMap::new();
        let total = 50_000;
        for i in 0..total {
            *counts
                .entry(pick(&call(i), &n).unwrap().id.clone())
                .or_insert(0usize) += 1;
        }
        for (id, expected_share) in [
            ("core-1", 0.2),
            ("core-2", 0.2),
            ("core-3", 0.2),
            ("core-4", 0.4),
        ] {
            let share = counts[&NodeId::from(id)] as f64 / total as f64;
            assert!((share - expected_share).abs() < 0.02, "{id}: {share}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_own_dialogs() {
        let all = nodes(&[
            ("core-1", 1.0),
            ("core-2", 1.0),
            ("core-3", 1.0),
            ("core-4", 1.0),
        ]);
        let without_3: Vec<_> = all
            .iter()
            .filter(|n| n.id.as_str() != "core-3")
            .cloned()
            .collect();
        let mut moved = 0;
        for i in 0..20_000 {
            let before = pick(&call(i), &all).unwrap().id.clone();
            let after = pick(&call(i), &without_3).unwrap().id.clone();
            if before.as_str() == "core-3" {
                moved += 1;
            } else {
                assert_eq!(before, after, "a dialog not on the removed node moved");
            }
        }
        assert!(
            (4_000..6_000).contains(&moved),
            "about a quarter moved: {moved}"
        );
    }

    #[test]
    fn zero_weight_nodes_get_nothing() {
        let n = nodes(&[("core-1", 1.0), ("draining", 0.0)]);
        for i in 0..1000 {
            assert_eq!(pick(&call(i), &n).unwrap().id.as_str(), "core-1");
        }
    }
}

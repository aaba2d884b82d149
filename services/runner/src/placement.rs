//! Placement: what a node has (its capacity), what it is (its labels), and which runs it may
//! take (a run's node selector names labels a node must have). Claims reserve a run's request
//! against the node's capacity under the node's row lock (`store::queue`); this module holds
//! the rules, with no SQL and no gRPC.

use std::collections::BTreeMap;

/// Labels of a node, or a run's selector of them: key to value.
pub(crate) type Labels = BTreeMap<String, String>;

/// Labels a node has or a run asks for, at most.
pub(crate) const MAX_LABELS: usize = 64;

/// What a node has to give its runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Capacity {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// CPUs may be promised this many times over (≥ 1); memory and disk never are.
    pub cpu_overcommit: f64,
}

impl Capacity {
    /// The CPUs the node may promise in all: its CPUs times the overcommit, rounded down.
    pub(crate) fn promised_cpus(&self) -> u32 {
        (f64::from(self.cpus) * self.cpu_overcommit).floor() as u32
    }
}

/// What a node's held runs reserve now (its runs from INITIALIZING through FINISHING, PAUSE
/// included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reserved {
    pub runs: i64,
    pub cpus: i64,
    pub memory_bytes: i64,
    pub disk_bytes: i64,
}

/// A node's capacity and labels, as it registers them.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Placement {
    pub capacity: Capacity,
    pub labels: Labels,
}

/// Whether a node with `labels` matches `selector`: it has every key with that value.
pub(crate) fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Why no registered node could take a run with `selector` (`nodes`: every registered node's
/// labels), as the field to name and the message: the first key no node has with that value,
/// or that no one node has them all. `None` when some node matches.
pub(crate) fn unmatched(selector: &Labels, nodes: &[&Labels]) -> Option<(String, String)> {
    if nodes.iter().any(|n| matches(n, selector)) {
        return None;
    }
    let missing = selector
        .iter()
        .find(|(k, v)| !nodes.iter().any(|n| n.get(*k) == Some(*v)));
    Some(match missing {
        Some((k, v)) => (
            format!("node_selector[{k:?}]"),
            format!("no registered node has the label {k}={v}"),
        ),
        None => (
            "node_selector".to_owned(),
            format!(
                "no one registered node has all of {}",
                selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    })
}

/// Why a run asking for `cpus`, `memory_bytes` and `disk_bytes` (each `None` when the node's
/// default applies) fits no node of `capacities` (those that declared one), naming the field
/// and the most any of them has. `None` when one fits, or none declared a capacity.
pub(crate) fn too_large(
    cpus: Option<u32>,
    memory_bytes: Option<u64>,
    disk_bytes: Option<u64>,
    capacities: &[Capacity],
) -> Option<(&'static str, String)> {
    let declared: Vec<&Capacity> = capacities.iter().filter(|c| c.cpus > 0).collect();
    let fits = |c: &Capacity| {
        cpus.is_none_or(|n| n <= c.promised_cpus())
            && memory_bytes.is_none_or(|m| m <= c.memory_bytes)
            && disk_bytes.is_none_or(|d| c.disk_bytes == 0 || d <= c.disk_bytes)
    };
    if declared.is_empty() || declared.iter().any(|c| fits(c)) {
        return None;
    }
    let most_cpus = declared
        .iter()
        .map(|c| c.promised_cpus())
        .max()
        .unwrap_or(0);
    let most_memory = declared.iter().map(|c| c.memory_bytes).max().unwrap_or(0);
    let most_disk = declared.iter().map(|c| c.disk_bytes).max().unwrap_or(0);
    Some(match (cpus, memory_bytes, disk_bytes) {
        (Some(n), _, _) if n > most_cpus => (
            "resources.cpu",
            format!("asks for {n} CPUs; the most any matching node has is {most_cpus}"),
        ),
        (_, Some(m), _) if m > most_memory => (
            "resources.memory_bytes",
            format!(
                "asks for {m} bytes of memory; the most any matching node has is {most_memory}"
            ),
        ),
        (_, _, Some(d)) if most_disk > 0 && d > most_disk => (
            "resources.disk_bytes",
            format!("asks for {d} bytes of disk; the most any matching node has is {most_disk}"),
        ),
        _ => (
            "resources",
            "no single matching node has all of these at once; ask for less".to_owned(),
        ),
    })
}

/// A label key or value as Kubernetes writes them: a key is an optional DNS-subdomain prefix
/// and `/`, then a name of 1 to 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric; a
/// value is empty or such a name.
fn check_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

fn check_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(check_name)
                && check_name(name)
        }
        None => check_name(key),
    }
}

/// Checks labels (a node's or a selector), naming each problem by its key under `field`.
pub(crate) fn check(field: &str, labels: &Labels) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if labels.len() > MAX_LABELS {
        problems.push(format!(
            "{field}: {} labels; at most {MAX_LABELS}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if !check_key(key) {
            problems.push(format!(
                "{field}[{key:?}]: a key is an optional DNS prefix and '/', then 1 to 63 of \
                 A-Z, a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit"
            ));
        }
        if !value.is_empty() && !check_name(value) {
            problems.push(format!(
                "{field}[{key:?}]: the value {value:?} is not empty nor 1 to 63 of A-Z, a-z, \
                 0-9, '.', '_' and '-', starting and ending with a letter or digit"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `key=value` (a `--node-label`).
pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
    let one: Labels = [(key.clone(), value.clone())].into();
    check("--node-label", &one).map_err(|p| p.join("; "))?;
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_node_matches_a_selector_it_has_every_pair_of() {
        let node = labels(&[("disk", "ssd"), ("zone", "a")]);
        assert!(matches(&node, &Labels::new()));
        assert!(matches(&node, &labels(&[("disk", "ssd")])));
        assert!(!matches(&node, &labels(&[("disk", "hdd")])));
        assert!(!matches(&node, &labels(&[("disk", "ssd"), ("gpu", "yes")])));
    }

    #[test]
    fn labels_are_checked_by_key() {
        assert!(check("l", &labels(&[("example.org/disk", "ssd"), ("zone", "")])).is_ok());
        let e = check("node_selector", &labels(&[("-bad", "x"), ("ok", "no way")])).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("node_selector[\"-bad\"]"), "{e:?}");
        assert!(e[1].contains("\"no way\""), "{e:?}");
        assert_eq!(parse_label("disk=ssd"), Ok(("disk".into(), "ssd".into())));
        assert!(parse_label("disk").is_err());
    }

    #[test]
    fn a_selector_no_node_matches_is_named_by_its_key() {
        let (a, b) = (labels(&[("disk", "ssd")]), labels(&[("zone", "x")]));
        assert_eq!(unmatched(&labels(&[("disk", "ssd")]), &[&a, &b]), None);
        let (field, why) = unmatched(&labels(&[("gpu", "yes")]), &[&a, &b]).unwrap();
        assert_eq!(field, "node_selector[\"gpu\"]");
        assert!(why.contains("gpu=yes"), "{why}");
        let (field, why) =
            unmatched(&labels(&[("disk", "ssd"), ("zone", "x")]), &[&a, &b]).unwrap();
        assert_eq!(field, "node_selector");
        assert!(why.contains("no one registered node has all"), "{why}");
    }

    #[test]
    fn a_request_larger_than_every_matching_node_is_named_by_its_field() {
        let c = |cpus, gib: u64| Capacity {
            cpus,
            memory_bytes: gib << 30,
            disk_bytes: 0,
            cpu_overcommit: 1.0,
        };
        let nodes = [c(4, 8), c(16, 64)];
        assert_eq!(too_large(Some(16), Some(48 << 30), None, &nodes), None);
        let (field, why) = too_large(Some(32), None, None, &nodes).unwrap();
        assert_eq!(field, "resources.cpu");
        assert!(why.contains("16"), "{why}");
        let (field, _) = too_large(Some(8), Some(100 << 30), None, &nodes).unwrap();
        assert_eq!(field, "resources.memory_bytes");
        // 16 CPUs fit one node, 60 GiB another: no one node has both.
        let small_big = [c(16, 8), c(4, 64)];
        assert_eq!(
            too_large(Some(16), Some(60 << 30), None, &small_big)
                .unwrap()
                .0,
            "resources"
        );
        // Nodes that declared nothing (older runners) are not held to a capacity.
        assert_eq!(too_large(Some(999), None, None, &[c(0, 0)]), None);
    }

    #[test]
    fn cpus_are_promised_times_the_overcommit() {
        let c = Capacity {
            cpus: 4,
            memory_bytes: 1,
            disk_bytes: 1,
            cpu_overcommit: 1.5,
        };
        assert_eq!(c.promised_cpus(), 6);
    }
}

//! Why a waiting run waits. Worked out when the run is read, from the nodes as they are and
//! its owner's usage, so it is always current (a node joining or leaving, capacity freed, a
//! quota changed) without anything written while runs wait. Pure rules here; the reads are the
//! runs use case's (`Runs::explain`).

use crate::{
    domain::{Node, NodeStatus, Requested},
    placement::{self, Labels},
};

/// The contract's `PendingReason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendingReason {
    Inputs,
    NoMatchingNode,
    Capacity,
    Quota,
    Priority,
    NoNodeOnline,
}

/// Why a run waits, with the numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub reason: PendingReason,
    pub message: String,
}

/// What a principal holds and may hold (0: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OwnerRoom {
    pub running_runs: i64,
    pub max_running_runs: i64,
    pub reserved_cpus: i64,
    pub max_reserved_cpus: i64,
    pub reserved_memory_bytes: i64,
    pub max_reserved_memory_bytes: i64,
}

fn gib(bytes: i64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn selector_text(selector: &Labels) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `run` (WAITING) waits: its inputs, then whether any node takes runs, then one whose
/// labels match its selector, then its owner's quotas, then free capacity on a matching node
/// (its request against the most any has free), else its turn in the queue.
pub(crate) fn why(
    requested: &Requested,
    selector: &Labels,
    inputs_ready: bool,
    nodes: &[Node],
    owner: Option<&OwnerRoom>,
) -> Pending {
    let pending = |reason, message: String| Pending { reason, message };
    if !inputs_ready {
        return pending(
            PendingReason::Inputs,
            "waits for its inputs to finish uploading".to_owned(),
        );
    }
    let online: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Online)
        .collect();
    if online.is_empty() {
        return pending(
            PendingReason::NoNodeOnline,
            "no node is online and taking runs".to_owned(),
        );
    }
    let matching: Vec<&&Node> = online
        .iter()
        .filter(|n| placement::matches(&n.labels, selector))
        .collect();
    if matching.is_empty() {
        return pending(
            PendingReason::NoMatchingNode,
            format!("no online node has {}", selector_text(selector)),
        );
    }
    if let Some(quota) = owner.and_then(|o| quota_message(requested, o)) {
        return pending(PendingReason::Quota, quota);
    }
    let cpus = i64::from(requested.cpus.unwrap_or(1));
    let memory = requested.memory_bytes.unwrap_or(0) as i64;
    let free = |n: &Node| {
        let cpus = i64::from(n.capacity.promised_cpus()) - n.reserved.cpus;
        let memory = n.capacity.memory_bytes as i64 - n.reserved.memory_bytes;
        (
            cpus.max(0),
            memory.max(0),
            n.reserved.runs < i64::from(n.max_runs),
        )
    };
    let fits = matching.iter().any(|n| {
        let (c, m, slot) = free(n);
        slot && c >= cpus && m >= memory
    });
    if !fits {
        let (most_cpus, most_memory) = matching
            .iter()
            .map(|n| free(n))
            .filter(|(_, _, slot)| *slot)
            .fold((0, 0), |(c, m), (fc, fm, _)| (c.max(fc), m.max(fm)));
        return pending(
            PendingReason::Capacity,
            format!(
                "needs {cpus} CPUs and {}; the most free on a matching node is {most_cpus} CPUs \
                 and {}",
                gib(memory),
                gib(most_memory)
            ),
        );
    }
    pending(
        PendingReason::Priority,
        "fits a matching node: waits its turn behind runs of higher priority, older, or of \
         principals with a smaller fair share"
            .to_owned(),
    )
}

/// The owner's limit that holds the run back, if one does.
fn quota_message(requested: &Requested, o: &OwnerRoom) -> Option<String> {
    let cpus = i64::from(requested.cpus.unwrap_or(1));
    let memory = requested.memory_bytes.unwrap_or(0) as i64;
    if o.max_running_runs > 0 && o.running_runs >= o.max_running_runs {
        return Some(format!(
            "its owner runs {} runs, its max_running_runs",
            o.running_runs
        ));
    }
    if o.max_reserved_cpus > 0 && o.reserved_cpus + cpus > o.max_reserved_cpus {
        return Some(format!(
            "its owner's runs hold {} CPUs; {cpus} more would pass its max_reserved_cpus of {}",
            o.reserved_cpus, o.max_reserved_cpus
        ));
    }
    if o.max_reserved_memory_bytes > 0
        && o.reserved_memory_bytes + memory > o.max_reserved_memory_bytes
    {
        return Some(format!(
            "its owner's runs hold {}; {} more would pass its max_reserved_memory_bytes of {}",
            gib(o.reserved_memory_bytes),
            gib(memory),
            gib(o.max_reserved_memory_bytes)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Capacity, Reserved};

    fn node(status: NodeStatus, labels: &[(&str, &str)], cpus: u32, reserved_cpus: i64) -> Node {
        Node {
            name: "n".into(),
            address: "a".into(),
            status,
            max_runs: 8,
            active_runs: 0,
            heartbeat_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
            lxd_version: None,
            lxd_available: true,
            capacity: Capacity {
                cpus,
                memory_bytes: 16 << 30,
                disk_bytes: 0,
                cpu_overcommit: 1.0,
            },
            reserved: Reserved {
                runs: 1,
                cpus: reserved_cpus,
                memory_bytes: 0,
                disk_bytes: 0,
            },
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_waiting_run_says_why_with_the_numbers() {
        let asks = |cpus| Requested {
            cpus: Some(cpus),
            ..Requested::default()
        };
        let ssd: Labels = [("disk".to_owned(), "ssd".to_owned())].into();
        let online = node(NodeStatus::Online, &[], 4, 2);
        let r = |req, sel: &Labels, ready, nodes: &[Node], owner| {
            why(&req, sel, ready, nodes, owner).reason
        };
        assert_eq!(
            r(
                asks(1),
                &Labels::new(),
                false,
                std::slice::from_ref(&online),
                None
            ),
            PendingReason::Inputs
        );
        let drained = node(NodeStatus::Draining, &[], 4, 0);
        assert_eq!(
            r(asks(1), &Labels::new(), true, &[drained], None),
            PendingReason::NoNodeOnline
        );
        let p = why(&asks(1), &ssd, true, std::slice::from_ref(&online), None);
        assert_eq!(p.reason, PendingReason::NoMatchingNode);
        assert!(p.message.contains("disk=ssd"), "{}", p.message);
        let full = OwnerRoom {
            running_runs: 3,
            max_running_runs: 3,
            ..OwnerRoom::default()
        };
        assert_eq!(
            r(
                asks(1),
                &Labels::new(),
                true,
                std::slice::from_ref(&online),
                Some(&full)
            ),
            PendingReason::Quota
        );
        let p = why(
            &asks(4),
            &Labels::new(),
            true,
            std::slice::from_ref(&online),
            None,
        );
        assert_eq!(p.reason, PendingReason::Capacity);
        assert!(
            p.message.contains("needs 4 CPUs") && p.message.contains("2 CPUs"),
            "{}",
            p.message
        );
        assert_eq!(
            r(asks(2), &Labels::new(), true, &[online], None),
            PendingReason::Priority
        );
    }
}

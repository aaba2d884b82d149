//! How large a run may be. Every container is bounded whether or not anything asks: a run
//! that names no limit gets the node's default, a run may never exceed the largest run its
//! node accepts, and SubmitRun refuses a run that no registered node could ever take.

use std::time::Duration;

/// The resources of one run's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Tasks (processes and threads) at once: `limits.processes`.
    pub processes: u32,
    /// Bytes the container's root disk may hold, and bytes its writable folders (outputs, logs
    /// and control) may hold together.
    pub disk_bytes: u64,
    /// Wall-clock time from the command's start.
    pub time: Duration,
}

/// What a run asks for; `None` takes the node's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub processes: Option<u32>,
    pub disk_bytes: Option<u64>,
    pub time: Option<Duration>,
}

/// A node's bounds: the largest run it accepts, and what a run gets when it asks for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    pub largest: Limits,
    pub default: Limits,
}

impl NodeLimits {
    /// Defaults above the largest run are lowered to it.
    pub fn new(largest: Limits, default: Limits) -> Self {
        let default = Limits {
            cpus: default.cpus.min(largest.cpus),
            memory_bytes: default.memory_bytes.min(largest.memory_bytes),
            processes: default.processes.min(largest.processes),
            disk_bytes: default.disk_bytes.min(largest.disk_bytes),
            time: default.time.min(largest.time),
        };
        Self { largest, default }
    }

    /// What a run that asked for `r` gets on this node.
    pub fn effective(&self, r: &Requested) -> Limits {
        let d = &self.default;
        Limits {
            cpus: r.cpus.unwrap_or(d.cpus),
            memory_bytes: r.memory_bytes.unwrap_or(d.memory_bytes),
            processes: r.processes.unwrap_or(d.processes),
            disk_bytes: r.disk_bytes.unwrap_or(d.disk_bytes),
            time: r.time.unwrap_or(d.time),
        }
    }

    /// Whether this node may take a run that asked for `r`.
    pub fn admits(&self, r: &Requested) -> bool {
        excess(r, &self.largest).is_empty()
    }
}

/// One way a request exceeds a node, named as SubmitRun's fields are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Excess {
    pub field: &'static str,
    pub asked: String,
    pub limit: String,
}

/// Every field of `r` above `largest`.
pub(crate) fn excess(r: &Requested, largest: &Limits) -> Vec<Excess> {
    let size = pirus_server::options::format_size;
    let mut out = Vec::new();
    let mut check = |field, asked: Option<u64>, limit: u64, show: &dyn Fn(u64) -> String| {
        if let Some(asked) = asked
            && asked > limit
        {
            out.push(Excess {
                field,
                asked: show(asked),
                limit: show(limit),
            });
        }
    };
    check(
        "resources.cpu",
        r.cpus.map(u64::from),
        u64::from(largest.cpus),
        &|n| n.to_string(),
    );
    check(
        "resources.memory_bytes",
        r.memory_bytes,
        largest.memory_bytes,
        &size,
    );
    check(
        "resources.processes",
        r.processes.map(u64::from),
        u64::from(largest.processes),
        &|n| n.to_string(),
    );
    check(
        "resources.disk_bytes",
        r.disk_bytes,
        largest.disk_bytes,
        &size,
    );
    check(
        "timeout",
        r.time.map(|t| t.as_secs()),
        largest.time.as_secs(),
        &|s| format!("{s}s"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpus: u32, memory: u64, processes: u32, disk: u64, secs: u64) -> Limits {
        Limits {
            cpus,
            memory_bytes: memory,
            processes,
            disk_bytes: disk,
            time: Duration::from_secs(secs),
        }
    }

    #[test]
    fn defaults_fill_what_a_run_does_not_ask_and_never_exceed_the_largest() {
        let node = NodeLimits::new(
            limits(4, 8 << 30, 1000, 10 << 30, 3600),
            limits(1, 16 << 30, 100, 1 << 30, 600),
        );
        assert_eq!(node.default.memory_bytes, 8 << 30, "lowered to the largest");
        let asked = Requested {
            cpus: Some(2),
            ..Default::default()
        };
        assert_eq!(
            node.effective(&asked),
            limits(2, 8 << 30, 100, 1 << 30, 600)
        );
        assert!(node.admits(&asked));
        assert!(node.admits(&Requested::default()));
    }

    #[test]
    fn every_excess_is_named_with_its_limit() {
        let largest = limits(4, 1 << 30, 1000, 10 << 30, 3600);
        let asked = Requested {
            cpus: Some(64),
            memory_bytes: Some(1 << 30),
            processes: Some(1001),
            disk_bytes: Some(11 << 30),
            time: Some(Duration::from_secs(7200)),
        };
        let fields: Vec<_> = excess(&asked, &largest)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "resources.cpu",
                "resources.processes",
                "resources.disk_bytes",
                "timeout"
            ]
        );
        let e = &excess(&asked, &largest)[0];
        assert_eq!((e.asked.as_str(), e.limit.as_str()), ("64", "4"));
        assert!(excess(&Requested::default(), &largest).is_empty());
    }
}

//! Conversions between the generated proto types and the runner's domain, in one place.

use pirus_proto::runner::v1 as pb;
use uuid::Uuid;

use crate::domain::{
    Error, Monitoring, Node, NodeStatus, Page, Progress, Result, Run, RunEvent, RunStatus,
};

pub(super) use pirus_server::paging::{paged, timestamp};

pub(super) fn parse_id(field: &str, value: &str) -> Result<Uuid> {
    Ok(pirus_server::paging::parse_id(field, value)?)
}

pub(super) fn page(page_size: i32, page_token: &str) -> Result<Page> {
    Ok(pirus_server::paging::page(page_size, page_token)?)
}

pub(super) fn status_to_proto(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Waiting => pb::RunStatus::Waiting,
        RunStatus::Initializing => pb::RunStatus::Initializing,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Pause => pb::RunStatus::Pause,
        RunStatus::Finishing => pb::RunStatus::Finishing,
        RunStatus::Done => pb::RunStatus::Done,
        RunStatus::Error => pb::RunStatus::Error,
        RunStatus::Canceled => pb::RunStatus::Canceled,
    }
}

pub(super) fn status_from_proto(value: i32) -> Result<Option<RunStatus>> {
    let status = pb::RunStatus::try_from(value)
        .map_err(|_| Error::invalid("status", format!("{value} is not a RunStatus")))?;
    Ok(RunStatus::ALL
        .into_iter()
        .find(|s| status_to_proto(*s) == status))
}

fn progress(p: Progress) -> pb::Progress {
    pb::Progress {
        value: p.value,
        label: p.label,
    }
}

pub(super) fn run_to_proto(r: Run) -> pb::Run {
    let ids = |v: Vec<Uuid>| v.into_iter().map(|id| id.to_string()).collect();
    pb::Run {
        id: r.id.to_string(),
        pipeline_id: r.pipeline_id.to_string(),
        pipeline_version: r.pipeline_version,
        image_sha256: r.image_sha256,
        name: r.name,
        status: status_to_proto(r.status) as i32,
        config_json: r.config.to_string(),
        input_file_ids: ids(r.input_file_ids),
        output_file_ids: ids(r.output_file_ids),
        log_file_ids: ids(r.log_file_ids),
        progress: Some(progress(r.progress)),
        node: r.node.unwrap_or_default(),
        // A waiting run shows the attempt it waits for (1 for the first): the store counts
        // attempts when a node claims one.
        attempt: if r.status == RunStatus::Waiting {
            r.attempt + 1
        } else {
            r.attempt
        },
        exit_code: r.exit_code,
        error_message: r.error_message,
        created_at: Some(timestamp(r.created_at)),
        started_at: r.started_at.map(timestamp),
        ended_at: r.ended_at.map(timestamp),
        priority: r.priority,
        max_attempts: r.max_attempts,
        resources: Some(pb::Resources {
            cpu: r.requested.cpus.unwrap_or(0),
            memory_bytes: r.requested.memory_bytes.unwrap_or(0) as i64,
            processes: r.requested.processes.unwrap_or(0),
            disk_bytes: r.requested.disk_bytes.unwrap_or(0) as i64,
        }),
        timeout: r.requested.time.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: 0,
        }),
        owner: r.owner_name.unwrap_or_default(),
        node_selector: r.node_selector.into_iter().collect(),
        pending_reason: r
            .pending
            .as_ref()
            .map_or(pb::PendingReason::Unspecified, |p| {
                use crate::pending::PendingReason as R;
                match p.reason {
                    R::Inputs => pb::PendingReason::Inputs,
                    R::NoMatchingNode => pb::PendingReason::NoMatchingNode,
                    R::Capacity => pb::PendingReason::Capacity,
                    R::Quota => pb::PendingReason::Quota,
                    R::Priority => pb::PendingReason::Priority,
                    R::NoNodeOnline => pb::PendingReason::NoNodeOnline,
                }
            }) as i32,
        pending_message: r.pending.map(|p| p.message).unwrap_or_default(),
    }
}

pub(super) fn event_to_proto(e: RunEvent) -> pb::RunEvent {
    pb::RunEvent {
        seq: e.seq,
        run_id: e.run_id.to_string(),
        status: status_to_proto(e.status) as i32,
        progress: Some(progress(e.progress)),
        message: e.message,
        at: Some(timestamp(e.at)),
        attempt: e.attempt,
    }
}

pub(super) fn node_to_proto(n: Node) -> pb::Node {
    pb::Node {
        name: n.name,
        address: n.address,
        status: match n.status {
            NodeStatus::Online => pb::NodeStatus::Online,
            NodeStatus::Draining => pb::NodeStatus::Draining,
            NodeStatus::Offline => pb::NodeStatus::Offline,
        } as i32,
        max_runs: n.max_runs,
        active_runs: n.active_runs,
        heartbeat_at: Some(timestamp(n.heartbeat_at)),
        lxd_version: n.lxd_version.unwrap_or_default(),
        lxd_available: n.lxd_available,
        started_at: Some(timestamp(n.started_at)),
        capacity: Some(pb::Resources {
            cpu: n.capacity.cpus,
            memory_bytes: n.capacity.memory_bytes as i64,
            processes: 0,
            disk_bytes: n.capacity.disk_bytes as i64,
        }),
        reserved: Some(pb::Resources {
            cpu: n.reserved.cpus.clamp(0, u32::MAX.into()) as u32,
            memory_bytes: n.reserved.memory_bytes,
            processes: 0,
            disk_bytes: n.reserved.disk_bytes,
        }),
        labels: n.labels.into_iter().collect(),
        cpu_overcommit: n.capacity.cpu_overcommit,
    }
}

pub(super) fn monitoring_to_proto(m: Monitoring) -> pb::RunMonitoring {
    pb::RunMonitoring {
        cpu_seconds: m.cpu_seconds,
        memory_bytes: m.memory_bytes,
        memory_peak_bytes: m.memory_peak_bytes,
        processes: m.processes,
        container_status: m.container_status,
        disk_bytes: m.disk_bytes,
        at: Some(timestamp(m.at)),
    }
}

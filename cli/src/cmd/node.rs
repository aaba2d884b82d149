//! `pirus node`: the runner nodes (operators and admins).

use anyhow::{Context, Result};
use clap::Subcommand;
use pirus_proto::runner::v1::{
    DrainNodeRequest, ListNodesRequest, Node as Proto, NodeStatus, UndrainNodeRequest,
};

use crate::{
    config::Settings,
    connect,
    output::{Table, ago, emit, emit_list, short, size},
};

#[derive(Debug, Subcommand)]
pub enum Node {
    /// Lists every node: status, runs held of its slots, CPUs and memory reserved of its
    /// capacity, labels, last heartbeat, LXD
    #[command(after_help = "Example:\n  pirus node list")]
    List,
    /// Drains a node: it takes no new runs and finishes its own
    #[command(after_help = "Example:\n  pirus node drain node-2")]
    Drain {
        /// The node's name
        name: String,
    },
    /// Lets a drained node take runs again
    #[command(after_help = "Example:\n  pirus node undrain node-2")]
    Undrain {
        /// The node's name
        name: String,
    },
}

fn table(nodes: &[Proto]) {
    let mut table = Table::new(&[
        "NAME",
        "STATUS",
        "RUNS",
        "CPUS",
        "MEMORY",
        "LABELS",
        "HEARTBEAT",
        "LXD",
        "ADDRESS",
    ]);
    for n in nodes {
        let status = NodeStatus::try_from(n.status)
            .map_or("?".to_owned(), |s| short(s.as_str_name(), "NODE_STATUS_"));
        let lxd = if n.lxd_available {
            n.lxd_version.clone()
        } else {
            "unreachable".to_owned()
        };
        let (capacity, reserved) = (
            n.capacity.unwrap_or_default(),
            n.reserved.unwrap_or_default(),
        );
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row(vec![
            n.name.clone(),
            status,
            format!("{}/{}", n.active_runs, n.max_runs),
            format!("{}/{}", reserved.cpu, capacity.cpu),
            format!(
                "{}/{}",
                size(reserved.memory_bytes),
                size(capacity.memory_bytes)
            ),
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(",")
            },
            ago(n.heartbeat_at.as_ref()),
            lxd,
            n.address.clone(),
        ]);
    }
    table.print();
}

impl Node {
    pub async fn run(self, settings: &Settings) -> Result<()> {
        let mut runner = connect::runner(settings).await?;
        const NAME: &str = "pirus.runner.v1.Node";
        let node = match self {
            Node::List => {
                let nodes = runner
                    .list_nodes(ListNodesRequest {})
                    .await
                    .context("listing nodes")?
                    .into_inner()
                    .nodes;
                emit_list(settings.json, &nodes, NAME, table)?;
                return Ok(());
            }
            Node::Drain { name } => runner
                .drain_node(DrainNodeRequest { name: name.clone() })
                .await
                .with_context(|| format!("draining node {name}"))?,
            Node::Undrain { name } => runner
                .undrain_node(UndrainNodeRequest { name: name.clone() })
                .await
                .with_context(|| format!("undraining node {name}"))?,
        }
        .into_inner();
        emit(settings.json, &node, NAME, table)?;
        Ok(())
    }
}

//! Starting an attempt: its plan and pipeline read, the image ensured, the run's folders made
//! and filled as the plan says, the container created and the command started.

use pirus_db::listen::Notice;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    Attempt, Executor, Outcome, Started, container, progress, safedir, script, staging,
    workspace::{self, Workspace},
};
use crate::{
    domain::{Error, Plan, Result, Run},
    inputs::CONFIG_FILE,
    lifecycle::{Desired, Event},
    store::Change,
};
use container::Layout;

impl Executor {
    /// Prepares and starts the run, then watches it until its command ends.
    pub(super) async fn start(
        &self,
        run: &Run,
        attempt: &Attempt,
        progress: &mut progress::Tracker,
        control: &mut broadcast::Receiver<Notice>,
    ) -> (Option<Workspace>, Outcome) {
        match self.prepare_and_start(run, attempt).await {
            Ok(started) => {
                let outcome = self
                    .monitor(run, attempt, &started, progress, control, false)
                    .await;
                (Some(started.workspace), outcome)
            }
            Err(e) => (None, self.start_failed(run.id, e).await),
        }
    }

    async fn prepare_and_start(&self, run: &Run, attempt: &Attempt) -> Result<Started> {
        let inner = &self.inner;
        if let Some(why) = &attempt.plan_error {
            return Err(Error::internal(why));
        }
        let pipeline = pirus_db::views::pipeline(inner.stores.db(), run.pipeline_id)
            .await?
            .ok_or_else(|| Error::internal(format!("pipeline {} is gone", run.pipeline_id)))?;
        let manifest = pipeline.manifest.as_ref().unwrap_or(&Value::Null);
        let plan = match &attempt.plan {
            Some(plan) => plan.clone(),
            None => Plan::pipeline(manifest)
                .ok_or_else(|| Error::internal("the pipeline's manifest has no run command"))?,
        };
        if let Some(why) = plan
            .staging
            .as_ref()
            .and_then(|s| staging::unsupported(s, &inner.tes_file_roots))
        {
            return Err(Error::FailedPrecondition(why));
        }
        let layout = Layout::from_manifest(manifest);
        inner
            .artifacts
            .ensure_image(&run.image_sha256, pipeline.image_file_id)
            .await?;
        let labels = container::labels(run.id, run.attempt, &inner.node);
        let workspace = Workspace::create(
            &inner.storage,
            &inner.runs,
            &attempt.container,
            &labels,
            attempt.folder.clone(),
            attempt.limits.disk_bytes,
        )
        .await?;
        let command = self
            .write_inputs(run, &pipeline, plan, &layout, workspace.inputs()?, attempt)
            .await?;
        let spec = self.spec(run, &layout, &workspace, attempt).await?;
        container::create_and_start(&inner.lxd, &inner.creating, &spec.build(), &workspace).await?;
        // Canceled while being prepared: the command never starts.
        if inner.stores.queue.desired(run.id).await? == Some(Desired::Canceled) {
            return Err(Error::FailedPrecondition(
                "canceled while being prepared".into(),
            ));
        }
        let environment = spec.environment();
        let exec =
            container::exec_command(&inner.lxd, &attempt.container, &command, &environment).await?;
        let started = self
            .change(attempt, Change::new(Event::Started, "command started"))
            .await?;
        if !started {
            return Err(Error::FailedPrecondition(
                "this node no longer holds the run".into(),
            ));
        }
        Ok(Started {
            workspace,
            exec: Some(exec),
        })
    }

    /// The container's spec for an attempt.
    async fn spec<'a>(
        &'a self,
        run: &'a Run,
        layout: &'a Layout,
        workspace: &'a Workspace,
        attempt: &Attempt,
    ) -> Result<container::Spec<'a>> {
        let inner = &self.inner;
        Ok(container::Spec {
            run,
            node: &inner.node,
            layout,
            workspace,
            limits: attempt.limits,
            pool: inner.storage.pool(),
            caps: inner.storage.caps().await?,
            isolated_idmap: inner.isolated_idmap,
            databases_dir: inner.databases_dir.as_deref(),
            profile_nics: if layout.network {
                Vec::new()
            } else {
                container::profile_nics(&inner.lxd).await?
            },
        })
    }

    /// Fills the run's inputs folder as its plan says; answers the command the wrapper runs.
    /// A staged plan's inputs are staged and its script is the command; a plan in the
    /// pipeline convention gets the run's input files and configuration, and its one step
    /// is the command.
    async fn write_inputs(
        &self,
        run: &Run,
        pipeline: &pirus_db::views::PipelineView,
        plan: Plan,
        layout: &Layout,
        inputs: safedir::SafeDir,
        attempt: &Attempt,
    ) -> Result<Vec<String>> {
        let inner = &self.inner;
        let Some(staging) = plan.staging else {
            let mut steps = plan.steps.into_iter();
            let (Some(step), None) = (steps.next(), steps.next()) else {
                return Err(Error::internal("a plan without staging has one step"));
            };
            self.write_pipeline_inputs(run, pipeline, inputs).await?;
            return Ok(step.command);
        };
        staging::link_inputs(&inner.artifacts, inner.stores.db(), &staging, &inputs).await?;
        let staged = staging::Staged {
            steps: plan.steps,
            staging,
            run: run.id,
            inputs_dir: layout.inputs.clone(),
        };
        let roots = inner.tes_file_roots.clone();
        staging::stage(staged, inputs, roots, attempt.limits.disk_bytes).await?;
        Ok(vec![
            "/bin/sh".to_owned(),
            format!("{}/{}", layout.inputs, script::SCRIPT),
        ])
    }

    /// A pipeline run's inputs: its input files linked under their sanitised names, and its
    /// configuration (CONTRACT §5).
    async fn write_pipeline_inputs(
        &self,
        run: &Run,
        pipeline: &pirus_db::views::PipelineView,
        inputs: safedir::SafeDir,
    ) -> Result<()> {
        self.inner.artifacts.link_inputs(run, &inputs).await?;
        let config = json!({
            "pirus": {
                "run_id": run.id.to_string(),
                "run_name": run.name,
                "pipeline_id": run.pipeline_id.to_string(),
                "pipeline_name": pipeline.name,
            },
            "job": run.config,
        });
        let config = serde_json::to_vec_pretty(&config).map_err(Error::internal)?;
        workspace::blocking(move || inputs.write_new(CONFIG_FILE, &config, 0o644)).await
    }

    /// What a failed start means: a cancel that arrived meanwhile, or a failure.
    async fn start_failed(&self, run: Uuid, e: Error) -> Outcome {
        match self.inner.stores.queue.desired(run).await {
            Ok(Some(Desired::Canceled)) => Outcome::Canceled,
            _ => Outcome::Failed(format!("the run could not start: {e}")),
        }
    }
}

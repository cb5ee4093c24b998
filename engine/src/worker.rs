//! The worker: an apalis worker on the step queue that checks each job against its company's
//! current policy, runs its op (or opens its approval gate), and commits the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use futures::FutureExt;
use steward_core::history::redact;
use steward_core::plan::GATE_OP;
use steward_core::policy::{Verdict, judge};
use steward_core::{Catalog, Plan};
use steward_schemas::{Approvers, Dur, Event, FailureKind, GateSpec, Phase, StepFailure};
use steward_workers::{OpContext, OpError, OpOutcome, Registry, Services};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::companies::{Companies, CompanyRecord};
use crate::queue::{Delivery, QueueConfig, StepQueue};
use crate::store::{self, JobCheck, Outcome, RunSnapshot, Store};

/// How old the step queue's check of a job may be when the job starts (it is read with the
/// batch, and the job starts at once unless the worker is slow to take it): older, and the
/// worker reads the run again. Before, the check was one round trip (~0.1 ms) older than the op's
/// start; this bounds the window in which Redis may lose the run unseen to 20 ms. (A Redis that
/// loses a run loses the rollback records of its earlier steps too.)
pub const FRESH_CHECK: Duration = Duration::from_millis(20);

/// What every job of a worker process shares.
#[derive(Debug)]
pub struct Runtime {
    /// The run store.
    pub store: Store,
    /// The companies (their policies are checked before each step runs).
    pub companies: Companies,
    /// The ops.
    pub registry: Registry,
    /// Clients the ops use.
    pub services: Services,
}

/// Runs a worker until `shutdown` completes.
pub async fn run(
    runtime: Arc<Runtime>,
    queue: QueueConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), apalis_core::error::WorkerError> {
    use apalis::layers::WorkerBuilderExt as _;
    let name = queue.consumer.clone();
    // New jobs, plus the places kept for jobs taken over from dead workers.
    let concurrency = queue.capacity();
    let backend = StepQueue::start(runtime.store.clone(), runtime.companies.clone(), queue);
    let drain = backend.drain();
    // No `catch_panic` layer: `execute` catches a panicking op itself and reports it as a
    // failure (apalis's layer would leave the job unacknowledged, and its future cannot be
    // spawned onto the runtime).
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(runtime)
        .concurrency(concurrency)
        .build(handle);
    let result = worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await;
    drain.release().await;
    result
}

async fn handle(delivery: Delivery, runtime: Data<Arc<Runtime>>) -> Result<(), BoxDynError> {
    let span = info_span!(
        "step",
        run.id = %delivery.run,
        step.name = %delivery.job.step,
        step.attempt = delivery.job.attempt.get(),
        step.phase = delivery.job.phase.name(),
        op = %delivery.job.op,
        queue.deliveries = delivery.deliveries,
    );
    runtime.execute(delivery).instrument(span).await;
    Ok(())
}

enum Failure {
    Op(OpError),
    Timeout(Dur),
    Panic(String),
}

impl Runtime {
    /// Runs one job and commits its outcome (retrying while Redis is unreachable).
    pub async fn execute(&self, mut delivery: Delivery) {
        delivery.start();
        // The run as it is now, read with the check that the job is still current.
        let Some(RunSnapshot {
            version,
            doc,
            legacy,
        }) = self.still_current(&mut delivery).await
        else {
            return;
        };
        let job = &delivery.job;
        let company = match &delivery.company {
            Some(c) => c.clone(),
            None => match self.companies.get(&doc.ctx.company).await {
                Ok(c) => c.map(Arc::new),
                Err(e) => {
                    warn!(error = %e, "cannot read the company; the job will be retried");
                    return;
                }
            },
        };
        // A gate's approvers are checked against the technicians as they are when it opens.
        let directory = if job.phase == Phase::Run && job.op == GATE_OP {
            match crate::auth::Auth::for_store(&self.store).directory().await {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(error = %e, "cannot read the technicians; the job will be retried");
                    return;
                }
            }
        } else {
            None
        };
        let event = if job.phase == Phase::Run {
            match self
                .check_policy(
                    &doc.ctx.workflow.hash,
                    job,
                    company.as_deref(),
                    doc.ctx.company.as_str(),
                )
                .await
            {
                Some(reason) => {
                    warn!(%reason, "the company's policy refuses the step; pausing the run");
                    Event::StepBlocked {
                        step: job.step.clone(),
                        seq: job.seq,
                        reason,
                    }
                }
                None if job.op == GATE_OP => {
                    let directory = directory.as_ref().expect("read above for a gate's job");
                    open_gate(job, company.as_deref(), directory)
                }
                None => {
                    self.run_op(
                        &delivery,
                        &doc.ctx.company,
                        company.as_deref().map(|c| &c.company),
                    )
                    .await
                }
            }
        } else {
            self.run_op(
                &delivery,
                &doc.ctx.company,
                company.as_deref().map(|c| &c.company),
            )
            .await
        };
        let metrics = self.store.metrics();
        let (op, phase) = (job.op.as_str(), job.phase.name());
        metrics.count(
            "steward_steps_total",
            &[
                ("op", op),
                ("phase", phase),
                ("result", &result_label(&event)),
            ],
        );
        if job.attempt.get() > 1 && job.phase == Phase::Run {
            metrics.count("steward_step_retries_total", &[("op", op)]);
        }
        // After a failed commit the run is read again: another transition may have happened.
        let mut snapshot = Some(RunSnapshot {
            version,
            doc,
            legacy,
        });
        let ack = delivery.ack();
        let mut wait = Duration::from_millis(50);
        loop {
            match self
                .store
                .apply(delivery.run, &event, snapshot.take(), Some(&ack), None)
                .await
            {
                Ok(Outcome::Applied { state, .. }) => {
                    debug!(
                        event = event.name(),
                        status = state.status.name(),
                        "outcome committed"
                    );
                    return;
                }
                Ok(Outcome::Ignored { reason }) => {
                    debug!(event = event.name(), %reason, "outcome ignored");
                    return;
                }
                Ok(Outcome::Refused(e)) => {
                    warn!(event = event.name(), error = %e, "outcome refused");
                    return;
                }
                Err(store::Error::Redis(e)) => {
                    warn!(error = %e, retry_in = ?wait, "cannot commit the outcome; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    error!(error = %e, "cannot commit the outcome");
                    return;
                }
            }
        }
    }

    /// Whether the job is still worth running, asked right before its op runs (however long ago
    /// it was received, and whether or not Redis restarted or lost writes since; the step queue's
    /// check with the batch's read counts as asked if it is at most [`FRESH_CHECK`] old): its run exists,
    /// the job is the run's current attempt, and the run's definition can be read. A job that is
    /// not current is acknowledged and dropped; one whose definition is missing is left pending
    /// (it runs once the definition is back) and its op is not run.
    async fn still_current(&self, delivery: &mut Delivery) -> Option<RunSnapshot> {
        let ack = delivery.ack();
        let mut wait = Duration::from_millis(50);
        // The step queue read the run with the batch, a moment ago: that check is used while it
        // is this fresh, and made again otherwise.
        if let Some(check) = delivery.take_check(FRESH_CHECK) {
            return self.act_on_check(delivery, &ack, check).await;
        }
        let check = loop {
            match self.store.check_job(delivery.run, &ack).await {
                Ok(c) => break c,
                Err(store::Error::Redis(e)) => {
                    warn!(error = %e, retry_in = ?wait, "cannot check that the job is current; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // Left pending: delivered again, and parked after too many deliveries.
                    error!(error = %e, "cannot read the job's run; leaving the job to be delivered again");
                    return None;
                }
            }
        };
        self.act_on_check(delivery, &ack, check).await
    }

    /// Runs on a current job's check (its definition readable); drops a job that is not current.
    async fn act_on_check(
        &self,
        delivery: &Delivery,
        ack: &store::Ack,
        check: JobCheck,
    ) -> Option<RunSnapshot> {
        let (why, reason) = match check {
            JobCheck::Current(snap) => {
                return self.definition_readable(&snap.doc).await.then_some(*snap);
            }
            JobCheck::RunGone => (
                "its run does not exist (it was lost by Redis or deleted)",
                "run_gone",
            ),
            JobCheck::Stale => ("it is no longer the run's current attempt", "not_current"),
        };
        self.store
            .metrics()
            .count("steward_jobs_dropped_total", &[("reason", reason)]);
        warn!("not running the job: {why}; acknowledging it without running the op");
        if let Err(e) = self.store.drop_job(delivery.run, ack).await {
            warn!(error = %e, "cannot acknowledge the dropped job; it will be delivered again and dropped again");
        }
        None
    }

    /// Whether the run's definition can be read (a job whose definition is missing is left
    /// pending: it runs once the definition is back).
    async fn definition_readable(&self, doc: &steward_schemas::RunDoc) -> bool {
        match self.store.plan(&doc.ctx.workflow.hash).await {
            Ok(_) => true,
            Err(store::Error::NoSuchDefinition(hash)) => {
                self.store.metrics().count(
                    "steward_jobs_dropped_total",
                    &[("reason", "definition_missing")],
                );
                error!(
                    workflow = %doc.ctx.workflow.name,
                    version = doc.ctx.workflow.version,
                    %hash,
                    "not running the job: the run's workflow definition is missing from Redis; the job stays queued until the definition is written back (serve does so from its workflow files, and so does starting a run of that workflow version)"
                );
                false
            }
            Err(e) => {
                warn!(error = %e, "cannot read the run's definition; the job will be delivered again");
                false
            }
        }
    }

    /// Why the company's policy, as it is now, refuses this step; `None` if it allows it.
    async fn check_policy(
        &self,
        plan_hash: &str,
        job: &steward_schemas::Job,
        company: Option<&CompanyRecord>,
        company_id: &str,
    ) -> Option<String> {
        if job.op == GATE_OP {
            return None;
        }
        let Some(company) = company else {
            return Some(format!("company `{company_id}` no longer exists"));
        };
        let spec = self.registry.op(&job.op)?;
        match judge(spec, &company.company.permissions, company_id) {
            Verdict::Allowed => None,
            Verdict::Refused { reason } => Some(reason),
            Verdict::NeedsApproval { reason } => {
                // Fine if the plan put the step behind a gate; a policy that started asking for
                // approval after the run was planned stops it instead.
                match self.store.plan(plan_hash).await {
                    Ok(plan) if behind_gate(&plan, job.step.as_str()) => None,
                    Ok(_) => Some(format!(
                        "{reason}, and this run was planned without that approval; cancel it and start it again, or change the policy back"
                    )),
                    Err(e) => Some(format!("cannot check the plan ({e})")),
                }
            }
        }
    }

    async fn run_op(
        &self,
        delivery: &Delivery,
        company: &steward_schemas::CompanyId,
        settings: Option<&steward_schemas::Company>,
    ) -> Event {
        let job = &delivery.job;
        let cx = OpContext {
            run_id: delivery.run,
            company: company.clone(),
            step: job.step.clone(),
            phase: job.phase,
            attempt: job.attempt,
            polls: job.polls,
            seq: job.seq,
            services: self.services.clone(),
            settings: settings.map(|c| Arc::new(c.clone())),
        };
        // Sealed secrets in the input are opened only now, right before the op needs them.
        let secrets = self.store.secrets();
        let (input, opened) =
            match crate::secrets::runs::open_input(secrets, delivery.run, &job.input) {
                Ok(o) => (Ok(o.input), o.secrets),
                Err(message) => (Err(message), Vec::new()),
            };
        let result = match (self.registry.get(&job.op), input) {
            (_, Err(message)) => Err(Failure::Op(OpError::terminal(message))),
            (None, Ok(_)) => Err(Failure::Op(OpError::terminal(format!(
                "this worker has no implementation of op `{}`; deploy a worker that has it, then retry the step",
                job.op
            )))),
            (Some(op), Ok(input)) => {
                let running = AssertUnwindSafe(op.run(&cx, input)).catch_unwind();
                let started = std::time::Instant::now();
                let result = tokio::time::timeout(job.timeout.get(), running).await;
                self.store.metrics().observe(
                    "steward_step_duration_seconds",
                    &[("op", job.op.as_str()), ("phase", job.phase.name())],
                    started.elapsed(),
                );
                match result {
                    Err(_) => Err(Failure::Timeout(job.timeout)),
                    Ok(Err(panic)) => Err(Failure::Panic(panic_message(&panic))),
                    Ok(Ok(Err(e))) => Err(Failure::Op(e)),
                    Ok(Ok(Ok(outcome))) => Ok(outcome),
                }
            }
        };
        let mut event = outcome_event(job, result);
        cap_output(&mut event, self.store.limits().max_output_bytes);
        // Whatever the op copied out of a secret is sealed again (or hidden) before it is stored.
        crate::secrets::runs::protect(secrets, delivery.run, &opened, &mut event);
        event
    }
}

/// Whether `step` (transitively) needs an approval gate in `plan`.
fn behind_gate(plan: &Plan, step: &str) -> bool {
    let Some(i) = plan.index_of(step) else {
        return false;
    };
    plan.behind_gate(i)
}

/// Resolves a gate's approvers: its own list, or the company's approvers as they are now; and
/// says which of them cannot decide (not enabled technicians) and who the enabled admins are,
/// for the machine to leave them out or hand the gate to the admins.
fn open_gate(
    job: &steward_schemas::Job,
    company: Option<&CompanyRecord>,
    directory: &steward_core::company::Directory,
) -> Event {
    let Ok(gate) = serde_json::from_value::<GateSpec>(job.input.clone()) else {
        return Event::StepFailed {
            step: job.step.clone(),
            seq: job.seq,
            error: StepFailure::terminal("the gate's settings do not parse (a bug)"),
        };
    };
    let resolve = |a: &Approvers| -> Vec<String> {
        match a {
            Approvers::List(list) => list.clone(),
            Approvers::Source(_) => company
                .map(|c| c.company.approvers.clone())
                .unwrap_or_default(),
        }
    };
    let approvers = resolve(&gate.approvers);
    let escalation = gate.escalate_to.as_ref().map(resolve).unwrap_or_default();
    Event::GateOpened {
        step: job.step.clone(),
        seq: job.seq,
        unavailable: directory.unavailable(approvers.iter().chain(&escalation)),
        admins: directory.enabled_admins(),
        approvers,
        escalation,
    }
}

/// Replaces a succeeded step's output larger than `limit` bytes (as JSON) by a note naming the
/// limit: the step's change and its rollback record are kept (failing the step would lose the
/// record of a change that was made), and a later step that needs the output fails loudly.
fn cap_output(event: &mut Event, limit: usize) {
    if let Event::StepSucceeded { step, output, .. } = event {
        let size = serde_json::to_string(output).map_or(0, |s| s.len());
        if size > limit {
            warn!(step.name = %step, size, limit, "the op's output is larger than limits.max-output-bytes; stored a note instead");
            *output = serde_json::json!({
                "output_too_large": format!(
                    "the op's output was {size} bytes, more than limits.max-output-bytes ({limit} bytes); it was not stored"
                )
            });
        }
    }
}

/// An outcome's name for the `result` label of `steward_steps_total`.
fn result_label(event: &Event) -> String {
    match event {
        Event::StepSucceeded { .. } | Event::UndoSucceeded { .. } => "succeeded".to_owned(),
        Event::StepPending { .. } => "pending".to_owned(),
        Event::StepBlocked { .. } => "blocked".to_owned(),
        Event::GateOpened { .. } => "gate_opened".to_owned(),
        Event::StepFailed { error, .. } | Event::UndoFailed { error, .. } => {
            serde_json::to_value(error.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "failed".to_owned())
        }
        other => other.name().to_owned(),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

fn outcome_event(job: &steward_schemas::Job, result: Result<OpOutcome, Failure>) -> Event {
    let failure = |f: Failure| match f {
        Failure::Op(e) => e.into_failure(),
        Failure::Timeout(t) => StepFailure {
            kind: FailureKind::Timeout,
            message: format!("the attempt ran longer than the step's timeout ({t})"),
            code: None,
            retry_after: None,
        },
        Failure::Panic(msg) => StepFailure::terminal(format!("the op crashed (a bug): {msg}")),
    };
    let (step, seq) = (job.step.clone(), job.seq);
    match (job.phase, result) {
        (
            Phase::Run,
            Ok(OpOutcome::Succeeded {
                mut output,
                rollback,
            }),
        ) => {
            if redact(&mut output) > 0 {
                warn!(op = %job.op, "the op returned secret-looking fields; they were redacted");
            }
            Event::StepSucceeded {
                step,
                seq,
                output,
                rollback,
            }
        }
        (Phase::Run, Ok(OpOutcome::Pending { check_after, note })) => Event::StepPending {
            step,
            seq,
            check_after: Dur::new(check_after),
            note,
        },
        // A diagnosed failure no retry mends pauses the run for a technician, with the fix.
        (Phase::Run, Err(Failure::Op(OpError::NeedsTechnician { message, .. }))) => {
            Event::StepBlocked {
                step,
                seq,
                reason: message,
            }
        }
        (Phase::Run, Err(f)) => Event::StepFailed {
            step,
            seq,
            error: failure(f),
        },
        (Phase::Undo, Ok(OpOutcome::Succeeded { .. })) => Event::UndoSucceeded { step, seq },
        (Phase::Undo, Ok(OpOutcome::Pending { check_after, .. })) => Event::UndoFailed {
            step,
            seq,
            error: StepFailure {
                kind: FailureKind::Retryable,
                message: "the undo is not finished yet".to_owned(),
                code: None,
                retry_after: Some(Dur::new(check_after)),
            },
        },
        (Phase::Undo, Err(f)) => Event::UndoFailed {
            step,
            seq,
            error: failure(f),
        },
    }
}

/// A consumer name unique to this process start: `host-pid-ulid`.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}-{}", std::process::id(), ulid::Ulid::new())
}

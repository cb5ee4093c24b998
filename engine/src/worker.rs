//! The worker: an apalis worker on the step queue that runs each job's op and commits its
//! outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use futures::FutureExt;
use steward_core::history::redact;
use steward_schemas::{Dur, Event, FailureKind, Phase, StepFailure};
use steward_workers::{OpContext, OpError, OpOutcome, Registry, Services};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::queue::{Delivery, QueueConfig, StepQueue};
use crate::store::{self, Outcome, RunSnapshot, Store, parse_doc};

/// What every job of a worker process shares.
#[derive(Debug)]
pub struct Runtime {
    /// The run store.
    pub store: Store,
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
    let name = queue.consumer.clone();
    let concurrency = queue.concurrency;
    let backend = StepQueue::start(runtime.store.clone(), queue);
    // No `catch_panic` layer: `execute` catches a panicking op itself and reports it as a
    // failure (apalis's layer would leave the job unacknowledged, and its future cannot be
    // spawned onto the runtime).
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(runtime)
        .concurrency(concurrency)
        .build(handle);
    worker
        .run_until(async move {
            shutdown.await;
            Ok::<(), std::io::Error>(())
        })
        .await
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

impl Runtime {
    /// Runs one job and commits its outcome (retrying while Redis is unreachable).
    pub async fn execute(&self, delivery: Delivery) {
        let doc = match parse_doc(&delivery.doc) {
            Ok(doc) => doc,
            Err(e) => {
                error!(error = %e, "the job's run document does not parse; leaving it to be parked");
                return;
            }
        };
        let job = &delivery.job;
        let cx = OpContext {
            run_id: delivery.run,
            company: doc.ctx.company.clone(),
            step: job.step.clone(),
            phase: job.phase,
            attempt: job.attempt,
            polls: job.polls,
            seq: job.seq,
            services: self.services.clone(),
        };
        let result = match self.registry.get(&job.op) {
            None => Err(Failure::Op(OpError::terminal(format!(
                "this worker has no op `{}`; deploy a worker that has it, then retry the step",
                job.op
            )))),
            Some(op) => {
                let running = AssertUnwindSafe(op.run(&cx, job.input.clone())).catch_unwind();
                match tokio::time::timeout(job.timeout.get(), running).await {
                    Err(_) => Err(Failure::Timeout(job.timeout)),
                    Ok(Err(panic)) => Err(Failure::Panic(panic_message(&panic))),
                    Ok(Ok(Err(e))) => Err(Failure::Op(e)),
                    Ok(Ok(Ok(outcome))) => Ok(outcome),
                }
            }
        };
        let event = outcome_event(job, result);
        let snapshot = RunSnapshot {
            version: delivery.version,
            doc,
        };
        let ack = delivery.ack();
        let mut wait = Duration::from_millis(50);
        loop {
            match self
                .store
                .apply(
                    delivery.run,
                    &event,
                    Some(snapshot.clone()),
                    Some(&ack),
                    None,
                )
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
}

enum Failure {
    Op(OpError),
    Timeout(Dur),
    Panic(String),
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

//! Ticket notes: an outbox in Redis and the task that empties it.
//!
//! A note is queued once per (intake or run, stage) — `HSETNX` on its id — and written by
//! [`run`], which retries with backoff while the PSA is down (retryable errors) and gives up on
//! terminal ones, logging them; the run never waits for a note. The same task follows the runs
//! PSA tickets started (a small observer over their documents: no change to the run state
//! machine) and queues a note at each stage: started; waiting for approval, with a signed
//! approval link; done, with what changed; failed, with the diagnosis and what was undone.
//!
//! Notes never carry a secret: they are written from the redacted run view, they name inputs
//! but never their values, and a text holding a sealed value is refused before it is queued.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_schemas::{RunId, RunStatus, StepState, Timestamp};
use steward_workers::psa as client;

use super::accounts::{NoteVisibility, Stored};
use super::{Error, Intake, Psa, parse};
use crate::api::runs::RunView;
use crate::links::{LinkClaim, LinkSigner};

/// A note waiting to be written, or written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Queued {
    /// `<intake or run>:<stage>`.
    pub id: String,
    /// The PSA account.
    pub account: String,
    /// The ticket.
    pub ticket_id: String,
    /// The title.
    pub title: String,
    /// The text.
    pub text: String,
    /// Technicians only.
    pub internal: bool,
    /// Tries so far.
    pub attempts: u32,
    /// `pending`, `sent` or `failed`.
    pub status: String,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A note's title and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
}

/// A short digest for note ids.
pub fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

/// A digest of what is missing (a new note when it changes).
pub fn fingerprint(missing: &[parse::Missing]) -> String {
    short_hash(
        &missing
            .iter()
            .map(|m| format!("{}={}", m.input, m.reason))
            .collect::<Vec<_>>()
            .join(";"),
    )
}

/// The note asking for what an intake is missing.
pub fn asking(intake: &Intake) -> Text {
    let mut body = String::from(
        "Steward needs the following before it can start. Add them to the ticket as labelled lines (or a technician can supply them with `steward psa supply`):\n",
    );
    for m in &intake.missing {
        body.push_str(&format!("- {}: ({})\n", m.label, m.reason));
    }
    Text {
        title: "Steward: information needed".to_owned(),
        body,
    }
}

/// The note for a ticket that joined a run already in flight.
pub fn joined(run: RunId) -> Text {
    Text {
        title: "Steward: already in progress".to_owned(),
        body: format!(
            "This person already has a run in flight ({run}); this ticket follows the same run."
        ),
    }
}

/// The note for a start the policy or workflow refused.
pub fn refused(problem: &str) -> Text {
    Text {
        title: "Steward: could not start".to_owned(),
        body: format!("Steward could not start this request: {problem}"),
    }
}

/// The note for a run that started.
pub fn started(run: RunId, workflow: &str) -> Text {
    Text {
        title: "Steward: started".to_owned(),
        body: format!("Started {workflow} (run {run})."),
    }
}

/// Queues a note once (by `id`); whether it was new.
pub async fn queue(
    psa: &Psa,
    acct: &Stored,
    ticket: &str,
    text: &Text,
    id: &str,
) -> Result<bool, Error> {
    if steward_secrets::contains_sealed(&text.body) || steward_secrets::contains_sealed(&text.title)
    {
        tracing::error!(
            note = id,
            "a ticket note held a sealed secret; it was not queued (a bug)"
        );
        return Ok(false);
    }
    let note = Queued {
        id: id.to_owned(),
        account: acct.id.clone(),
        ticket_id: ticket.to_owned(),
        title: text.title.clone(),
        text: text.body.clone(),
        internal: acct.note_visibility == NoteVisibility::Internal,
        attempts: 0,
        status: "pending".to_owned(),
        last_error: None,
    };
    let json = serde_json::to_string(&note).expect("serialises");
    let new: bool = psa
        .store
        .db()
        .query(redis::cmd("HSETNX").arg(psa.keys.notes()).arg(id).arg(json))
        .await?;
    if new {
        let _: () = psa
            .store
            .db()
            .query(
                redis::cmd("ZADD")
                    .arg(psa.keys.notes_due())
                    .arg(psa.store.clock().now().as_millis())
                    .arg(id),
            )
            .await?;
    }
    Ok(new)
}

/// Follows a run's stages for its ticket.
pub async fn track(psa: &Psa, run: RunId, intake: &str) -> Result<(), Error> {
    let v = serde_json::json!({"intake": intake, "stage": "started"}).to_string();
    let _: () = psa
        .store
        .db()
        .query(
            redis::cmd("HSETNX")
                .arg(psa.keys.tracked())
                .arg(run.to_string())
                .arg(v),
        )
        .await?;
    Ok(())
}

/// Every note, for tests and `GET /v1/psa/notes`.
pub async fn all(psa: &Psa) -> Result<Vec<Queued>, Error> {
    let all: Vec<(String, String)> = psa
        .store
        .db()
        .query(redis::cmd("HGETALL").arg(psa.keys.notes()))
        .await?;
    Ok(all
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_str(&v).ok())
        .collect())
}

/// Links for approval notes.
#[derive(Debug, Clone)]
pub struct Linker {
    /// Signs links.
    pub signer: LinkSigner,
    /// The public URL links start with.
    pub public_url: String,
}

/// Runs the observer and the note writer until `shutdown`.
pub async fn run(psa: Psa, linker: Option<Linker>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {
                if let Err(e) = observe(&psa, linker.as_ref()).await {
                    tracing::warn!(error = %e, "PSA run observer failed; trying again");
                }
                if let Err(e) = deliver(&psa).await {
                    tracing::warn!(error = %e, "PSA note writer failed; trying again");
                }
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Tracked {
    intake: String,
    stage: String,
}

/// Queues a note for each tracked run whose stage changed.
pub async fn observe(psa: &Psa, linker: Option<&Linker>) -> Result<(), Error> {
    let tracked: Vec<(String, String)> = psa
        .store
        .db()
        .query(redis::cmd("HGETALL").arg(psa.keys.tracked()))
        .await?;
    if tracked.is_empty() {
        return Ok(());
    }
    let accounts = psa.accounts().await?;
    for (run_text, t) in tracked {
        let (Ok(run), Ok(mut t)) = (
            run_text.parse::<RunId>(),
            serde_json::from_str::<Tracked>(&t),
        ) else {
            continue;
        };
        // A cheap look first: the full view (plan, history) only when the stage changed.
        let Some(snap) = psa.store.load(run).await? else {
            continue;
        };
        let ended = snap.doc.state.status.is_terminal();
        if stage_key(&snap.doc.state) == t.stage {
            if ended {
                psa.resume_after(run).await?;
                let _: () = psa
                    .store
                    .db()
                    .query(redis::cmd("HDEL").arg(psa.keys.tracked()).arg(&run_text))
                    .await?;
            }
            continue;
        }
        let Some(view) = RunView::load(&psa.store, run).await? else {
            continue;
        };
        let Some(intake) = psa.intake(&t.intake).await? else {
            continue;
        };
        let Some(acct) = accounts.iter().find(|a| a.id == intake.account) else {
            continue;
        };
        let (stage, text) = stage_of(&view, linker, psa.store.clock().now());
        let ended = view.run.state.status.is_terminal();
        if stage != t.stage {
            queue(
                psa,
                acct,
                &intake.ticket_id,
                &text,
                &format!("{run}:{stage}"),
            )
            .await?;
            t.stage = stage;
            let _: () = psa
                .store
                .db()
                .query(
                    redis::cmd("HSET")
                        .arg(psa.keys.tracked())
                        .arg(&run_text)
                        .arg(serde_json::to_string(&t).expect("serialises")),
                )
                .await?;
        }
        if ended {
            psa.resume_after(run).await?;
            let _: () = psa
                .store
                .db()
                .query(redis::cmd("HDEL").arg(psa.keys.tracked()).arg(&run_text))
                .await?;
        }
    }
    Ok(())
}

/// The stage a run is at, from its state alone (what [`stage_of`] names it).
fn stage_key(state: &steward_schemas::RunState) -> String {
    match &state.status {
        RunStatus::Completed { .. } => "done".to_owned(),
        s if s.is_terminal() => s.name().to_owned(),
        _ => state
            .steps
            .iter()
            .find(|(_, r)| matches!(r.state, StepState::AwaitingApproval { .. }))
            .map_or_else(|| "started".to_owned(), |(id, _)| format!("gate:{id}")),
    }
}

/// The stage a run is at, and its note.
fn stage_of(view: &RunView, linker: Option<&Linker>, now: Timestamp) -> (String, Text) {
    let run = view.summary.run;
    let desc = |step: &steward_schemas::StepId| {
        view.plan
            .iter()
            .find(|p| &p.step == step)
            .map(|p| {
                if p.description.is_empty() {
                    p.op.clone()
                } else {
                    p.description.clone()
                }
            })
            .unwrap_or_default()
    };
    let gate = view
        .run
        .state
        .steps
        .iter()
        .find_map(|(id, rec)| match &rec.state {
            StepState::AwaitingApproval {
                approvers,
                expires_at,
                ..
            } => Some((id.clone(), approvers.clone(), *expires_at)),
            _ => None,
        });
    match &view.run.state.status {
        RunStatus::Completed { .. } => {
            let mut body = format!("Done (run {run}). What changed:\n");
            for s in &view.steps {
                if s.state == "succeeded" && s.op != "gate" {
                    body.push_str(&format!("- {}\n", desc(&s.step)));
                }
            }
            (
                "done".to_owned(),
                Text {
                    title: "Steward: done".to_owned(),
                    body,
                },
            )
        }
        RunStatus::RolledBack { .. }
        | RunStatus::RollbackFailed { .. }
        | RunStatus::Cancelled { .. } => {
            let mut body = format!("{} (run {run}): {}\n", "Stopped", view.summary.status_text);
            for s in &view.steps {
                if s.state == "failed" {
                    body.push_str(&format!("Diagnosis — {}: {}\n", s.step, s.text));
                }
            }
            let undone: Vec<String> = view
                .steps
                .iter()
                .filter(|s| s.undo.as_deref() == Some("done"))
                .map(|s| desc(&s.step))
                .collect();
            if undone.is_empty() {
                body.push_str("Nothing had to be undone.\n");
            } else {
                body.push_str("Undone:\n");
                for u in undone {
                    body.push_str(&format!("- {u}\n"));
                }
            }
            let stuck: Vec<&str> = view
                .steps
                .iter()
                .filter(|s| s.undo.as_deref() == Some("failed"))
                .map(|s| s.step.as_str())
                .collect();
            if !stuck.is_empty() {
                body.push_str(&format!(
                    "Could not be undone (a technician must finish): {}\n",
                    stuck.join(", ")
                ));
            }
            (
                view.run.state.status.name().to_owned(),
                Text {
                    title: "Steward: failed".to_owned(),
                    body,
                },
            )
        }
        _ => match gate {
            Some((step, approvers, expires)) => {
                let mut body = format!(
                    "Waiting for approval at `{step}` (run {run}) by {}.\n",
                    approvers.join(" or ")
                );
                if let (Some(l), Some(first)) = (linker, approvers.first()) {
                    let exp = expires
                        .unwrap_or(now.plus(Duration::from_secs(86_400)))
                        .min(now.plus(Duration::from_secs(7 * 86_400)));
                    let make = |approve| {
                        l.signer.sign(&LinkClaim {
                            run,
                            step: step.clone(),
                            approver: first.clone(),
                            approve,
                            exp: exp.as_micros() / 1_000_000,
                            nonce: LinkSigner::nonce(),
                            issued_by: Some("steward (psa note)".to_owned()),
                        })
                    };
                    let base = l.public_url.trim_end_matches('/');
                    body.push_str(&format!(
                        "Approve (as {first}): {base}/v1/links/{}\nReject: {base}/v1/links/{}\n",
                        make(true),
                        make(false)
                    ));
                }
                (
                    format!("gate:{step}"),
                    Text {
                        title: "Steward: waiting for approval".to_owned(),
                        body,
                    },
                )
            }
            None => ("started".to_owned(), started(run, &view.summary.workflow)),
        },
    }
}

/// Writes the notes that are due.
pub async fn deliver(psa: &Psa) -> Result<(), Error> {
    let now = psa.store.clock().now().as_millis();
    let due: Vec<String> = psa
        .store
        .db()
        .query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(psa.keys.notes_due())
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(20),
        )
        .await?;
    if due.is_empty() {
        return Ok(());
    }
    let accounts = psa.accounts().await?;
    let ring = psa.store.secrets();
    for id in due {
        let text: Option<String> = psa
            .store
            .db()
            .query(redis::cmd("HGET").arg(psa.keys.notes()).arg(&id))
            .await?;
        let Some(mut note) = text.and_then(|t| serde_json::from_str::<Queued>(&t).ok()) else {
            let _: () = psa
                .store
                .db()
                .query(redis::cmd("ZREM").arg(psa.keys.notes_due()).arg(&id))
                .await?;
            continue;
        };
        let api = accounts
            .iter()
            .find(|a| a.id == note.account)
            .and_then(|a| api_of(a, ring?));
        note.attempts += 1;
        let result = match &api {
            None => Err(client::Error::Terminal(format!(
                "PSA account `{}` has no API access configured (api_url, api_username, api_secret)",
                note.account
            ))),
            Some(api) => {
                client::post_note(
                    super::http(),
                    api,
                    &client::Note {
                        ticket_id: note.ticket_id.clone(),
                        title: note.title.clone(),
                        text: note.text.clone(),
                        internal: note.internal,
                    },
                )
                .await
            }
        };
        let mut pipe = redis::pipe();
        match result {
            Ok(()) => {
                note.status = "sent".to_owned();
                note.last_error = None;
                pipe.cmd("ZREM").arg(psa.keys.notes_due()).arg(&id).ignore();
            }
            Err(client::Error::Retryable(e)) => {
                let backoff = 1000i64 << note.attempts.min(8);
                tracing::info!(note = %id, attempts = note.attempts, error = %e, "ticket note delayed: the PSA is not answering");
                note.last_error = Some(e);
                pipe.cmd("ZADD")
                    .arg(psa.keys.notes_due())
                    .arg(now + backoff.min(300_000))
                    .arg(&id)
                    .ignore();
            }
            Err(client::Error::Terminal(e)) => {
                tracing::warn!(note = %id, error = %e, "ticket note could not be written");
                note.status = "failed".to_owned();
                note.last_error = Some(e);
                pipe.cmd("ZREM").arg(psa.keys.notes_due()).arg(&id).ignore();
            }
        }
        pipe.cmd("HSET")
            .arg(psa.keys.notes())
            .arg(&id)
            .arg(serde_json::to_string(&note).expect("serialises"))
            .ignore();
        let () = psa.store.db().pipe(&pipe).await?;
    }
    Ok(())
}

pub(crate) fn api_of(a: &Stored, ring: &steward_secrets::Keyring) -> Option<client::Api> {
    let kind = match a.provider {
        steward_schemas::company::PsaProvider::Autotask => client::Kind::Autotask,
        steward_schemas::company::PsaProvider::Connectwise => client::Kind::Connectwise,
        steward_schemas::company::PsaProvider::Halopsa => client::Kind::Halo,
    };
    Some(client::Api {
        kind,
        base_url: a.api_url.clone()?,
        username: a.api_username.clone()?,
        secret: client::Credential::new(a.open("api_secret", ring)?.expose().to_owned()),
        code: a
            .open("api_integration_code", ring)
            .map(|s| client::Credential::new(s.expose().to_owned())),
    })
}

/// The note writer and run observer of an API server (`steward serve`), until `shutdown`.
pub fn serve(
    state: &crate::api::ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let psa = crate::api::hooks::service(state);
    let linker = Linker {
        signer: state.signer.clone(),
        public_url: state.public_url.clone(),
    };
    run(psa, Some(linker), shutdown)
}

//! Compiling a workflow definition into a plan, and the checks that refuse bad definitions.
//!
//! Every problem names the file, the step (and its line), the field, what is wrong and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use steward_schemas::{
    Approvers, Dur, GateSpec, InputType, OnExpiry, OnFailure, OpSpec, StepId, WorkflowDef,
};

use crate::expr::{Expr, Path, Root, Template};
use crate::retry::RetryPolicy;

/// What the plan compiler needs to know about ops.
pub trait Catalog {
    /// The registry entry of `name`.
    fn op(&self, name: &str) -> Option<&OpSpec>;
    /// Every op's name, for suggestions.
    fn op_names(&self) -> Vec<&'static str>;
}

/// Top-level company fields a workflow may reference as `company.FIELD`.
pub const COMPANY_FIELDS: &[&str] = &[
    "id",
    "name",
    "tenant_id",
    "identity_provider",
    "mailbox_provider",
    "ad_runner",
    "entra_connect_server",
    "exchange_server",
    "exchange_runner",
    "rmm",
    "psa",
    "defaults",
    "approvers",
    "custom_instructions",
    "settings",
];

/// The op name of approval gates (steps with `gate:`), which the engine runs itself.
pub const GATE_OP: &str = "gate";

/// Default time one attempt may run.
pub const DEFAULT_TIMEOUT: Dur = Dur::secs(300);
/// Default time an op may keep answering "not yet".
pub const DEFAULT_MAX_WAIT: Dur = Dur::secs(86_400);
/// Default action on a step's final failure.
pub const DEFAULT_ON_FAILURE: OnFailure = OnFailure::Pause;

/// One problem with a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The step it is in, if any.
    pub step: Option<String>,
    /// The field, e.g. `needs`, `with.upn`, `retry.attempts`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
    /// The line in the file, when known.
    pub line: Option<usize>,
}

impl Problem {
    fn new(
        step: Option<&str>,
        field: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            step: step.map(str::to_owned),
            field: field.into(),
            message: message.into(),
            fix: fix.into(),
            line: None,
        }
    }
}

/// A workflow file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The file.
    pub file: String,
    /// What is wrong with it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
            if let Some(step) = &p.step {
                write!(f, "step `{step}`: ")?;
            }
            write!(f, "{}: {}\n  fix: {}", p.field, p.message, p.fix)?;
        }
        Ok(())
    }
}

/// A step as the state machine sees it.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// Its id.
    pub id: StepId,
    /// The op (`gate` for an approval gate).
    pub op: String,
    /// The gate's settings, for an approval gate.
    pub gate: Option<GateSpec>,
    /// What it does.
    pub description: String,
    /// Indexes of the steps it needs.
    pub needs: Vec<usize>,
    /// Indexes of every step that needs it, directly or not.
    pub descendants: Vec<usize>,
    /// Its inputs.
    pub with: Vec<(String, Template)>,
    /// Its condition.
    pub when: Option<Expr>,
    /// Its retry policy (also used for its undo).
    pub retry: RetryPolicy,
    /// How long one attempt may run.
    pub timeout: Dur,
    /// What its final failure does to the run.
    pub on_failure: OnFailure,
    /// How long the op may keep answering "not yet".
    pub max_wait: Duration,
}

/// A compiled workflow: checked, with steps in dependency order.
#[derive(Debug, Clone)]
pub struct Plan {
    def: WorkflowDef,
    hash: String,
    steps: Vec<PlanStep>,
    index: BTreeMap<StepId, usize>,
}

impl Plan {
    /// Reads a workflow file's text (YAML) and compiles it; `file` names it in errors.
    pub fn load(
        file: &str,
        source: &str,
        catalog: Option<&dyn Catalog>,
    ) -> Result<Self, ValidationError> {
        let def: WorkflowDef = serde_yaml_ng::from_str(source).map_err(|e| {
            let location = e.location();
            let raw = e.to_string();
            // serde_yaml appends "at line L column C"; we report the line ourselves.
            let message = raw.split(" at line ").next().unwrap_or(&raw).to_owned();
            let (field, message) = match message.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
                _ => ("(file)".to_owned(), message),
            };
            ValidationError {
                file: file.to_owned(),
                problems: vec![Problem {
                    step: None,
                    field,
                    message,
                    fix: "correct the YAML at this line (see the schema in schemas/json/workflow.schema.json)".to_owned(),
                    line: location.map(|l| l.line()),
                }],
            }
        })?;
        Self::compile(def, catalog).map_err(|mut problems| {
            for p in &mut problems {
                p.line = p.step.as_deref().and_then(|s| line_of_step(source, s));
            }
            ValidationError {
                file: file.to_owned(),
                problems,
            }
        })
    }

    /// Checks a definition and compiles it. With a catalog, ops and their inputs and outputs are
    /// checked too.
    pub fn compile(def: WorkflowDef, catalog: Option<&dyn Catalog>) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        check_name(&def, &mut problems);
        check_inputs(&def, &mut problems);
        if def.steps.is_empty() {
            problems.push(Problem::new(
                None,
                "steps",
                "the workflow has no steps",
                "add at least one step",
            ));
        }

        // Ids: shape and uniqueness.
        let mut index: BTreeMap<StepId, usize> = BTreeMap::new();
        let mut ids = Vec::with_capacity(def.steps.len());
        for (i, step) in def.steps.iter().enumerate() {
            match StepId::parse(&step.id) {
                Ok(id) => {
                    if let Some(&first) = index.get(&id) {
                        problems.push(Problem::new(
                            Some(&step.id),
                            "id",
                            format!(
                                "duplicate id: steps {} and {} are both `{}`",
                                first + 1,
                                i + 1,
                                step.id
                            ),
                            "give every step its own id",
                        ));
                    } else {
                        index.insert(id.clone(), i);
                    }
                    ids.push(Some(id));
                }
                Err(e) => {
                    problems.push(Problem::new(
                        Some(&step.id),
                        "id",
                        e.to_string(),
                        "use lowercase letters, digits and `_`, starting with a letter (e.g. `create_user`)",
                    ));
                    ids.push(None);
                }
            }
        }

        // Needs.
        let known: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
        let mut needs: Vec<Vec<usize>> = vec![Vec::new(); def.steps.len()];
        for (i, step) in def.steps.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for need in &step.needs {
                if !seen.insert(need.as_str()) {
                    problems.push(Problem::new(
                        Some(&step.id),
                        "needs",
                        format!("`{need}` is listed twice"),
                        "list each step once",
                    ));
                    continue;
                }
                if need == &step.id {
                    problems.push(Problem::new(
                        Some(&step.id),
                        "needs",
                        "the step needs itself",
                        format!("remove `{need}` from its needs"),
                    ));
                    continue;
                }
                match def.steps.iter().position(|s| &s.id == need) {
                    Some(j) => needs[i].push(j),
                    None => problems.push(Problem::new(
                        Some(&step.id),
                        "needs",
                        format!("unknown step `{need}`{}", suggest(need, &known)),
                        format!(
                            "declare a step with id `{need}` or remove it from needs (steps: {})",
                            known.join(", ")
                        ),
                    )),
                }
            }
        }

        // Cycles: Kahn's algorithm; whatever is left over sits on or behind a cycle.
        let order = topo_order(&needs);
        if order.len() < def.steps.len() {
            let cycle = find_cycle(&needs, &order);
            let names: Vec<&str> = cycle.iter().map(|&i| def.steps[i].id.as_str()).collect();
            problems.push(Problem::new(
                Some(names[0]),
                "needs",
                format!("a cycle: {} → {}", names.join(" → "), names[0]),
                "remove one of these needs so the steps can run in some order",
            ));
            return Err(problems);
        }
        let ancestors = ancestors(&needs, &order);

        // Defaults, checked once (a step that sets its own value is checked on its own).
        let default_retry = match def.defaults.retry.as_ref().map(RetryPolicy::try_from_spec) {
            None => RetryPolicy::default(),
            Some(Ok(p)) => p,
            Some(Err((field, msg))) => {
                problems.push(Problem::new(
                    None,
                    format!("defaults.retry.{field}"),
                    msg,
                    "see the retry fields in the schema",
                ));
                RetryPolicy::default()
            }
        };
        check_positive(
            None,
            "defaults.timeout",
            def.defaults.timeout,
            "30s",
            &mut problems,
        );
        check_positive(
            None,
            "defaults.max_wait",
            def.defaults.max_wait,
            "1h",
            &mut problems,
        );

        // Per-step fields.
        let mut steps = Vec::with_capacity(def.steps.len());
        for (i, step) in def.steps.iter().enumerate() {
            let sid = Some(step.id.as_str());
            let op_name = match (&step.op, &step.gate) {
                (Some(op), None) => op.clone(),
                (None, Some(gate)) => {
                    check_gate(gate, sid, &mut problems);
                    if !step.with.is_empty() {
                        problems.push(Problem::new(
                            sid,
                            "with",
                            "a gate takes no inputs",
                            "remove `with:` from the gate",
                        ));
                    }
                    GATE_OP.to_owned()
                }
                (Some(op), Some(_)) => {
                    problems.push(Problem::new(
                        sid,
                        "gate",
                        "the step has both `op:` and `gate:`",
                        "make it either an op step or an approval gate",
                    ));
                    op.clone()
                }
                (None, None) => {
                    problems.push(Problem::new(
                        sid,
                        "op",
                        "the step has no op",
                        "write `op: NAME` (see `steward ops`), or `gate:` for an approval gate",
                    ));
                    String::new()
                }
            };
            let spec = match catalog {
                Some(_) if step.gate.is_some() || op_name.is_empty() => None,
                Some(cat) => match cat.op(&op_name) {
                    Some(spec) if spec.internal => {
                        problems.push(Problem::new(
                            sid,
                            "op",
                            format!("`{op_name}` is an internal op (used by rollback)"),
                            "use a workflow op; see `steward ops`",
                        ));
                        None
                    }
                    Some(spec) => Some(spec),
                    None => {
                        let names = cat.op_names();
                        problems.push(Problem::new(
                            sid,
                            "op",
                            format!("unknown op `{op_name}`{}", suggest(&op_name, &names)),
                            "use an op from `steward ops`",
                        ));
                        None
                    }
                },
                None => None,
            };

            let mut with = Vec::with_capacity(step.with.len());
            for (key, value) in &step.with {
                if let Some(spec) = spec
                    && spec.input(key).is_none()
                {
                    let names: Vec<&str> = spec.inputs.iter().map(|f| f.name).collect();
                    problems.push(Problem::new(
                        sid,
                        format!("with.{key}"),
                        format!("`{op_name}` has no input `{key}`{}", suggest(key, &names)),
                        format!(
                            "use one of: {}",
                            if names.is_empty() {
                                "(none)".to_owned()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                match Template::parse(value) {
                    Ok(t) => {
                        for r in t.refs() {
                            check_ref(&def, i, r, &ancestors, catalog, &format!("with.{key}"), &mut problems);
                        }
                        with.push((key.clone(), t));
                    }
                    Err(e) => problems.push(Problem::new(
                        sid,
                        format!("with.{key}"),
                        e.message,
                        "write references as `${{ inputs.NAME }}`, `${{ company.FIELD }}` or `${{ steps.ID.output.FIELD }}`",
                    )),
                }
            }
            if let Some(spec) = spec {
                for field in spec.inputs.iter().filter(|f| f.required) {
                    if !step.with.contains_key(field.name) {
                        problems.push(Problem::new(
                            sid,
                            "with",
                            format!(
                                "`{}` needs input `{}` ({})",
                                op_name, field.name, field.description
                            ),
                            format!("add `{}: …` under `with:`", field.name),
                        ));
                    }
                }
            }

            let when = match step.when.as_deref().map(Expr::parse) {
                None => None,
                Some(Ok(e)) => {
                    for r in e.refs() {
                        check_ref(&def, i, r, &ancestors, catalog, "when", &mut problems);
                    }
                    Some(e)
                }
                Some(Err(e)) => {
                    problems.push(Problem::new(
                        sid,
                        "when",
                        e.message,
                        "write a condition such as `inputs.shared == true && !inputs.keep_license`",
                    ));
                    None
                }
            };

            let retry = match step.retry.as_ref().map(RetryPolicy::try_from_spec) {
                None => default_retry.clone(),
                Some(Ok(p)) => p,
                Some(Err((field, msg))) => {
                    problems.push(Problem::new(
                        sid,
                        format!("retry.{field}"),
                        msg,
                        "see the retry fields in the schema",
                    ));
                    RetryPolicy::default()
                }
            };
            check_positive(sid, "timeout", step.timeout, "30s", &mut problems);
            check_positive(sid, "max_wait", step.max_wait, "1h", &mut problems);
            let timeout = step
                .timeout
                .or(def.defaults.timeout)
                .unwrap_or(DEFAULT_TIMEOUT);
            let max_wait = step
                .max_wait
                .or(def.defaults.max_wait)
                .unwrap_or(DEFAULT_MAX_WAIT);
            steps.push(PlanStep {
                id: ids[i]
                    .clone()
                    .unwrap_or_else(|| StepId::parse("invalid").expect("a valid literal id")),
                op: op_name,
                gate: step.gate.clone(),
                description: step.description.clone(),
                needs: needs[i].clone(),
                descendants: Vec::new(),
                with,
                when,
                retry,
                timeout,
                on_failure: step
                    .on_failure
                    .or(def.defaults.on_failure)
                    .unwrap_or(DEFAULT_ON_FAILURE),
                max_wait: max_wait.get(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        // Reorder into dependency order, remapping indexes.
        let mut pos = vec![0; steps.len()];
        for (new, &old) in order.iter().enumerate() {
            pos[old] = new;
        }
        let mut ordered: Vec<PlanStep> = order.iter().map(|&old| steps[old].clone()).collect();
        for step in &mut ordered {
            step.needs = step.needs.iter().map(|&n| pos[n]).collect();
            step.needs.sort_unstable();
        }
        for i in 0..ordered.len() {
            let mut desc: Vec<usize> = (0..ordered.len())
                .filter(|&j| ancestors[order[j]].contains(&order[i]))
                .collect();
            desc.sort_unstable();
            ordered[i].descendants = desc;
        }
        let index = ordered
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let hash = hash_def(&def);
        Ok(Self {
            def,
            hash,
            steps: ordered,
            index,
        })
    }

    /// The definition.
    pub fn def(&self) -> &WorkflowDef {
        &self.def
    }

    /// The SHA-256 of the definition's canonical JSON form, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The steps, in dependency order (a step comes after everything it needs).
    pub fn steps(&self) -> &[PlanStep] {
        &self.steps
    }

    /// A step's index.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A step by index.
    pub fn step(&self, i: usize) -> &PlanStep {
        &self.steps[i]
    }
}

/// The content hash of a definition.
fn hash_def(def: &WorkflowDef) -> String {
    let json = serde_json::to_vec(def).expect("a workflow definition serialises");
    hex::encode(Sha256::digest(json))
}

/// A problem if a duration that is set is zero; `example` is a positive value to suggest.
fn check_positive(
    sid: Option<&str>,
    field: &str,
    d: Option<Dur>,
    example: &str,
    problems: &mut Vec<Problem>,
) {
    if d.is_some_and(|d| d.get().is_zero()) {
        let name = field.rsplit('.').next().unwrap_or(field);
        problems.push(Problem::new(
            sid,
            field,
            format!("a {name} of zero"),
            format!("write a positive duration such as `{example}`"),
        ));
    }
}

fn check_name(def: &WorkflowDef, problems: &mut Vec<Problem>) {
    let ok = def.name.starts_with(|c: char| c.is_ascii_lowercase())
        && def.name.len() <= 64
        && def
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        problems.push(Problem::new(
            None,
            "name",
            format!("`{}` is not a valid workflow name", def.name),
            "use lowercase letters, digits, `_` and `-`, starting with a letter (e.g. `onboarding`)",
        ));
    }
}

fn check_inputs(def: &WorkflowDef, problems: &mut Vec<Problem>) {
    for (name, input) in &def.inputs {
        if StepId::parse(name).is_err() {
            problems.push(Problem::new(
                None,
                format!("inputs.{name}"),
                "not a valid input name",
                "use lowercase letters, digits and `_`, starting with a letter",
            ));
        }
        if input.secret {
            // A secret's value never appears in a problem: the file is wrong to hold one at all.
            if input.default.is_some() {
                problems.push(Problem::new(
                    None,
                    format!("inputs.{name}.default"),
                    "a secret input cannot have a default (a secret does not belong in a workflow file)",
                    "remove `default:` and supply the value when the run starts",
                ));
            }
            if input.kind != InputType::String {
                problems.push(Problem::new(
                    None,
                    format!("inputs.{name}.secret"),
                    format!(
                        "only text inputs can be secret; this one is a {}",
                        input.kind.name()
                    ),
                    "make the input `type: string`, or drop `secret: true`",
                ));
            }
        } else if let Some(default) = &input.default
            && !input.kind.accepts(default)
        {
            problems.push(Problem::new(
                None,
                format!("inputs.{name}.default"),
                format!("the default {default} is not a {}", input.kind.name()),
                format!("give a {} default or change the type", input.kind.name()),
            ));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_ref(
    def: &WorkflowDef,
    i: usize,
    path: &Path,
    ancestors: &[BTreeSet<usize>],
    catalog: Option<&dyn Catalog>,
    field: &str,
    problems: &mut Vec<Problem>,
) {
    let step = &def.steps[i];
    let sid = Some(step.id.as_str());
    match &path.root {
        Root::Input(name) => {
            if !def.inputs.contains_key(name) {
                let names: Vec<&str> = def.inputs.keys().map(String::as_str).collect();
                problems.push(Problem::new(
                    sid,
                    field,
                    format!(
                        "`{path}` refers to an input the workflow does not declare{}",
                        suggest(name, &names)
                    ),
                    format!("declare `{name}` under `inputs:` or fix the name"),
                ));
            }
        }
        Root::Company(name) => {
            if !COMPANY_FIELDS.contains(&name.as_str()) {
                problems.push(Problem::new(
                    sid,
                    field,
                    format!(
                        "companies have no field `{name}`{}",
                        suggest(name, COMPANY_FIELDS)
                    ),
                    format!("use one of: {}", COMPANY_FIELDS.join(", ")),
                ));
            }
        }
        Root::StepOutput(other) => {
            let Some(j) = def.steps.iter().position(|s| &s.id == other) else {
                let names: Vec<&str> = def.steps.iter().map(|s| s.id.as_str()).collect();
                problems.push(Problem::new(
                    sid,
                    field,
                    format!(
                        "`{path}` refers to unknown step `{other}`{}",
                        suggest(other, &names)
                    ),
                    "refer to a step of this workflow",
                ));
                return;
            };
            if !ancestors[i].contains(&j) {
                problems.push(Problem::new(
                    sid,
                    field,
                    format!("`{path}` reads the output of `{other}`, which may not have run yet"),
                    format!("add `{other}` to this step's needs (directly or through a step that needs it)"),
                ));
                return;
            }
            if let (Some(cat), Some(crate::expr::Seg::Field(first))) = (catalog, path.segs.first())
                && let Some(op) = def.steps[j].op.as_deref()
                && let Some(spec) = cat.op(op)
                && !spec.has_output(first)
            {
                let names: Vec<&str> = spec
                    .outputs
                    .unwrap_or_default()
                    .iter()
                    .map(|f| f.name)
                    .collect();
                problems.push(Problem::new(
                    sid,
                    field,
                    format!(
                        "`{}` (op `{}`) has no output `{first}`{}",
                        other,
                        spec.name,
                        suggest(first, &names)
                    ),
                    format!(
                        "use one of: {}",
                        if names.is_empty() {
                            "(it has no outputs)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
        Root::Run(_) => {}
    }
}

fn check_gate(gate: &GateSpec, sid: Option<&str>, problems: &mut Vec<Problem>) {
    let check_list = |field: &str, approvers: &Approvers, problems: &mut Vec<Problem>| {
        if let Approvers::List(list) = approvers {
            if list.is_empty() {
                problems.push(Problem::new(
                    sid,
                    field,
                    "an empty approver list",
                    "list technicians' emails, or write `company`",
                ));
            }
            for a in list {
                if !crate::text::is_email(a) {
                    problems.push(Problem::new(
                        sid,
                        field,
                        format!("`{a}` is not an email address"),
                        "list technicians by email, e.g. `lead@msp.example`",
                    ));
                }
            }
        }
    };
    check_list("gate.approvers", &gate.approvers, problems);
    if gate.quorum == 0 || gate.quorum > 10 {
        problems.push(Problem::new(
            sid,
            "gate.quorum",
            format!("a quorum of {}", gate.quorum),
            "write 1 to 10",
        ));
    }
    if let Approvers::List(list) = &gate.approvers
        && !list.is_empty()
    {
        // `A@x` and `a@x` are one approver.
        let distinct = crate::text::normalize_emails(list).len();
        if (gate.quorum as usize) > distinct {
            problems.push(Problem::new(
                sid,
                "gate.quorum",
                format!(
                    "a quorum of {} from {distinct} different approvers can never be met",
                    gate.quorum
                ),
                "lower the quorum or list more approvers",
            ));
        }
    }
    for (field, d) in [
        ("gate.expires_in", gate.expires_in),
        ("gate.escalate_expires_in", gate.escalate_expires_in),
    ] {
        if d.is_some_and(|d| d.get().is_zero()) {
            problems.push(Problem::new(
                sid,
                field,
                "zero",
                "write a positive duration such as `24h`",
            ));
        }
    }
    match (gate.on_expiry, &gate.escalate_to) {
        (OnExpiry::Escalate, None) => problems.push(Problem::new(
            sid,
            "gate.escalate_to",
            "`on_expiry: escalate` needs someone to escalate to",
            "add `escalate_to:` with technicians' emails (or `company`)",
        )),
        (OnExpiry::Escalate, Some(to)) => check_list("gate.escalate_to", to, problems),
        (OnExpiry::Reject, Some(_)) => problems.push(Problem::new(
            sid,
            "gate.escalate_to",
            "`escalate_to` is only used with `on_expiry: escalate`",
            "add `on_expiry: escalate` or remove `escalate_to`",
        )),
        (OnExpiry::Reject, None) => {}
    }
    if gate.on_expiry == OnExpiry::Escalate && gate.expires_in.is_none() {
        problems.push(Problem::new(
            sid,
            "gate.expires_in",
            "a gate that escalates on expiry needs an expiry",
            "add `expires_in:`, e.g. `24h`",
        ));
    }
}

fn topo_order(needs: &[Vec<usize>]) -> Vec<usize> {
    let n = needs.len();
    let mut indegree: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ns) in needs.iter().enumerate() {
        for &j in ns {
            dependents[j].push(i);
        }
    }
    // Keep definition order among ready steps: plans read the way they were written.
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order
}

fn find_cycle(needs: &[Vec<usize>], order: &[usize]) -> Vec<usize> {
    let done: BTreeSet<usize> = order.iter().copied().collect();
    // Walk needs from any leftover step; a leftover step always has a leftover need, so the walk
    // must revisit a step, and the part from its first visit on is a cycle.
    let start = (0..needs.len())
        .find(|i| !done.contains(i))
        .expect("a leftover step exists");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = *needs[cur]
            .iter()
            .find(|j| !done.contains(j))
            .expect("a step on a cycle needs another step on it");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.reverse();
            return cycle;
        }
        path.push(next);
        cur = next;
    }
}

fn ancestors(needs: &[Vec<usize>], order: &[usize]) -> Vec<BTreeSet<usize>> {
    let mut anc: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); needs.len()];
    for &i in order {
        let mut set = BTreeSet::new();
        for &j in &needs[i] {
            set.insert(j);
            set.extend(anc[j].iter().copied());
        }
        anc[i] = set;
    }
    anc
}

/// ", did you mean `x`?" when a known name is close to `name`.
fn suggest(name: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (crate::text::edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) || (name.len() >= 3 && k.starts_with(name)))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// The line of `id: <step>` in the YAML text, 1-based (block or flow style).
fn line_of_step(source: &str, step: &str) -> Option<usize> {
    let is_step = |value: &str| {
        let v = value.trim_start();
        let end = v.find([',', '}', '#']).unwrap_or(v.len());
        v[..end].trim().trim_matches(|c| c == '"' || c == '\'') == step
    };
    source
        .lines()
        .position(|line| {
            let mut rest = line;
            while let Some(i) = rest.find("id:") {
                let before = rest[..i].trim_end();
                if (before.is_empty() || before.ends_with(['-', '{', ',']))
                    && is_step(&rest[i + 3..])
                {
                    return true;
                }
                rest = &rest[i + 3..];
            }
            false
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schemas::{
        ApprovalRule, OpAccess, OpField, PermissionGroup, Reversibility, System,
    };

    struct Cat(Vec<OpSpec>);

    impl Catalog for Cat {
        fn op(&self, name: &str) -> Option<&OpSpec> {
            self.0.iter().find(|s| s.name == name)
        }
        fn op_names(&self) -> Vec<&'static str> {
            self.0.iter().map(|s| s.name).collect()
        }
    }

    fn cat() -> Cat {
        const CREATE_IN: &[OpField] = &[
            OpField::required("upn", "the user's UPN"),
            OpField::optional("ou", "the OU"),
        ];
        const CREATE_OUT: &[OpField] = &[OpField::required("id", "the new user's id")];
        Cat(vec![
            OpSpec {
                name: "noop",
                summary: "nothing",
                access: OpAccess::Read,
                group: PermissionGroup::Users,
                approval: ApprovalRule::Policy,
                system: System::Directory,
                reversibility: Reversibility::NotNeeded,
                inputs: &[],
                outputs: Some(&[]),
                internal: false,
            },
            OpSpec {
                name: "user.create",
                summary: "create a user",
                access: OpAccess::Write,
                group: PermissionGroup::Users,
                approval: ApprovalRule::Policy,
                system: System::Directory,
                reversibility: Reversibility::Reversible,
                inputs: CREATE_IN,
                outputs: Some(CREATE_OUT),
                internal: false,
            },
            OpSpec {
                name: "user.delete",
                summary: "undo",
                access: OpAccess::Write,
                group: PermissionGroup::Users,
                approval: ApprovalRule::Policy,
                system: System::Directory,
                reversibility: Reversibility::NotNeeded,
                inputs: &[],
                outputs: None,
                internal: true,
            },
        ])
    }

    fn load(yaml: &str) -> Result<Plan, ValidationError> {
        Plan::load("workflows/test.yaml", yaml, Some(&cat()))
    }

    fn problems(yaml: &str) -> String {
        load(yaml).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_graph_compiles_in_dependency_order() {
        let plan = load(
            r#"
name: onboarding
inputs:
  upn: {type: string}
steps:
  - id: license
    op: noop
    needs: [create]
  - id: create
    op: user.create
    with: {upn: "${{ inputs.upn }}"}
  - id: notify
    op: noop
    needs: [license, create]
    when: inputs.upn != ''
"#,
        )
        .unwrap();
        let ids: Vec<&str> = plan.steps().iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["create", "license", "notify"]);
        assert_eq!(plan.step(0).descendants, [1, 2]);
        assert_eq!(plan.step(2).needs, [0, 1]);
        assert_eq!(plan.step(0).on_failure, OnFailure::Pause);
        assert_eq!(plan.hash().len(), 64);
    }

    #[test]
    fn cycles_unknown_needs_and_duplicates_are_named() {
        let err = problems(
            "name: w\nsteps:\n  - id: a\n    op: noop\n    needs: [c]\n  - id: b\n    op: noop\n    needs: [a]\n  - id: c\n    op: noop\n    needs: [b]\n",
        );
        assert!(err.contains("a cycle: "), "{err}");
        assert!(
            err.contains("a → ") && err.contains("b → ") && err.contains("c → "),
            "{err}"
        );
        let err = problems(
            "name: w\nsteps:\n  - id: a\n    op: noop\n  - id: b\n    op: noop\n    needs: [aa, zzz]\n",
        );
        assert!(
            err.contains(
                "workflows/test.yaml:5: step `b`: needs: unknown step `aa`; did you mean `a`?"
            ),
            "{err}"
        );
        assert!(err.contains("unknown step `zzz`"), "{err}");
        let err = problems("name: w\nsteps:\n  - id: a\n    op: noop\n  - id: a\n    op: noop\n");
        assert!(
            err.contains("duplicate id: steps 1 and 2 are both `a`"),
            "{err}"
        );
        let err = problems("name: w\nsteps:\n  - id: a\n    op: noop\n    needs: [a]\n");
        assert!(err.contains("needs itself"), "{err}");
        let err = problems(
            "name: w\nsteps:\n  - {id: a, op: noop}\n  - {op: noop, id: 'b', needs: [x]}\n",
        );
        assert!(
            err.contains("workflows/test.yaml:4: step `b`"),
            "flow style gets its line too: {err}"
        );
    }

    #[test]
    fn ops_inputs_and_references_are_checked() {
        let err = problems("name: w\nsteps:\n  - id: a\n    op: user.creat\n");
        assert!(
            err.contains("unknown op `user.creat`; did you mean `user.create`?"),
            "{err}"
        );
        let err = problems("name: w\nsteps:\n  - id: a\n    op: user.delete\n");
        assert!(err.contains("internal op"), "{err}");
        let err = problems("name: w\nsteps:\n  - id: a\n    op: user.create\n    with: {upm: x}\n");
        assert!(
            err.contains("has no input `upm`; did you mean `upn`?"),
            "{err}"
        );
        assert!(err.contains("needs input `upn`"), "{err}");
        let err = problems(
            r#"
name: w
inputs: {upn: {type: string}}
steps:
  - id: a
    op: user.create
    with: {upn: "${{ inputs.upm }}", ou: "${{ company.defualts.ou }}"}
  - id: b
    op: noop
    when: steps.a.output.idd == 'x'
  - id: c
    op: noop
    needs: [a]
    when: steps.a.output.idd == 'x' || steps.zz.output.x
"#,
        );
        assert!(
            err.contains("input the workflow does not declare; did you mean `upn`?"),
            "{err}"
        );
        assert!(
            err.contains("companies have no field `defualts`; did you mean `defaults`?"),
            "{err}"
        );
        assert!(err.contains("step `b`: when: `steps.a.output.idd` reads the output of `a`, which may not have run yet"), "{err}");
        assert!(
            err.contains(
                "step `c`: when: `a` (op `user.create`) has no output `idd`; did you mean `id`?"
            ),
            "{err}"
        );
        assert!(err.contains("unknown step `zz`"), "{err}");
    }

    #[test]
    fn bad_fields_and_durations_say_what_to_write() {
        let err = problems("name: w\nsteps:\n  - id: a\n    op: noop\n    timeout: 5 minutes\n");
        assert!(err.contains("workflows/test.yaml:5: "), "{err}");
        assert!(err.contains("steps[0].timeout"), "{err}");
        assert!(err.contains("write a number and a unit"), "{err}");
        let err = problems("name: w\nsteps:\n  - id: a\n    op: noop\n    retry: {attempts: 0}\n");
        assert!(
            err.contains("step `a`: retry.attempts: 0 attempts"),
            "{err}"
        );
        let err = problems("name: W!\nsteps: []\n");
        assert!(
            err.contains("name: `W!` is not a valid workflow name"),
            "{err}"
        );
        assert!(err.contains("no steps"), "{err}");
        let err = problems("name: w\nsteps:\n  - id: Bad\n    op: noop\n");
        assert!(
            err.contains("workflows/test.yaml:3: step `Bad`: id:"),
            "{err}"
        );
        let err = problems(
            "name: w\ninputs: {n: {type: number, default: x}}\nsteps:\n  - id: a\n    op: noop\n",
        );
        assert!(err.contains("inputs.n.default"), "{err}");
    }

    #[test]
    fn secret_inputs_are_text_without_a_default() {
        for kind in ["number", "boolean", "array", "object", "any"] {
            let err = problems(&format!(
                "name: w\ninputs: {{pin: {{type: {kind}, secret: true}}}}\nsteps:\n  - {{id: a, op: noop}}\n"
            ));
            assert!(
                err.contains(&format!(
                    "inputs.pin.secret: only text inputs can be secret; this one is a {kind}"
                )),
                "{err}"
            );
        }
        // A default for a secret is refused, whatever its type, and never echoed.
        for default in ["hunter2-in-the-file", "12345678", "[hunter2-in-the-file]"] {
            let err = problems(&format!(
                "name: w\ninputs: {{password: {{type: string, secret: true, default: {default}}}}}\nsteps:\n  - {{id: a, op: noop}}\n"
            ));
            assert!(
                err.contains("inputs.password.default: a secret input cannot have a default"),
                "{err}"
            );
            assert!(
                !err.contains("hunter2") && !err.contains("12345678"),
                "{err}"
            );
        }
        load("name: w\ninputs: {password: {type: string, secret: true, required: false}}\nsteps:\n  - {id: a, op: noop}\n").unwrap();
    }

    #[test]
    fn approvers_differing_only_in_case_count_once() {
        let err = problems(
            "name: w\nsteps:\n  - id: g\n    gate: {approvers: [Lead@MSP.example, lead@msp.example], quorum: 2}\n",
        );
        assert!(
            err.contains("gate.quorum: a quorum of 2 from 1 different approvers can never be met"),
            "{err}"
        );
        load("name: w\nsteps:\n  - id: g\n    gate: {approvers: [Lead@MSP.example, b@msp.example], quorum: 2}\n").unwrap();
    }

    #[test]
    fn bad_defaults_are_reported_once_under_defaults() {
        let found = Plan::compile(
            serde_yaml_ng::from_str(
                "name: w\ndefaults: {timeout: 0s, max_wait: 0s, retry: {attempts: 0}}\nsteps:\n  - {id: a, op: noop}\n  - {id: b, op: noop}\n  - {id: c, op: noop, timeout: 0s, retry: {attempts: 3}}\n",
            )
            .unwrap(),
            None,
        )
        .map(|_| ())
        .unwrap_err();
        let fields: Vec<(Option<&str>, &str)> = found
            .iter()
            .map(|p| (p.step.as_deref(), p.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (None, "defaults.retry.attempts"),
                (None, "defaults.timeout"),
                (None, "defaults.max_wait"),
                (Some("c"), "timeout"),
            ],
            "{found:#?}"
        );
        let err = problems("name: w\ndefaults: {max_wait: 0s}\nsteps:\n  - {id: a, op: noop}\n");
        assert!(
            err.contains("defaults.max_wait: a max_wait of zero\n  fix: write a positive duration such as `1h`"),
            "{err}"
        );
    }
}

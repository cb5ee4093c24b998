//! Compiling a workflow definition into a plan, and the checks that refuse bad definitions.
//!
//! Every problem names the file, the line, the step, the field, what is wrong and the fix, and
//! a file's problems are reported together, not one at a time.
//!
//! Compiling is near linear in the size of the workflow, because `validate`, `serve` (on every
//! change of a file) and every worker (once per definition) compile the same plan: steps and
//! names are found through maps, never by scanning; what a step (transitively) needs is one bit
//! matrix built in one pass over the dependency order (a 10,000-step chain takes 12.5 MB, where
//! lists of descendants would take 400 MB); lists shown in a fix are cut short; and "did you
//! mean" looks among the nearest names only once the list of names is long.
//!
//! # Limits
//!
//! | what | limit |
//! |---|---|
//! | steps in a workflow | [`MAX_STEPS`] (20,000) |
//! | `timeout` (one attempt) | [`MAX_TIMEOUT`] (1 day) |
//! | `max_wait` (an op answering "not yet") | [`MAX_MAX_WAIT`] (30 days) |
//! | `gate.expires_in`, `gate.escalate_expires_in` | [`MAX_GATE_EXPIRY`] (90 days) |
//! | `retry.initial`, `retry.max_delay` | [`MAX_RETRY_DELAY`] (1 day) |
//! | nesting of a `with:` value or an input's default | [`MAX_VALUE_DEPTH`] (32) |
//! | a description or gate message | [`MAX_TEXT_CHARS`] (4,000 characters) |
//! | a `when:` condition | [`crate::expr::MAX_CONDITION_LEN`] characters, nested [`crate::expr::MAX_DEPTH`] deep |
//!
//! # Text fields are templates
//!
//! The workflow's and each step's `description` and a gate's `message` may hold the same
//! `${{ … }}` references as `with:`; they are checked like `with:` (a step's text may read only
//! the outputs of steps it needs, the workflow's description no step output at all) and filled
//! in wherever a run is shown ([`Plan::gate_message`], [`Plan::step_description`],
//! [`Plan::description`]). An input's description is shown before any run exists, so it holds
//! no references. A secret input is refused in every text field, because text is shown to
//! approvers, in inboxes, on link pages and in ticket notes; should a stored definition hold one
//! anyway, it is written as `[secret]`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use steward_schemas::{
    Approvers, Dur, FieldType, GateSpec, InputType, OnExpiry, OnFailure, OpField, OpSpec, StepId,
    WorkflowDef,
};

use crate::expr::{Expr, Part, Path, Root, Scope, Seg as PathSeg, Template};
use crate::retry::RetryPolicy;
use crate::yaml::{self, Locator};

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

/// The most steps a workflow may have.
pub const MAX_STEPS: usize = 20_000;
/// The longest one attempt may be allowed to run: a step that needs longer should answer "not
/// yet" and be polled (`max_wait`).
pub const MAX_TIMEOUT: Dur = Dur::secs(86_400);
/// The longest an op may keep answering "not yet" (a directory sync, a mailbox move).
pub const MAX_MAX_WAIT: Dur = Dur::secs(30 * 86_400);
/// The longest a gate may wait for a decision, before and after escalation.
pub const MAX_GATE_EXPIRY: Dur = Dur::secs(90 * 86_400);
/// The longest delay between two attempts.
pub const MAX_RETRY_DELAY: Dur = Dur::secs(86_400);
/// The deepest a `with:` value or an input's default may nest lists and maps (definitions are
/// stored as JSON, which is read back with a nesting limit of 128).
pub const MAX_VALUE_DEPTH: usize = 32;
/// The longest a description or gate message may be, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;

/// One problem with a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The step it is in, if any.
    pub step: Option<String>,
    /// The step's position in the file (0-based), if it is in a step.
    pub index: Option<usize>,
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
            index: None,
            field: field.into(),
            message: message.into(),
            fix: fix.into(),
            line: None,
        }
    }

    /// The path of the field in the file (`steps[3].with.times`).
    fn path(&self) -> Vec<yaml::Seg> {
        let mut out = Vec::new();
        if let Some(i) = self.index {
            out.push(yaml::Seg::Key("steps".to_owned()));
            out.push(yaml::Seg::Index(i));
        }
        if !self.field.starts_with('(') {
            out.extend(yaml::parse_path(&self.field));
        }
        out
    }
}

/// Gives every problem without a line the line of its field in `source`.
pub fn locate(source: &str, problems: &mut [Problem]) {
    let mut locator = Locator::new(source);
    for p in problems {
        if p.line.is_none() {
            p.line = locator.line(&p.path());
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
    /// What it does, as written (a template: see [`Plan::step_description`]).
    pub description: String,
    /// Indexes of the steps it needs.
    pub needs: Vec<usize>,
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
    /// Its description and gate message, parsed.
    texts: StepTexts,
}

#[derive(Debug, Clone)]
struct StepTexts {
    description: Template,
    message: Template,
}

/// Which steps (transitively) need which: row `i` has bit `j` set when step `j` needs step `i`
/// directly or through other steps. Steps are in dependency order, so `j > i`.
#[derive(Debug, Clone)]
struct Reach {
    words: usize,
    bits: Vec<u64>,
}

impl Reach {
    /// Built from each step's direct dependents, in dependency order.
    fn new(dependents: &[Vec<usize>]) -> Self {
        let n = dependents.len();
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        for i in (0..n).rev() {
            for &d in &dependents[i] {
                debug_assert!(d > i, "dependents come later in dependency order");
                let (head, tail) = bits.split_at_mut(d * words);
                let row = &mut head[i * words..(i + 1) * words];
                row[d / 64] |= 1 << (d % 64);
                for (w, s) in row.iter_mut().zip(&tail[..words]) {
                    *w |= s;
                }
            }
        }
        Self { words, bits }
    }

    fn get(&self, row: usize, col: usize) -> bool {
        self.bits[row * self.words + col / 64] & (1 << (col % 64)) != 0
    }

    fn row(&self, row: usize) -> impl Iterator<Item = usize> + '_ {
        self.bits[row * self.words..(row + 1) * self.words]
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| {
                let mut word = word;
                std::iter::from_fn(move || {
                    (word != 0).then(|| {
                        let b = word.trailing_zeros() as usize;
                        word &= word - 1;
                        w * 64 + b
                    })
                })
            })
    }
}

/// A compiled workflow: checked, with steps in dependency order.
#[derive(Debug, Clone)]
pub struct Plan {
    def: WorkflowDef,
    hash: String,
    steps: Vec<PlanStep>,
    index: BTreeMap<StepId, usize>,
    reach: Reach,
    behind_gate: Vec<bool>,
    description: Template,
}

impl Plan {
    /// Reads a workflow file's text (YAML) and compiles it; `file` names it in errors.
    pub fn load(
        file: &str,
        source: &str,
        catalog: Option<&dyn Catalog>,
    ) -> Result<Self, ValidationError> {
        let fail = |mut problems: Vec<Problem>| {
            locate(source, &mut problems);
            ValidationError {
                file: file.to_owned(),
                problems,
            }
        };
        let value = yaml::read(source).map_err(fail)?;
        let def = yaml::decode(&value).map_err(fail)?;
        drop(value);
        Self::compile(def, catalog).map_err(fail)
    }

    /// Checks a definition and compiles it. With a catalog, ops and their inputs and outputs are
    /// checked too.
    pub fn compile(def: WorkflowDef, catalog: Option<&dyn Catalog>) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        check_name(&def, &mut problems);
        check_inputs(&def, &mut problems);
        let description = check_text(
            &def,
            None,
            TextKind::Workflow,
            "description",
            &def.description,
            &mut problems,
        );
        if def.steps.is_empty() {
            problems.push(Problem::new(
                None,
                "steps",
                "the workflow has no steps",
                "add at least one step",
            ));
        }
        if def.steps.len() > MAX_STEPS {
            problems.push(Problem::new(
                None,
                "steps",
                format!(
                    "the workflow has {} steps; the most is {MAX_STEPS}",
                    def.steps.len()
                ),
                "split it into several workflows",
            ));
            return Err(problems);
        }

        // Ids: shape and uniqueness.
        let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(def.steps.len());
        let mut ids = Vec::with_capacity(def.steps.len());
        for (i, step) in def.steps.iter().enumerate() {
            let at = problems.len();
            match StepId::parse(&step.id) {
                Ok(id) => {
                    if let Some(&first) = by_id.get(step.id.as_str()) {
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
                        by_id.insert(step.id.as_str(), i);
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
            at_step(&mut problems, at, i);
        }
        let mut sorted_ids: Vec<&str> = by_id.keys().copied().collect();
        sorted_ids.sort_unstable();

        // Needs.
        let mut needs: Vec<Vec<usize>> = vec![Vec::new(); def.steps.len()];
        for (i, step) in def.steps.iter().enumerate() {
            let at = problems.len();
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
                match by_id.get(need.as_str()) {
                    Some(&j) => needs[i].push(j),
                    None => problems.push(Problem::new(
                        Some(&step.id),
                        "needs",
                        format!("unknown step `{need}`{}", suggest_sorted(need, &sorted_ids)),
                        format!(
                            "declare a step with id `{need}` or remove it from needs (steps: {})",
                            some_of(&sorted_ids)
                        ),
                    )),
                }
            }
            at_step(&mut problems, at, i);
        }

        // Cycles: Kahn's algorithm; whatever is left over sits on or behind a cycle.
        let order = topo_order(&needs);
        if order.len() < def.steps.len() {
            let cycle = find_cycle(&needs, &order);
            let names: Vec<&str> = cycle.iter().map(|&i| def.steps[i].id.as_str()).collect();
            let shown = if names.len() > 12 {
                format!(
                    "{} → … ({} steps in all)",
                    names[..12].join(" → "),
                    names.len()
                )
            } else {
                names.join(" → ")
            };
            let mut p = Problem::new(
                Some(names[0]),
                "needs",
                format!("a cycle: {shown} → {}", names[0]),
                "remove one of these needs so the steps can run in some order",
            );
            p.index = Some(cycle[0]);
            problems.push(p);
            return Err(problems);
        }
        // Positions in dependency order, and what needs what, transitively.
        let mut pos = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            pos[old] = new;
        }
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); order.len()];
        for (old, ns) in needs.iter().enumerate() {
            for &j in ns {
                dependents[pos[j]].push(pos[old]);
            }
        }
        let reach = Reach::new(&dependents);
        drop(dependents);
        let graph = Graph {
            def: &def,
            by_id: &by_id,
            sorted_ids: &sorted_ids,
            pos: &pos,
            reach: &reach,
            catalog,
        };

        // Defaults, checked once (a step that sets its own value is checked on its own).
        let default_retry = match def.defaults.retry.as_ref().map(try_retry) {
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
        check_duration(
            None,
            "defaults.timeout",
            def.defaults.timeout,
            MAX_TIMEOUT,
            "30s",
            &mut problems,
        );
        check_duration(
            None,
            "defaults.max_wait",
            def.defaults.max_wait,
            MAX_MAX_WAIT,
            "1h",
            &mut problems,
        );

        // Per-step fields.
        let mut steps: Vec<Option<PlanStep>> = Vec::with_capacity(def.steps.len());
        for (i, step) in def.steps.iter().enumerate() {
            let at = problems.len();
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
                let field_name = format!("with.{key}");
                let field = spec.and_then(|s| s.input(key));
                if let Some(spec) = spec
                    && field.is_none()
                {
                    let names: Vec<&str> = spec.inputs.iter().map(|f| f.name).collect();
                    problems.push(Problem::new(
                        sid,
                        &field_name,
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
                if depth(value) > MAX_VALUE_DEPTH {
                    problems.push(Problem::new(
                        sid,
                        &field_name,
                        format!("the value nests lists and maps more than {MAX_VALUE_DEPTH} deep"),
                        "flatten the value",
                    ));
                    continue;
                }
                match Template::parse(value) {
                    Ok(t) => {
                        for r in t.refs() {
                            graph.check_ref(i, r, &field_name, true, &mut problems);
                        }
                        if let Some(field) = field
                            && let Some((message, fix)) = graph.type_problem(field, &t)
                        {
                            problems.push(Problem::new(sid, &field_name, message, fix));
                        }
                        with.push((key.clone(), t));
                    }
                    Err(e) => problems.push(Problem::new(
                        sid,
                        &field_name,
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
                                "`{}` needs input `{}` ({}; {})",
                                op_name, field.name, field.description, field.kind
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
                        graph.check_ref(i, r, "when", true, &mut problems);
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

            let texts = StepTexts {
                description: check_text(
                    &def,
                    Some((i, &graph)),
                    TextKind::Step,
                    "description",
                    &step.description,
                    &mut problems,
                ),
                message: step.gate.as_ref().map_or_else(
                    || Template::Literal(Value::String(String::new())),
                    |g| {
                        check_text(
                            &def,
                            Some((i, &graph)),
                            TextKind::Step,
                            "gate.message",
                            &g.message,
                            &mut problems,
                        )
                    },
                ),
            };

            let retry = match step.retry.as_ref().map(try_retry) {
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
            check_duration(
                sid,
                "timeout",
                step.timeout,
                MAX_TIMEOUT,
                "30s",
                &mut problems,
            );
            check_duration(
                sid,
                "max_wait",
                step.max_wait,
                MAX_MAX_WAIT,
                "1h",
                &mut problems,
            );
            let timeout = step
                .timeout
                .or(def.defaults.timeout)
                .unwrap_or(DEFAULT_TIMEOUT);
            let max_wait = step
                .max_wait
                .or(def.defaults.max_wait)
                .unwrap_or(DEFAULT_MAX_WAIT);
            at_step(&mut problems, at, i);
            steps.push(Some(PlanStep {
                id: ids[i]
                    .clone()
                    .unwrap_or_else(|| StepId::parse("invalid").expect("a valid literal id")),
                op: op_name,
                gate: step.gate.clone(),
                description: step.description.clone(),
                needs: Vec::new(),
                with,
                when,
                retry,
                timeout,
                on_failure: step
                    .on_failure
                    .or(def.defaults.on_failure)
                    .unwrap_or(DEFAULT_ON_FAILURE),
                max_wait: max_wait.get(),
                texts,
            }));
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        // Dependency order, with indexes remapped.
        let mut ordered: Vec<PlanStep> = Vec::with_capacity(steps.len());
        for &old in &order {
            let mut step = steps[old].take().expect("each step is placed once");
            step.needs = needs[old].iter().map(|&n| pos[n]).collect();
            step.needs.sort_unstable();
            ordered.push(step);
        }
        let mut behind_gate = vec![false; ordered.len()];
        for i in 0..ordered.len() {
            behind_gate[i] = ordered[i]
                .needs
                .iter()
                .any(|&j| ordered[j].gate.is_some() || behind_gate[j]);
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
            reach,
            behind_gate,
            description,
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

    /// The indexes of every step that needs step `i`, directly or not, in ascending order.
    pub fn descendants(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.reach.row(i)
    }

    /// Whether step `i` needs step `j`, directly or not.
    pub fn depends_on(&self, i: usize, j: usize) -> bool {
        self.reach.get(j, i)
    }

    /// Whether step `i` (transitively) needs an approval gate.
    pub fn behind_gate(&self, i: usize) -> bool {
        self.behind_gate[i]
    }

    /// The workflow's description, with its references filled in from `scope` (a run), or as
    /// written without one.
    pub fn description(&self, scope: Option<&dyn Scope>) -> String {
        self.text(&self.description, scope)
    }

    /// Step `i`'s description, filled in from `scope` (a run), or as written without one.
    pub fn step_description(&self, i: usize, scope: Option<&dyn Scope>) -> String {
        self.text(&self.steps[i].texts.description, scope)
    }

    /// Gate `i`'s message to its approvers, filled in from `scope` (a run), or as written
    /// without one; empty for a step that is not a gate or has no message.
    pub fn gate_message(&self, i: usize, scope: Option<&dyn Scope>) -> String {
        self.text(&self.steps[i].texts.message, scope)
    }

    fn text(&self, t: &Template, scope: Option<&dyn Scope>) -> String {
        render_text(t, scope, &|p: &Path| is_secret_ref(&self.def, p))
    }
}

/// Whether the value `p` refers to is a secret: a secret input, or a value under a
/// secret-looking key.
fn is_secret_ref(def: &WorkflowDef, p: &Path) -> bool {
    let input = matches!(&p.root, Root::Input(n) if def.inputs.get(n).is_some_and(|d| d.secret));
    let key = p.segs.iter().any(|s| match s {
        PathSeg::Field(f) => crate::history::is_secret_key(f),
        PathSeg::Index(_) => false,
    }) || matches!(&p.root, Root::Company(f) if crate::history::is_secret_key(f));
    input || key
}

/// Writes a text template out: each reference's value as text; a secret as `[secret]`; a
/// reference with no value yet shown as written when it reads a step's output (the step has not
/// run), and as nothing otherwise (an optional input left out).
pub fn render_text(
    t: &Template,
    scope: Option<&dyn Scope>,
    secret: &dyn Fn(&Path) -> bool,
) -> String {
    let one = |p: &Path, out: &mut String| {
        if secret(p) {
            out.push_str(crate::history::SECRET_INPUT);
            return;
        }
        let Some(scope) = scope else {
            out.push_str(&format!("${{{{ {p} }}}}"));
            return;
        };
        match scope.lookup(p) {
            Value::Null if matches!(p.root, Root::StepOutput(_)) => {
                out.push_str(&format!("${{{{ {p} }}}}"));
            }
            Value::Null => {}
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
    };
    let mut out = String::new();
    match t {
        Template::Literal(Value::String(s)) => out.push_str(s),
        Template::Literal(other) => out.push_str(&other.to_string()),
        Template::Ref(p) => one(p, &mut out),
        Template::Text(parts) => {
            for part in parts {
                match part {
                    Part::Lit(s) => out.push_str(s),
                    Part::Ref(p) => one(p, &mut out),
                }
            }
        }
        Template::Array(_) | Template::Object(_) => {}
    }
    out
}

/// The content hash of a definition.
fn hash_def(def: &WorkflowDef) -> String {
    let json = serde_json::to_vec(def).expect("a workflow definition serialises");
    hex::encode(Sha256::digest(json))
}

/// Marks the problems from `at` on that belong to a step as belonging to the step at `i`.
fn at_step(problems: &mut [Problem], at: usize, i: usize) {
    for p in &mut problems[at..] {
        if p.step.is_some() && p.index.is_none() {
            p.index = Some(i);
        }
    }
}

/// How deep a value nests lists and maps (a scalar is 0).
fn depth(v: &Value) -> usize {
    // Iterative, so that no value can overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        if d > MAX_VALUE_DEPTH {
            break;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    max
}

/// A retry spec checked, durations included.
fn try_retry(spec: &steward_schemas::RetrySpec) -> Result<RetryPolicy, (&'static str, String)> {
    for (field, d) in [("initial", spec.initial), ("max_delay", spec.max_delay)] {
        if d > MAX_RETRY_DELAY {
            return Err((
                field,
                format!("{d} is longer than the most allowed, {MAX_RETRY_DELAY}"),
            ));
        }
    }
    RetryPolicy::try_from_spec(spec)
}

/// A problem if a duration that is set is zero or longer than `max`; `example` is a value to
/// suggest.
fn check_duration(
    sid: Option<&str>,
    field: &str,
    d: Option<Dur>,
    max: Dur,
    example: &str,
    problems: &mut Vec<Problem>,
) {
    let Some(d) = d else {
        return;
    };
    let name = field.rsplit('.').next().unwrap_or(field);
    if d.get().is_zero() {
        problems.push(Problem::new(
            sid,
            field,
            format!("a {name} of zero"),
            format!("write a positive duration such as `{example}`"),
        ));
    } else if d > max {
        problems.push(Problem::new(
            sid,
            field,
            format!("a {name} of {d} is longer than the most allowed, {max}"),
            format!("write at most `{max}`"),
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
            format!(
                "`{}` is not a valid workflow name",
                def.name.chars().take(80).collect::<String>()
            ),
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
        check_text(
            def,
            None,
            TextKind::Input,
            &format!("inputs.{name}.description"),
            &input.description,
            problems,
        );
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
        } else if let Some(default) = &input.default {
            if depth(default) > MAX_VALUE_DEPTH {
                problems.push(Problem::new(
                    None,
                    format!("inputs.{name}.default"),
                    format!("the default nests lists and maps more than {MAX_VALUE_DEPTH} deep"),
                    "flatten the value",
                ));
            } else if !input.kind.accepts(default) {
                problems.push(Problem::new(
                    None,
                    format!("inputs.{name}.default"),
                    format!("the default {default} is not a {}", input.kind.name()),
                    format!("give a {} default or change the type", input.kind.name()),
                ));
            }
        }
    }
}

/// Where a text field is shown, which decides what it may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    /// The workflow's description: shown with a run and without (no step outputs).
    Workflow,
    /// A step's description or gate message: shown with a run.
    Step,
    /// An input's description: shown before any run exists (no references).
    Input,
}

/// Checks a text field's references; the parsed template (literal text when it has problems).
fn check_text(
    def: &WorkflowDef,
    step: Option<(usize, &Graph<'_>)>,
    kind: TextKind,
    field: &str,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Template {
    let sid = step.map(|(i, _)| def.steps[i].id.as_str());
    let literal = || Template::Literal(Value::String(text.to_owned()));
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        problems.push(Problem::new(
            sid,
            field,
            format!("the text is {chars} characters long; the most is {MAX_TEXT_CHARS}"),
            "shorten it; put long instructions in the company's custom instructions",
        ));
        return literal();
    }
    let t = match Template::parse(&Value::String(text.to_owned())) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(
                sid,
                field,
                e.message,
                "write references as `${{ inputs.NAME }}`, `${{ company.FIELD }}` or `${{ steps.ID.output.FIELD }}`, or remove the `${{`",
            ));
            return literal();
        }
    };
    let before = problems.len();
    for r in t.refs() {
        match (&r.root, kind) {
            (_, TextKind::Input) => {
                problems.push(Problem::new(
                    sid,
                    field,
                    format!("`{r}`: an input's description is shown before a run exists, so it cannot refer to the run's values"),
                    "write the description as plain text",
                ));
                continue;
            }
            (Root::StepOutput(_), TextKind::Workflow) => {
                problems.push(Problem::new(
                    sid,
                    field,
                    format!("`{r}`: the workflow's description is shown before any step has run"),
                    "refer only to `inputs.`, `company.` and `run.` here, or move the text to the step's description",
                ));
                continue;
            }
            (Root::Input(n), _) if def.inputs.get(n).is_some_and(|d| d.secret) => {
                problems.push(Problem::new(
                    sid,
                    field,
                    format!("`{r}` is a secret input; text fields are shown to approvers, in inboxes, on link pages and in ticket notes, so a secret is never written into them"),
                    "remove the reference (a secret reaches an op only through `with:`)",
                ));
                continue;
            }
            _ => {}
        }
        match step {
            Some((i, graph)) => graph.check_ref(i, r, field, false, problems),
            None => check_root(def, None, r, field, problems),
        }
    }
    if problems.len() > before {
        literal()
    } else {
        t
    }
}

/// What checking references needs to know about the workflow's graph.
struct Graph<'a> {
    def: &'a WorkflowDef,
    by_id: &'a HashMap<&'a str, usize>,
    sorted_ids: &'a [&'a str],
    /// Each step's (file order) position in dependency order.
    pos: &'a [usize],
    reach: &'a Reach,
    catalog: Option<&'a dyn Catalog>,
}

impl Graph<'_> {
    /// Checks a reference made by step `i`; `strict` (in `with:` and `when:`): a step output
    /// must come from a step it needs.
    fn check_ref(
        &self,
        i: usize,
        path: &Path,
        field: &str,
        strict: bool,
        problems: &mut Vec<Problem>,
    ) {
        let def = self.def;
        let sid = Some(def.steps[i].id.as_str());
        let Root::StepOutput(other) = &path.root else {
            check_root(def, sid, path, field, problems);
            return;
        };
        let Some(&j) = self.by_id.get(other.as_str()) else {
            problems.push(Problem::new(
                sid,
                field,
                format!(
                    "`{path}` refers to unknown step `{other}`{}",
                    suggest_sorted(other, self.sorted_ids)
                ),
                "refer to a step of this workflow",
            ));
            return;
        };
        if !self.reach.get(self.pos[j], self.pos[i]) {
            let when = if strict {
                "which may not have run yet"
            } else {
                "which may not have run when this text is shown"
            };
            problems.push(Problem::new(
                sid,
                field,
                format!("`{path}` reads the output of `{other}`, {when}"),
                format!(
                    "add `{other}` to this step's needs (directly or through a step that needs it)"
                ),
            ));
            return;
        }
        if let (Some(cat), Some(PathSeg::Field(first))) = (self.catalog, path.segs.first())
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

    /// The type a reference's value is known to have before the run, if it is.
    fn static_type(&self, path: &Path) -> Option<(FieldType, String)> {
        match &path.root {
            Root::Input(n) if path.segs.is_empty() => {
                let decl = self.def.inputs.get(n)?;
                let kind = match decl.kind {
                    InputType::String => FieldType::Text,
                    InputType::Number => FieldType::Integer {
                        min: i64::MIN,
                        max: i64::MAX,
                    },
                    InputType::Boolean => FieldType::Boolean,
                    InputType::Array => FieldType::List,
                    InputType::Object => FieldType::Map,
                    InputType::Any => return None,
                };
                Some((
                    kind,
                    format!("`{path}` is declared `type: {}`", decl.kind.name()),
                ))
            }
            Root::Run(_) => Some((FieldType::Text, format!("`{path}` is text"))),
            Root::StepOutput(step) => {
                let [PathSeg::Field(f)] = path.segs.as_slice() else {
                    return None;
                };
                let &j = self.by_id.get(step.as_str())?;
                let spec = self.catalog?.op(self.def.steps[j].op.as_deref()?)?;
                let out = spec.output(f)?;
                (out.kind != FieldType::Any).then(|| {
                    (
                        out.kind,
                        format!("`{path}` (an output of `{}`) is {}", spec.name, out.kind),
                    )
                })
            }
            Root::Input(_) | Root::Company(_) => None,
        }
    }

    /// Why a `with:` value cannot fit the op's field, and the fix; `None` when it fits or
    /// cannot be known before the run.
    fn type_problem(&self, field: &OpField, t: &Template) -> Option<(String, String)> {
        let name = field.name;
        match t {
            Template::Literal(v) => field.check(v).err().map(|e| {
                (
                    format!("`{name}`: {e}"),
                    format!("write {} (`{name}`: {})", field.kind, field.description),
                )
            }),
            Template::Ref(p) => {
                let (kind, said) = self.static_type(p)?;
                (!fits(kind, field.kind)).then(|| {
                    (
                        format!("{said}, but `{name}` takes {}", field.kind),
                        format!("bind a value of that type, or change the declaration of `{p}`"),
                    )
                })
            }
            Template::Text(_) => (!field.kind.takes_text()).then(|| {
                (
                    format!(
                        "text with references written into it is always text, but `{name}` takes {}",
                        field.kind
                    ),
                    "write the reference alone (`\"${{ inputs.NAME }}\"`) to pass its value with its type".to_owned(),
                )
            }),
            Template::Array(_) => (!matches!(field.kind, FieldType::List | FieldType::Any)).then(
                || {
                    (
                        format!("a list, but `{name}` takes {}", field.kind),
                        format!("write {}", field.kind),
                    )
                },
            ),
            Template::Object(_) => (!matches!(field.kind, FieldType::Map | FieldType::Any)).then(
                || {
                    (
                        format!("a map, but `{name}` takes {}", field.kind),
                        format!("write {}", field.kind),
                    )
                },
            ),
        }
    }
}

/// Whether a value of type `have` fits a field of type `want` (bounds are checked at run time).
fn fits(have: FieldType, want: FieldType) -> bool {
    match (have, want) {
        (_, FieldType::Any) | (FieldType::Any, _) => true,
        (FieldType::Text | FieldType::OneOf { .. }, w) => w.takes_text(),
        (FieldType::Integer { .. }, FieldType::Integer { .. })
        | (FieldType::Boolean, FieldType::Boolean)
        | (FieldType::List, FieldType::List)
        | (FieldType::Map, FieldType::Map) => true,
        (FieldType::Integer { .. } | FieldType::Boolean | FieldType::List | FieldType::Map, _) => {
            false
        }
    }
}

/// Checks a reference to an input, a company field or the run.
fn check_root(
    def: &WorkflowDef,
    sid: Option<&str>,
    path: &Path,
    field: &str,
    problems: &mut Vec<Problem>,
) {
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
        Root::StepOutput(other) => problems.push(Problem::new(
            sid,
            field,
            format!("`{path}` reads the output of `{other}`, but no step has run here"),
            "refer only to `inputs.`, `company.` and `run.` here",
        )),
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
        match d {
            Some(d) if d.get().is_zero() => problems.push(Problem::new(
                sid,
                field,
                "zero",
                "write a positive duration such as `24h`",
            )),
            Some(d) if d > MAX_GATE_EXPIRY => problems.push(Problem::new(
                sid,
                field,
                format!("{d} is longer than the most allowed, {MAX_GATE_EXPIRY}"),
                format!("write at most `{MAX_GATE_EXPIRY}` (escalate to someone else instead of waiting longer)"),
            )),
            _ => {}
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
    let mut done = vec![false; needs.len()];
    for &i in order {
        done[i] = true;
    }
    // Walk needs from any leftover step; a leftover step always has a leftover need, so the walk
    // must revisit a step, and the part from its first visit on is a cycle.
    let start = (0..needs.len())
        .find(|&i| !done[i])
        .expect("a leftover step exists");
    let mut at: HashMap<usize, usize> = HashMap::new();
    let mut path = vec![start];
    at.insert(start, 0);
    let mut cur = start;
    loop {
        let next = *needs[cur]
            .iter()
            .find(|&&j| !done[j])
            .expect("a step on a cycle needs another step on it");
        if let Some(&pos) = at.get(&next) {
            let mut cycle = path[pos..].to_vec();
            cycle.reverse();
            return cycle;
        }
        at.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

/// Up to a dozen names, then how many more.
fn some_of(names: &[&str]) -> String {
    const SHOWN: usize = 12;
    if names.len() <= SHOWN {
        names.join(", ")
    } else {
        format!(
            "{}, … and {} more",
            names[..SHOWN].join(", "),
            names.len() - SHOWN
        )
    }
}

/// ", did you mean `x`?" when a known name is close to `name`.
pub(crate) fn suggest(name: &str, known: &[&str]) -> String {
    let name: String = name.chars().take(64).collect();
    known
        .iter()
        .filter(|k| k.len().abs_diff(name.len()) <= 2.max(k.len() / 4) || k.starts_with(&*name))
        .map(|k| (crate::text::edit_distance(&name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) || (name.len() >= 3 && k.starts_with(&*name)))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// [`suggest`] over a sorted list, looking only at the names nearest in sort order once the
/// list is long (so that thousands of unknown names in a file stay cheap to report).
fn suggest_sorted(name: &str, sorted: &[&str]) -> String {
    const WINDOW: usize = 32;
    if sorted.len() <= 4 * WINDOW {
        return suggest(name, sorted);
    }
    let at = sorted.partition_point(|k| *k < name);
    let near = &sorted[at.saturating_sub(WINDOW)..(at + WINDOW).min(sorted.len())];
    suggest(name, near)
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
        const COUNT_IN: &[OpField] = &[
            OpField::required("times", "how many").integer(0, 100),
            OpField::optional("note", "a note"),
            OpField::optional("flag", "a flag").boolean(),
            OpField::optional("rights", "rights").of(FieldType::OneOf {
                values: &["full_access", "send_as"],
            }),
            OpField::optional("items", "items").of(FieldType::List),
        ];
        const COUNT_OUT: &[OpField] = &[
            OpField::required("total", "the total").integer(0, 100),
            OpField::required("label", "a label"),
        ];
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
                name: "count",
                summary: "counts",
                access: OpAccess::Read,
                group: PermissionGroup::Users,
                approval: ApprovalRule::Policy,
                system: System::Steward,
                reversibility: Reversibility::NotNeeded,
                inputs: COUNT_IN,
                outputs: Some(COUNT_OUT),
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
        assert_eq!(plan.descendants(0).collect::<Vec<_>>(), [1, 2]);
        assert!(plan.depends_on(2, 0) && !plan.depends_on(0, 2));
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
                "workflows/test.yaml:7: step `b`: needs: unknown step `aa`; did you mean `a`?"
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
        assert!(err.contains("step `a`: timeout: `5 minutes`"), "{err}");
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

    #[test]
    fn op_inputs_are_checked_against_their_types_and_every_problem_is_listed() {
        let yaml = r#"name: w
inputs:
  n: {type: number}
  s: {type: string}
steps:
  - id: a
    op: count
    with:
      times: "three"
  - id: b
    op: count
    with:
      times: -5
  - id: c
    op: count
    with:
      note: x
  - id: d
    op: count
    with:
      times: 1
      bogus: 2
  - id: e
    op: count
    with:
      times: "${{ inputs.s }}"
  - id: f
    op: count
    with:
      times: "${{ inputs.n }}"
      flag: "x ${{ inputs.n }}"
  - id: g
    op: count
    needs: [f]
    max_wait: 999999999d
    with:
      times: "${{ steps.f.output.label }}"
      rights: owner
      items: {a: 1}
"#;
        let err = load(yaml).unwrap_err();
        let text = err.to_string();
        for want in [
            "workflows/test.yaml:9: step `a`: with.times: `times`: expected a whole number from 0 to 100, got text `three`\n  fix: write a whole number from 0 to 100 (`times`: how many)",
            "workflows/test.yaml:13: step `b`: with.times: `times`: -5 is below the smallest allowed, 0",
            "workflows/test.yaml:16: step `c`: with: `count` needs input `times` (how many; a whole number from 0 to 100)",
            "workflows/test.yaml:22: step `d`: with.bogus: `count` has no input `bogus`",
            "workflows/test.yaml:26: step `e`: with.times: `inputs.s` is declared `type: string`, but `times` takes a whole number from 0 to 100",
            "workflows/test.yaml:31: step `f`: with.flag: text with references written into it is always text, but `flag` takes true or false",
            "workflows/test.yaml:35: step `g`: max_wait: a max_wait of 999999999d is longer than the most allowed, 30d\n  fix: write at most `30d`",
            "workflows/test.yaml:37: step `g`: with.times: `steps.f.output.label` (an output of `count`) is text, but `times` takes a whole number from 0 to 100",
            "workflows/test.yaml:38: step `g`: with.rights: `rights`: `owner` is not one of full_access, send_as",
            "workflows/test.yaml:39: step `g`: with.items: `items`: expected a list, got a map",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(err.problems.len(), 10, "{text}");
        assert!(
            !text.contains("step `f`: with.times"),
            "a number input fits a whole-number field: {text}"
        );
    }

    #[test]
    fn durations_are_bounded_with_the_limit_named() {
        let err = problems(
            "name: w\ndefaults: {timeout: 2d}\nsteps:\n  - id: a\n    op: noop\n    retry: {attempts: 3, initial: 1s, max_delay: 7d}\n  - id: g\n    gate: {expires_in: 365d, on_expiry: escalate, escalate_to: [a@b.co], escalate_expires_in: 91d}\n",
        );
        for want in [
            "defaults.timeout: a timeout of 2d is longer than the most allowed, 1d",
            "step `a`: retry.max_delay: 7d is longer than the most allowed, 1d",
            "step `g`: gate.expires_in: 365d is longer than the most allowed, 90d",
            "step `g`: gate.escalate_expires_in: 91d is longer than the most allowed, 90d",
        ] {
            assert!(err.contains(want), "missing {want:?} in\n{err}");
        }
    }

    struct Run(Value);

    impl Scope for Run {
        fn lookup(&self, path: &Path) -> Value {
            let base = match &path.root {
                Root::Input(n) => self.0["inputs"][n].clone(),
                Root::StepOutput(s) => self.0["steps"][s].clone(),
                Root::Company(f) => self.0["company"][f].clone(),
                Root::Run(_) => Value::String("run_1".to_owned()),
            };
            crate::expr::walk(&base, &path.segs)
        }
    }

    #[test]
    fn text_fields_are_templates_checked_and_filled_in() {
        let plan = load(
            r#"
name: w
description: "onboard ${{ inputs.upn }} at ${{ company.name }}"
inputs:
  upn: {type: string, description: "the user's UPN"}
  note: {type: string, required: false}
steps:
  - id: create
    op: user.create
    description: "create ${{ inputs.upn }}${{ inputs.note }}"
    with: {upn: "${{ inputs.upn }}"}
  - id: ok
    needs: [create]
    description: "approve ${{ steps.create.output.id }}"
    gate: {message: "Create ${{ inputs.upn }} (id ${{ steps.create.output.id }}) for ${{ run.requested_by }}?"}
"#,
        )
        .unwrap();
        let run = Run(serde_json::json!({
            "inputs": {"upn": "jane@contoso.com"},
            "company": {"name": "Contoso"},
            "steps": {}
        }));
        assert_eq!(
            plan.description(Some(&run)),
            "onboard jane@contoso.com at Contoso"
        );
        assert_eq!(
            plan.step_description(0, Some(&run)),
            "create jane@contoso.com",
            "an optional input left out is written as nothing"
        );
        assert_eq!(
            plan.gate_message(1, Some(&run)),
            "Create jane@contoso.com (id ${{ steps.create.output.id }}) for run_1?",
            "an output not known yet is shown as written"
        );
        let done = Run(serde_json::json!({
            "inputs": {"upn": "jane@contoso.com"},
            "steps": {"create": {"id": "u-7"}}
        }));
        assert_eq!(
            plan.gate_message(1, Some(&done)),
            "Create jane@contoso.com (id u-7) for run_1?"
        );
        assert_eq!(
            plan.gate_message(1, None),
            "Create ${{ inputs.upn }} (id ${{ steps.create.output.id }}) for ${{ run.requested_by }}?"
        );
        assert_eq!(plan.gate_message(0, Some(&done)), "", "not a gate");

        let err = problems(
            r#"name: w
description: "for ${{ steps.a.output.id }}"
inputs:
  upn: {type: string, description: "like ${{ company.name }}"}
  password: {type: string, secret: true}
steps:
  - id: a
    op: user.create
    description: "create ${{ inputs.upm }}"
    with: {upn: x}
  - id: g
    gate:
      message: "reset to ${{ inputs.password }} for ${{ steps.b.output.id }} at ${{ company.nmae }}"
  - id: b
    op: user.create
    with: {upn: x}
"#,
        );
        for want in [
            "workflows/test.yaml:2: description: `steps.a.output.id`: the workflow's description is shown before any step has run",
            "workflows/test.yaml:4: inputs.upn.description: `company.name`: an input's description is shown before a run exists",
            "workflows/test.yaml:9: step `a`: description: `inputs.upm` refers to an input the workflow does not declare; did you mean `upn`?",
            "workflows/test.yaml:13: step `g`: gate.message: `inputs.password` is a secret input",
            "workflows/test.yaml:13: step `g`: gate.message: `steps.b.output.id` reads the output of `b`, which may not have run when this text is shown",
            "workflows/test.yaml:13: step `g`: gate.message: companies have no field `nmae`; did you mean `name`?",
        ] {
            assert!(err.contains(want), "missing {want:?} in\n{err}");
        }
    }

    #[test]
    fn secrets_in_text_are_written_as_secret() {
        let t = Template::parse(&Value::String(
            "pw ${{ inputs.password }} key ${{ company.settings.client_secret }} u ${{ inputs.user }}".to_owned(),
        ))
        .unwrap();
        let run = Run(serde_json::json!({
            "inputs": {"password": "hunter2", "user": "jane"},
            "company": {"settings": {"client_secret": "s3cr3t"}}
        }));
        let def: WorkflowDef = serde_yaml_ng::from_str(
            "name: w\ninputs: {password: {type: string, secret: true}, user: {}}\nsteps: []\n",
        )
        .unwrap();
        let shown = render_text(&t, Some(&run), &|p: &Path| is_secret_ref(&def, p));
        assert_eq!(shown, "pw [secret] key [secret] u jane");
    }

    #[test]
    fn deep_conditions_and_values_are_refused_with_their_line() {
        let deep = format!("{}inputs.a{}", "(".repeat(5000), ")".repeat(5000));
        let err = problems(&format!(
            "name: w\ninputs: {{a: {{type: boolean}}}}\nsteps:\n  - id: a\n    op: noop\n    when: \"{}\"\n",
            &deep[..4000.min(deep.len())]
        ));
        assert!(
            err.contains("workflows/test.yaml:6: step `a`: when: ")
                && err.contains("nested more than 32 deep"),
            "{err}"
        );
        let nots = format!("{}inputs.a", "!".repeat(3000));
        let err = problems(&format!(
            "name: w\ninputs: {{a: {{type: boolean}}}}\nsteps:\n  - id: a\n    op: noop\n    when: \"{nots}\"\n"
        ));
        assert!(err.contains("nested more than 32 deep"), "{err}");
        let long = format!("{}inputs.a", "inputs.a && ".repeat(500));
        let err = problems(&format!(
            "name: w\ninputs: {{a: {{type: boolean}}}}\nsteps:\n  - id: a\n    op: noop\n    when: \"{long}\"\n"
        ));
        assert!(err.contains("the most is 4096"), "{err}");
        // A long flat chain is one node: fine.
        let chain = format!("{}inputs.a", "inputs.a && ".repeat(300));
        let plan = load(&format!(
            "name: w\ninputs: {{a: {{type: boolean}}}}\nsteps:\n  - id: a\n    op: noop\n    when: \"{chain}\"\n"
        ))
        .unwrap();
        assert!(matches!(plan.step(0).when, Some(Expr::And(ref all)) if all.len() == 301));
        // Lists nested in a `with:` value, within YAML's limit but past ours.
        let value = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let err = problems(&format!(
            "name: w\nsteps:\n  - id: a\n    op: noop\n    with:\n      output: {value}\n"
        ));
        assert!(
            err.contains("workflows/test.yaml:6: step `a`: with.output: the value nests lists and maps more than 32 deep"),
            "{err}"
        );
        // Past YAML's own limit: refused before it is read, with the line.
        let value = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = problems(&format!(
            "name: w\nsteps:\n  - id: a\n    op: noop\n    with:\n      output: {value}\n"
        ));
        assert!(
            err.contains(
                "workflows/test.yaml:6: (file): the YAML is nested more than 128 levels deep"
            ),
            "{err}"
        );
        let dashes = format!("name: w\nsteps:\n  - {}x\n", "- ".repeat(50_000));
        let err = problems(&dashes);
        assert!(
            err.contains("workflows/test.yaml:3: (file): the YAML is nested"),
            "{err}"
        );
    }
}

//! Validation at scale: a generated 10,000-step workflow validates and compiles correctly, and a
//! 10,000-step file with a mistake in every step reports every one with its line. Timing is
//! printed, not asserted (the figures belong to `cargo bench -p steward-core --bench validate`).

use std::time::Instant;

use steward_core::{Catalog, Plan};
use steward_schemas::{
    ApprovalRule, OpAccess, OpField, OpSpec, PermissionGroup, Reversibility, System,
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
    const NOOP_IN: &[OpField] = &[OpField::optional("output", "returned").any()];
    Cat(vec![OpSpec {
        name: "noop",
        summary: "nothing",
        access: OpAccess::Read,
        group: PermissionGroup::Users,
        approval: ApprovalRule::Policy,
        system: System::Steward,
        reversibility: Reversibility::NotNeeded,
        inputs: NOOP_IN,
        outputs: None,
        internal: false,
    }])
}

/// `n` steps: chains of 50 steps, each chain needing the end of the one before and fanning
/// out from its start, with a gate every 1,000 steps; steps read earlier outputs in `with:`,
/// `when:` and their descriptions.
fn generate(n: usize) -> String {
    let mut y = String::from(
        "name: big\ninputs:\n  user: {type: string}\n  flag: {type: boolean, default: true}\nsteps:\n",
    );
    for i in 0..n {
        let needs = match i {
            0 => String::new(),
            i if i % 50 == 0 => format!("    needs: [s{}, s{}]\n", i - 1, i - 50),
            i => format!("    needs: [s{}]\n", i - 1),
        };
        if i % 1000 == 999 {
            y.push_str(&format!(
                "  - id: s{i}\n{needs}    gate: {{approvers: [lead@msp.example], message: \"continue for ${{{{ inputs.user }}}} after ${{{{ steps.s{}.output.n }}}}?\"}}\n",
                i - 1
            ));
            continue;
        }
        y.push_str(&format!("  - id: s{i}\n    op: noop\n{needs}"));
        if i > 0 {
            y.push_str(&format!(
                "    description: \"step {i} for ${{{{ inputs.user }}}} after ${{{{ steps.s{}.output.n }}}}\"\n    when: inputs.flag && steps.s{}.output.n != 'stop'\n",
                i - 1,
                i - 1
            ));
        }
        y.push_str(&format!(
            "    with: {{output: {{n: {i}, user: \"${{{{ inputs.user }}}}\"}}}}\n"
        ));
    }
    y
}

#[test]
fn a_ten_thousand_step_workflow_validates_and_compiles() {
    let yaml = generate(10_000);
    let started = Instant::now();
    let plan = Plan::load("big.yaml", &yaml, Some(&cat())).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "10,000 steps ({} KiB) validated and compiled in {:?} (debug build)",
        yaml.len() / 1024,
        started.elapsed()
    );
    assert_eq!(plan.steps().len(), 10_000);
    // Dependency order: every step after what it needs.
    for (i, s) in plan.steps().iter().enumerate() {
        assert!(s.needs.iter().all(|&j| j < i), "step {i}");
    }
    let first = plan.index_of("s0").unwrap();
    let last = plan.index_of("s9999").unwrap();
    assert!(plan.depends_on(last, first));
    assert_eq!(plan.descendants(first).count(), 9_999);
    assert_eq!(plan.descendants(last).count(), 0);
    assert!(plan.behind_gate(plan.index_of("s1000").unwrap()));
    assert!(!plan.behind_gate(plan.index_of("s998").unwrap()));
    assert_eq!(plan.step(plan.index_of("s999").unwrap()).op, "gate");
    // Workers compile the same definition again from its stored form.
    let started = Instant::now();
    let again = Plan::compile(plan.def().clone(), None).unwrap_or_else(|p| panic!("{p:?}"));
    eprintln!(
        "compiled again from the definition in {:?}",
        started.elapsed()
    );
    assert_eq!(again.hash(), plan.hash());
}

#[test]
fn every_problem_of_a_ten_thousand_step_file_is_reported_with_its_line() {
    let mut yaml = String::from("name: big\nsteps:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!("  - id: s{i}\n    op: noop\n    needs: [t{i}]\n"));
    }
    let started = Instant::now();
    let err = Plan::load("big.yaml", &yaml, Some(&cat())).unwrap_err();
    eprintln!(
        "10,000 problems found and placed in {:?} (debug build)",
        started.elapsed()
    );
    assert_eq!(err.problems.len(), 10_000);
    for (i, p) in err.problems.iter().enumerate() {
        assert_eq!(p.step.as_deref(), Some(format!("s{i}").as_str()));
        assert_eq!(p.field, "needs");
        assert_eq!(p.line, Some(3 * i + 5), "{p:?}");
        assert!(
            p.fix.contains("… and 9988 more"),
            "the list of steps is cut short"
        );
    }
}

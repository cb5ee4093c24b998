//! How long validating and compiling a large workflow takes, and how it grows with the number
//! of steps: `cargo bench -p steward-core --bench validate` (prints a table; it asserts nothing).

use std::hint::black_box;
use std::time::{Duration, Instant};

use steward_core::Plan;

/// `n` steps in chains of 50 that need the end of the chain before, reading earlier outputs.
fn generate(n: usize) -> String {
    let mut y = String::from("name: big\ninputs:\n  user: {type: string}\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!("  - id: s{i}\n    op: noop\n"));
        if i > 0 {
            let needs = if i % 50 == 0 {
                format!("s{}, s{}", i - 1, i - 50)
            } else {
                format!("s{}", i - 1)
            };
            y.push_str(&format!(
                "    needs: [{needs}]\n    description: \"step {i} after ${{{{ steps.s{p}.output.n }}}}\"\n    when: steps.s{p}.output.n != 'stop'\n",
                p = i - 1
            ));
        }
        y.push_str(&format!(
            "    with: {{output: {{n: {i}, user: \"${{{{ inputs.user }}}}\"}}}}\n"
        ));
    }
    y
}

fn best_of(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    println!(
        "best of 3, in ms: load = read + decode + compile; YAML alone = serde_yaml_ng reading the text into a WorkflowDef, for comparison"
    );
    println!(
        "{:>7}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
        "steps", "KiB", "load", "read", "decode", "compile", "YAML alone"
    );
    for n in [1_000, 5_000, 10_000] {
        let yaml = generate(n);
        let load = best_of(3, || {
            black_box(
                Plan::load("bench.yaml", &yaml, None).expect("the generated workflow is valid"),
            );
        });
        let def = Plan::load("bench.yaml", &yaml, None)
            .expect("the generated workflow is valid")
            .def()
            .clone();
        let read = best_of(3, || {
            black_box(steward_core::yaml::read(&yaml).expect("it reads"));
        });
        let value = steward_core::yaml::read(&yaml).expect("it reads");
        let decode = best_of(3, || {
            black_box(steward_core::yaml::decode(&value).expect("it decodes"));
        });
        let typed = best_of(3, || {
            black_box(
                serde_yaml_ng::from_str::<steward_schemas::WorkflowDef>(&yaml).expect("it reads"),
            );
        });
        let compile = best_of(3, || {
            black_box(Plan::compile(def.clone(), None).expect("it compiles"));
        });
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{n:>7}  {:>6}  {:>8.1}  {:>8.1}  {:>8.1}  {:>8.1}  {:>10.1}",
            yaml.len() / 1024,
            ms(load),
            ms(read),
            ms(decode),
            ms(compile),
            ms(typed)
        );
    }
    println!(
        "\n{:>7}  {:>9}  {:>20}",
        "steps", "problems", "report (best)"
    );
    for n in [1_000, 10_000] {
        // Every step needs a step that does not exist: one problem per step, each placed on
        // its line with a suggestion.
        let mut yaml = String::from("name: big\nsteps:\n");
        for i in 0..n {
            yaml.push_str(&format!("  - id: s{i}\n    op: noop\n    needs: [t{i}]\n"));
        }
        let mut found = 0;
        let report = best_of(3, || {
            found = Plan::load("bench.yaml", &yaml, None)
                .expect_err("every step is wrong")
                .problems
                .len();
        });
        println!(
            "{n:>7}  {found:>9}  {:>18.1}ms",
            report.as_secs_f64() * 1000.0
        );
    }
}

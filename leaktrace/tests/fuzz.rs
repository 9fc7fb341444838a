//! The suite's short fuzz run: every target replays its committed corpus
//! (`tests/fuzz_corpus/TARGET/`, with the crashes found so far), then
//! runs a few thousand inputs mutated from it (`leaktrace::fuzz::mutate`,
//! seeded: the same inputs each run). No input may panic, and none may
//! take long. `LEAKTRACE_FUZZ_RUNS` sets the number of mutated inputs;
//! the long, coverage-guided campaign is `cargo xtask fuzz`.
use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
    time::{Duration, Instant},
};

use leaktrace::fuzz::{
    Target,
    mutate::{Rng, mutate},
};

/// Mutated inputs per target when `LEAKTRACE_FUZZ_RUNS` is not set.
const DEFAULT_RUNS: usize = 3000;
/// Longest any one input may take (a debug build, on a shared machine:
/// generous; the hangs this guards against take forever).
const SLOWEST_ALLOWED: Duration = Duration::from_secs(5);

fn corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut inputs = Vec::new();
    for dir in target.corpus_dirs() {
        let entries = fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("reading the {dir} corpus: {e}"));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                inputs.push((path.display().to_string(), fs::read(&path).unwrap()));
            }
        }
    }
    inputs.sort();
    inputs
}

/// Runs one input; on a panic or a hang, fails naming it and writing it
/// to the target dir (to add to the corpus once fixed).
fn run_one(target: Target, name: &str, input: &[u8], slowest: &mut Duration) {
    let started = Instant::now();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    let took = started.elapsed();
    *slowest = (*slowest).max(took);
    if outcome.is_err() || took > SLOWEST_ALLOWED {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        fs::create_dir_all(&dir).unwrap();
        let saved = dir.join(format!("{}-{}", target.name(), name.replace('/', "_")));
        fs::write(&saved, input).unwrap();
        panic!(
            "{}: input {name} {} (took {took:?}); saved as {}",
            target.name(),
            if outcome.is_err() { "panicked" } else { "hung" },
            saved.display()
        );
    }
}

fn short_run(target: Target) {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "{}: empty corpus", target.name());
    let runs = std::env::var("LEAKTRACE_FUZZ_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for (name, input) in &seeds {
        run_one(target, name, input, &mut slowest);
    }
    let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, input)| input).collect();
    let mut rng = Rng::new(target.name().bytes().fold(0x1ea7_7ace, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    }));
    for i in 0..runs {
        let base = &inputs[rng.below(inputs.len())];
        let input = mutate(base, &inputs, &mut rng);
        run_one(target, &format!("mutation-{i}"), &input, &mut slowest);
    }
    eprintln!(
        "{}: {} corpus inputs and {runs} mutations in {:?}, slowest {slowest:?}",
        target.name(),
        inputs.len(),
        started.elapsed()
    );
}

/// One test a target, from a table of (test, target): they run in
/// parallel and a failure names its target; and a target added to
/// `Target::ALL` without its row here fails `every_target_is_fuzzed`.
macro_rules! fuzz_tests {
    ($($test:ident => $target:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                short_run(Target::$target);
            }
        )*

        #[test]
        fn every_target_is_fuzzed() {
            assert_eq!(
                &[$(Target::$target),*][..],
                &Target::ALL[..],
                "tests/fuzz.rs: one row a target of Target::ALL, in its order"
            );
        }
    };
}

fuzz_tests! {
    fuzz_elf => Elf,
    fuzz_eh_frame => EhFrame,
    fuzz_placement => Placement,
    fuzz_diff_json => DiffJson,
    fuzz_diff_pprof => DiffPprof,
    fuzz_http => Http,
}

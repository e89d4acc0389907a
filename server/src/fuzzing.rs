//! Test-only support for fuzzing what decodes bytes from the network (peer frames, JSON
//! gateway bodies, snapshot files): proptest draws an input from the target's corpus and
//! mutates it (bit flips, byte changes, insertions, deletions, splices, truncation), and
//! proptest shrinks any failure to a small input and prints it.
//!
//! The corpus of a target is its built-in seeds plus every file in
//! `server/fuzz/corpus/<target>/`; drop a failing input there to keep it forever. The test
//! command runs `STRATA_FUZZ_CASES` cases per target (default 5,000, about 2 s); a longer
//! hunt is the same test with a larger number, e.g.
//! `STRATA_FUZZ_CASES=200000 cargo test -p strata-server --lib fuzz`.

use proptest::prelude::*;

/// Cases per fuzz target in one run.
pub fn cases() -> u32 {
    std::env::var("STRATA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// The built-in seeds plus the files of `server/fuzz/corpus/<target>/`.
/// `STRATA_FUZZ_WRITE_CORPUS=1` writes the built-in seeds there (`seed-N`) first.
pub fn corpus(target: &str, mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    if std::env::var_os("STRATA_FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, seed) in seeds.drain(..).enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write seed");
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            seeds.push(bytes);
        }
    }
    assert!(!seeds.is_empty(), "fuzz target {target} has no seeds");
    seeds
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Splice { at: usize, from: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..32).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, from)| Mutation::Splice { at, from }),
    ]
}

fn apply(mut input: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = input.len();
    let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
    match m {
        Mutation::Flip { at, bit } if n > 0 => input[at % n] ^= 1 << bit,
        Mutation::Set { at, byte } if n > 0 => input[at % n] = *byte,
        Mutation::Insert { at, bytes } => {
            let at = pos(*at);
            input.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete { at, len } if n > 0 => {
            let at = at % n;
            input.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => input.truncate(pos(*at)),
        Mutation::Splice { at, from } if n > 0 => {
            // Repeat a slice of the input elsewhere: duplicated frames and fields.
            let from = from % n;
            let chunk = input[from..(from + 32).min(n)].to_vec();
            let at = pos(*at);
            input.splice(at..at, chunk);
        }
        _ => {}
    }
    input
}

/// Inputs for a target: a corpus entry with up to 8 mutations, or plain random bytes.
pub fn inputs(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(corpus),
        proptest::collection::vec(mutation(), 0..8),
    )
        .prop_map(|(seed, ms)| ms.iter().fold(seed, apply));
    prop_oneof![
        8 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// proptest's configuration for a fuzz target: [`cases`] cases.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

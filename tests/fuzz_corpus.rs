//! The cargo-fuzz targets' committed corpus (`fuzz/corpus/<target>/`), replayed through the
//! same target bodies (`flare::fuzzing`) as ordinary tests: no instrumentation and no nightly
//! flags, so CI runs every input, including each crash found so far (`fuzz/regressions/`),
//! on every change. Real fuzzing: `scripts/fuzz.sh` (fuzz/README.md).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let data = std::fs::read(&p).unwrap();
            // A failing input names itself before the target's own panic message.
            eprintln!("{target}: {}", p.display());
            run(&data);
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no corpus for {target}");
    eprintln!("{target}: {inputs} inputs replayed");
}

#[test]
fn request_corpus() {
    replay("request", flare::fuzzing::request::fuzz);
}

#[test]
fn template_corpus() {
    replay("template", flare::fuzzing::template::fuzz);
}

#[test]
fn detokenize_corpus() {
    replay("detokenize", flare::fuzzing::detokenize::fuzz);
}

//! Every architecture works through the CLI on the tiny fixtures: generation with blocks skipped,
//! perplexity of a masked model, and pruning with the model saved and run again.
use std::path::PathBuf;
use std::process::Command;

fn evop(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_evop")).args(args).env("RUST_BACKTRACE", "0").output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "evop {args:?} failed:\n{text}");
    text
}

#[test]
fn llama_mistral_and_opt_generate_evaluate_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let body: Vec<String> = (0..30).map(|p| (0..20).map(|i| format!("w{}", 4 + (p * 11 + i * 5) % 120)).collect::<Vec<_>>().join(" ")).collect();
    std::fs::write(&text, body.join("\n\n")).unwrap();
    for name in ["llama", "llama_tied", "mistral", "opt_pre", "opt_post", "opt_proj"] {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name);
        let m = model.to_str().unwrap();
        let g = evop(&["generate", "--model", m, "--prompt", "w5 w9 w17", "--max-new-tokens", "4", "--skip", "1"]);
        assert!(g.contains("removed [1] of 4"), "{g}");
        let e = evop(&["eval", "--model", m, "--text", text.to_str().unwrap(), "--seqlen", "16", "--windows", "4", "--skip", "2"]);
        assert!(e.contains("perplexity"), "{e}");
        let out = dir.path().join(format!("out-{name}"));
        evop(&["prune", "--model", m, "--corpus", text.to_str().unwrap(), "--calib", "random", "--seqlen", "8",
            "--calib-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2", "--remove", "1", "--population", "4",
            "--generations", "2", "--seed-with", "none", "--out", out.to_str().unwrap()]);
        let saved = out.join("model");
        let g = evop(&["generate", "--model", saved.to_str().unwrap(), "--prompt", "w5 w9", "--max-new-tokens", "2"]);
        assert!(g.contains("of 3"), "the saved model should have 3 blocks: {g}");
    }
}

//! Bad input through the `evop` command line: every case exits non-zero with a message that names
//! the file, field or value, never panics, and leaves no partial output. docs/robustness.md lists
//! the messages.
use std::path::{Path, PathBuf};
use std::process::Command;

fn evop(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evop")).args(args).output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "evop {args:?} panicked:\n{text}");
    (out.status.success(), text)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name)
}

fn expect_error(args: &[&str], needle: &str) {
    let (ok, text) = evop(args);
    assert!(!ok, "evop {args:?} succeeded:\n{text}");
    assert!(text.contains(needle), "evop {args:?}: expected `{needle}` in:\n{text}");
}

#[test]
fn missing_and_corrupt_models() {
    expect_error(&["generate", "--model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("llama").join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let p = dir.path().to_str().unwrap();
    expect_error(&["generate", "--model", p], "safetensors");
    let gguf = dir.path().join("bad.gguf");
    std::fs::write(&gguf, b"GGUF\x03\x00\x00\x00truncated").unwrap();
    expect_error(&["generate", "--model", gguf.to_str().unwrap()], "GGUF");
}

#[test]
fn config_missing_a_field_and_unknown_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("opt_pre").join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("ffn_dim");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(fixture("opt_pre").join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    expect_error(&["generate", "--model", dir.path().to_str().unwrap()], "ffn_dim");
    cfg["model_type"] = "bloom".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    expect_error(&["generate", "--model", dir.path().to_str().unwrap()], "unsupported architecture `bloom`");
}

#[test]
fn bad_masks_devices_and_settings() {
    let llama = fixture("llama");
    let m = llama.to_str().unwrap();
    expect_error(&["generate", "--model", m, "--skip", "7"], "block 7 is out of range");
    expect_error(&["generate", "--model", m, "--device", "tpu"], "unknown device kind `tpu`");
    #[cfg(not(feature = "cuda"))]
    expect_error(&["generate", "--model", m, "--device", "cuda"], "--features cuda");
    expect_error(&["generate", "--model", m, "--dtype", "f8"], "unknown dtype `f8`");
    expect_error(&["prune", "--objective", "median"], "unknown objective `median`");
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("run");
    expect_error(&["prune", "--screen-tokens", "0", "--out", o.to_str().unwrap()], "--screen-tokens must be at least 1");
    expect_error(&["prune", "--screen-tokens", "128", "--out", o.to_str().unwrap()], "--screen-tokens 128 must be below --seqlen 128");
    assert!(!o.exists(), "a refused run wrote {}", o.display());
}

#[test]
fn prune_refuses_bad_n_unknown_methods_and_existing_output() {
    let out = tempfile::tempdir().unwrap();
    let corpus = out.path().join("tiny.txt");
    // A corpus with enough text for windows of 8 tokens.
    let text: String = (0..40)
        .map(|p| (0..24).map(|i| format!("w{}", 4 + (p * 7 + i * 3) % 100)).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n");
    std::fs::write(&corpus, &text).unwrap();
    let m = fixture("llama");
    let base = |extra: &[&str]| {
        let mut v = vec!["prune", "--model", m.to_str().unwrap(), "--corpus", corpus.to_str().unwrap(),
            "--seqlen", "8", "--calib-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2", "--no-save"];
        v.extend_from_slice(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], dir: &Path| {
        let mut a = base(extra);
        a.push("--out".into());
        a.push(dir.to_str().unwrap().into());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        evop(&refs)
    };
    let (ok, text) = run(&["--remove", "0", "--calib", "random"], &out.path().join("a"));
    assert!(!ok && text.contains("--remove 0"), "{text}");
    let (ok, text) = run(&["--remove", "4", "--calib", "random"], &out.path().join("b"));
    assert!(!ok && text.contains("--remove 4"), "{text}");
    let (ok, text) = run(&["--remove", "1", "--calib", "random", "--method", "magic", "--compare", "none"], &out.path().join("c"));
    assert!(!ok && text.contains("magic"), "{text}");
    let (ok, text) = run(&["--remove", "1", "--calib", "ccds", "--clusters", "500", "--compare", "none"], &out.path().join("d"));
    assert!(!ok && text.to_lowercase().contains("cluster"), "{text}");
    // A real run on the tiny model works.
    let (ok, text) = run(&["--remove", "1", "--calib", "random", "--compare", "sleb", "--population", "4", "--generations", "2"], &out.path().join("e"));
    assert!(ok, "{text}");
    // An existing pruned model in --out is never overwritten.
    let existing = out.path().join("f");
    std::fs::create_dir_all(existing.join("model")).unwrap();
    std::fs::write(existing.join("model").join("keep.txt"), b"user data").unwrap();
    let mut a = base(&["--remove", "1", "--calib", "random"]);
    a.retain(|s| s != "--no-save");
    a.extend(["--out".to_string(), existing.to_str().unwrap().to_string()]);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, text) = evop(&refs);
    assert!(!ok && text.contains("already holds a model"), "{text}");
    assert_eq!(std::fs::read(existing.join("model").join("keep.txt")).unwrap(), b"user data");
}

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

/// `evop ARGS` with the asset cache in `cache` (left empty when nothing is fetched).
fn evop_in(cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evop")).args(args).env("EVOP_CACHE_DIR", cache).env("RUST_BACKTRACE", "0").output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "evop {args:?} panicked:\n{text}");
    (out.status.success(), text)
}

#[test]
fn settings_are_checked_before_anything_is_fetched_loaded_or_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    // A model that does not exist: each setting's error comes first, so nothing was loaded.
    let nowhere = "/nonexistent/model.gguf";
    let methods = "known: evop, sleb, shortgpt, ppl, angular, last-n, random, exhaustive";
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["eval", "--model", nowhere, "--tasks", "science,nosuchtask"], vec!["unknown task `nosuchtask`", "known: science, winogrande, step_inference"]),
        (vec!["prune", "--model", nowhere, "--method", "nosuch", "--out", o], vec!["unknown --method `nosuch`", methods]),
        (vec!["prune", "--model", nowhere, "--compare", "nosuch", "--out", o], vec!["unknown --compare `nosuch`", methods, "sleb@time, none"]),
        (vec!["compare", "--model", nowhere, "--methods", "evop,nosuch", "--out", o], vec!["unknown --methods `nosuch`", methods]),
        (vec!["prune", "--model", nowhere, "--seed-with", "evop", "--out", o], vec!["--seed-with `evop`", "unknown pruning method"]),
        (vec!["prune", "--model", nowhere, "--seqlen", "1", "--out", o], vec!["--seqlen 1: a window needs at least 2 tokens"]),
        (vec!["prune", "--model", nowhere, "--eval-seqlen", "0", "--out", o], vec!["--eval-seqlen 0: a window needs at least 2 tokens"]),
        (vec!["prune", "--model", nowhere, "--calib-windows", "0", "--out", o], vec!["--calib-windows 0: at least one calibration window"]),
        (vec!["prune", "--model", nowhere, "--population", "1", "--out", o], vec!["--population 1: the ga strategy needs at least 2"]),
        (vec!["prune", "--model", nowhere, "--pool", "8", "--out", o], vec!["--pool 8: the CCDS pool must hold at least the --calib-windows 16 windows"]),
        (vec!["prune", "--model", nowhere, "--clusters", "0", "--out", o], vec!["--clusters 0: at least one cluster"]),
        (vec!["prune", "--model", nowhere, "--remove", "0", "--out", o], vec!["--remove 0: must be at least 1"]),
        (vec!["prune", "--model", nowhere, "--sparsity", "1.5", "--out", o], vec!["--sparsity 1.5: must be between 0 and 1"]),
        (vec!["prune", "--model", nowhere, "--corpus", "/nonexistent/text.txt", "--out", o], vec!["--corpus /nonexistent/text.txt"]),
        (vec!["prune", "--model", nowhere, "--json", "/nonexistent/dir/report.json", "--out", o], vec!["--json /nonexistent/dir/report.json: the directory /nonexistent/dir does not exist"]),
        (vec!["compare", "--model", nowhere, "--remove", "3,0", "--out", o], vec!["--remove 0: must be at least 1"]),
        (vec!["prune", "--model", nowhere, "--heal-corpus-share", "2", "--out", o], vec!["--heal-corpus-share 2: expected a number between 0 and 1, or `pooled`"]),
        (vec!["heal", "--model", nowhere, "--skip", "3", "--heal-corpus-share", "half", "--out", o], vec!["--heal-corpus-share half"]),
        (vec!["prune", "--model", nowhere, "--heal-windows", "0", "--out", o], vec!["--heal-windows 0: expected a positive number of windows or `auto`"]),
        (vec!["heal", "--model", nowhere, "--skip", "3", "--heal-windows", "many", "--out", o], vec!["--heal-windows many"]),
        (vec!["eval", "--model", nowhere, "--seqlen", "1"], vec!["--seqlen 1: a window needs at least 2 tokens"]),
        (vec!["eval", "--model", nowhere, "--text", "/nonexistent/text.txt"], vec!["--text /nonexistent/text.txt"]),
        (vec!["eval", "--model", nowhere, "--json", "/nonexistent/dir/eval.json"], vec!["the directory /nonexistent/dir does not exist"]),
        (vec!["eval", "--model", nowhere, "--no-ppl"], vec!["--no-ppl and no --tasks: nothing to evaluate"]),
        (vec!["generate", "--model", nowhere, "--temperature=-1"], vec!["--temperature -1: must be 0 (greedy) or positive"]),
        (vec!["generate", "--model", nowhere, "--top-p", "0"], vec!["--top-p 0: must be in (0, 1]"]),
        (vec!["generate", "--model", nowhere, "--prompt", ""], vec!["the prompt is empty"]),
    ];
    for (args, needles) in &cases {
        let (ok, text) = evop_in(&cache, args);
        assert!(!ok, "evop {args:?} succeeded:\n{text}");
        for n in needles {
            assert!(text.contains(n), "evop {args:?}: expected `{n}` in:\n{text}");
        }
        assert!(!text.contains(nowhere), "evop {args:?} looked at the model first:\n{text}");
        assert!(!out.exists() && !cache.exists(), "evop {args:?} wrote or fetched something");
    }
    // An existing GGUF output, or a non-empty output folder, is refused before the model is read.
    std::fs::create_dir_all(tmp.path().join("full")).unwrap();
    std::fs::write(tmp.path().join("full/keep.txt"), b"user data").unwrap();
    std::fs::write(tmp.path().join("old.gguf"), b"user data").unwrap();
    for (args, needle) in [
        (vec!["apply", "--model", nowhere, "--skip", "1", "--out", tmp.path().join("full").to_str().unwrap()], "exists and is not an empty directory"),
        (vec!["apply", "--model", nowhere, "--skip", "1", "--out", tmp.path().join("old.gguf").to_str().unwrap()], "the file exists; refusing to overwrite it"),
        (vec!["prune", "--model", nowhere, "--gguf", tmp.path().join("old.gguf").to_str().unwrap(), "--out", o], "the file exists; refusing to overwrite it"),
    ] {
        let (ok, text) = evop_in(&cache, &args);
        assert!(!ok && text.contains(needle) && !text.contains(nowhere), "evop {args:?}:\n{text}");
    }
    assert_eq!(std::fs::read(tmp.path().join("old.gguf")).unwrap(), b"user data");
}

#[test]
fn lengths_and_blocks_are_checked_against_the_config_before_any_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let corpus = tmp.path().join("corpus.txt");
    let text: Vec<String> = (0..400).map(|p| (0..60).map(|i| format!("w{}", 4 + (p * 7 + i * 3) % 100)).collect::<Vec<_>>().join(" ")).collect();
    std::fs::write(&corpus, text.join("\n\n")).unwrap();
    let llama = fixture("llama");
    let (m, c, o) = (llama.to_str().unwrap(), corpus.to_str().unwrap(), out.to_str().unwrap());
    let config = llama.join("config.json").display().to_string();
    let positions = format!("exceeds the model's 128 positions (max_position_embeddings of {config})");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["prune", "--model", m, "--corpus", c, "--calib", "random", "--seqlen", "200", "--out", o], format!("--seqlen 200 {positions}")),
        (vec!["prune", "--model", m, "--corpus", c, "--calib", "random", "--seqlen", "8", "--eval-seqlen", "129", "--out", o], format!("--eval-seqlen 129 {positions}")),
        (vec!["prune", "--model", m, "--corpus", c, "--calib", "random", "--seqlen", "8", "--eval-seqlen", "8", "--remove", "4", "--out", o], "--remove 4: must be between 1 and 3 for a model of 4 blocks".into()),
        (vec!["prune", "--model", m, "--corpus", c, "--seqlen", "8", "--eval-seqlen", "8", "--embedder", "hidden:5", "--out", o], "--embedder hidden:5: the model has block boundaries 0..=4".into()),
        (vec!["compare", "--model", m, "--corpus", c, "--calib", "random", "--seqlen", "8", "--eval-seqlen", "8", "--remove", "1,4", "--out", o], "--remove 4: must be between 1 and 3 for a model of 4 blocks".into()),
        (vec!["eval", "--model", m, "--text", c, "--seqlen", "1000"], format!("--seqlen 1000 {positions}")),
        (vec!["eval", "--model", m, "--text", c, "--seqlen", "8", "--skip", "4"], "block 4 is out of range for a model of 4 blocks".into()),
        (vec!["generate", "--model", m, "--prompt", "w5 w6", "--max-new-tokens", "500"], "--max-new-tokens 500: with the prompt's".into()),
        (vec!["apply", "--model", m, "--skip", "4", "--out", o], "block 4 is out of range for a model of 4 blocks".into()),
    ];
    for (args, needle) in &cases {
        let (ok, text) = evop_in(&cache, args);
        assert!(!ok, "evop {args:?} succeeded:\n{text}");
        assert!(text.contains(needle.as_str()), "evop {args:?}: expected `{needle}` in:\n{text}");
        assert!(!out.exists() && !cache.exists(), "evop {args:?} wrote or fetched something");
    }
}

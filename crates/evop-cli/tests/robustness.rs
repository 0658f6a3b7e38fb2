//! Hostile output locations and interruptions through the `evop` command line: an output
//! directory that cannot be written, a full output directory, and an EvoP search killed with
//! SIGKILL and resumed. Every failure exits non-zero with a message naming the path, never panics,
//! leaves what the user already had untouched and leaves no partial or temporary file behind.
//! docs/robustness.md lists the messages.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn evop() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evop"));
    c.env("RUST_BACKTRACE", "0");
    c
}

/// Runs a command to completion: (success, stdout + stderr); a panic fails the test.
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "{cmd:?} panicked:\n{text}");
    assert!(out.status.signal().is_none(), "{cmd:?} was killed by signal {:?}:\n{text}", out.status.signal());
    (out.status.success(), text)
}

fn expect_error(cmd: &mut Command, needles: &[&str]) -> String {
    let (ok, text) = output(cmd);
    assert!(!ok, "{cmd:?} succeeded:\n{text}");
    for n in needles {
        assert!(text.contains(n), "{cmd:?}: expected `{n}` in:\n{text}");
    }
    text
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name)
}

/// A plain-text corpus of `docs` paragraphs of 24 words from the fixtures' vocabulary.
fn corpus(dir: &Path, docs: usize) -> PathBuf {
    let path = dir.join("corpus.txt");
    let text: Vec<String> = (0..docs)
        .map(|p| (0..24).map(|i| format!("w{}", 4 + (p * 7 + i * 3 + p * i) % 100)).collect::<Vec<_>>().join(" "))
        .collect();
    std::fs::write(&path, text.join("\n\n")).unwrap();
    path
}

/// `evop prune` on the tiny Llama fixture: a fast EvoP search that checkpoints, plots, reports and
/// saves the pruned model.
fn tiny_prune(corpus: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = evop();
    c.args(["prune", "--model", fixture("llama").to_str().unwrap(), "--corpus", corpus.to_str().unwrap()])
        .args(["--calib", "random", "--seqlen", "8", "--calib-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2"])
        .args(["--remove", "1", "--population", "4", "--compare", "none", "--out", out.to_str().unwrap()])
        .args(extra);
    if !extra.contains(&"--generations") {
        c.args(["--generations", "2"]);
    }
    c
}

/// Every file under `dir` (relative path -> bytes); folders end with `/`.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                into.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, into);
            } else {
                into.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut m);
    }
    m
}

/// Names of temporary files or folders (`.NAME.tmp...` or `NAME.tmp-PID`) left under `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().filter(|k| k.contains(".tmp")).collect()
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(".write-probe");
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A folder that cannot be written while this lives: mode 0555, and, where that is not enough
/// (root ignores permission bits), the immutable attribute (`chattr +i`, needs CAP_LINUX_IMMUTABLE
/// and a file system that supports it: ext2/3/4, xfs, btrfs).
struct ReadOnlyDir {
    path: PathBuf,
    immutable: bool,
}

impl ReadOnlyDir {
    fn new(path: &Path) -> Option<Self> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut guard = ReadOnlyDir { path: path.to_path_buf(), immutable: false };
        if writable(path) {
            guard.immutable = Command::new("chattr").arg("+i").arg(path).status().is_ok_and(|s| s.success());
        }
        (!writable(path)).then_some(guard)
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
        }
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn output_directory_that_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 40);

    // A regular file where the output directory (or one of its parents) should be: fails for
    // every user, root included.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"user notes").unwrap();
    let out = file.join("out");
    expect_error(&mut tiny_prune(&text, &out, &[]), &[&format!("creating {}", out.display()), "Not a directory"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"user notes");

    // An existing output directory that cannot be written, holding a file of the user's.
    let ro = tmp.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("notes.txt"), b"user notes").unwrap();
    let before = snapshot(&ro);
    match ReadOnlyDir::new(&ro) {
        Some(_guard) => {
            let msg = expect_error(&mut tiny_prune(&text, &ro, &[]), &[&ro.join("calibration.json").display().to_string()]);
            assert!(msg.contains("Permission denied") || msg.contains("Operation not permitted"), "{msg}");
            assert_eq!(snapshot(&ro), before, "the read-only directory changed");
        }
        None => eprintln!("skipped the read-only directory case: {} stays writable (no chattr +i here)", ro.display()),
    }

    // `evop compare --out` and `evop eval --json` into it: the same, for the other writers.
    if let Some(_guard) = ReadOnlyDir::new(&ro) {
        let mut compare = evop();
        compare
            .args(["compare", "--model", fixture("llama").to_str().unwrap(), "--corpus", text.to_str().unwrap(), "--calib", "random"])
            .args(["--seqlen", "8", "--calib-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2", "--remove", "1"])
            .args(["--methods", "sleb", "--out", ro.to_str().unwrap()]);
        expect_error(&mut compare, &[&ro.join("calibration.json").display().to_string()]);
        let target = ro.join("eval.json");
        let mut eval = evop();
        eval.args(["eval", "--model", fixture("llama").to_str().unwrap(), "--text", text.to_str().unwrap()])
            .args(["--seqlen", "8", "--windows", "2", "--json", target.to_str().unwrap()]);
        expect_error(&mut eval, &[&format!("writing {}", target.display())]);
        assert_eq!(snapshot(&ro), before, "the read-only directory changed");
    }

    // `--json` into a directory that cannot be written: the run's own output directory is
    // complete (report, pruned model) and the error names the path.
    let ro_json = tmp.path().join("read-only-json");
    std::fs::create_dir(&ro_json).unwrap();
    if let Some(_guard) = ReadOnlyDir::new(&ro_json) {
        let out = tmp.path().join("out-json");
        let target = ro_json.join("report.json");
        expect_error(&mut tiny_prune(&text, &out, &["--json", target.to_str().unwrap()]), &[&target.display().to_string()]);
        assert!(snapshot(&ro_json).is_empty(), "the read-only directory changed");
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["runs"][0]["removed"].as_array().map(Vec::len), Some(1));
        assert!(out.join("model").join("model.safetensors").exists(), "the pruned model should be saved before the extra report copy");
        assert_eq!(leftovers(&out), Vec::<String>::new());
    }
}

/// `evop prune` with every file it writes limited to `limit` bytes (RLIMIT_FSIZE, SIGXFSZ
/// ignored, so a write past the limit fails with EFBIG as on a full disk).
fn with_file_size_limit(cmd: &Command, limit: u64) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("lim=$1; shift; trap '' XFSZ; exec prlimit --fsize=$lim -- \"$@\"")
        .arg("sh")
        .arg(limit.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("RUST_BACKTRACE", "0");
    c
}

#[test]
fn full_output_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 40);
    // The limit itself works: a plain write past it fails.
    assert!(Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success()), "this test needs prlimit (util-linux)");
    let probe = tmp.path().join("probe");
    let st = with_file_size_limit(Command::new("sh").args(["-c", &format!("head -c 5000 /dev/zero > {}", probe.display())]), 1000)
        .status()
        .expect("run sh");
    assert!(!st.success() && std::fs::metadata(&probe).map_or(0, |m| m.len()) <= 1000);

    // Full before the first write (the calibration set, ~1.2 kB): an earlier run's calibration set
    // in the output directory is left as it was, and no temporary file stays.
    let out = tmp.path().join("a");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("calibration.json"), b"an earlier run's calibration set").unwrap();
    let before = snapshot(&out);
    expect_error(&mut with_file_size_limit(&tiny_prune(&text, &out, &[]), 1000), &[&out.join("calibration.json").display().to_string(), "File too large"]);
    assert_eq!(snapshot(&out), before);

    // `evop eval --json` over an earlier result, full: the earlier file is kept whole.
    let earlier = tmp.path().join("eval.json");
    std::fs::write(&earlier, b"{\"earlier\": true}").unwrap();
    let mut eval = evop();
    eval.args(["eval", "--model", fixture("llama").to_str().unwrap(), "--text", text.to_str().unwrap()])
        .args(["--seqlen", "8", "--windows", "2", "--json", earlier.to_str().unwrap()]);
    expect_error(&mut with_file_size_limit(&eval, 100), &[&format!("writing {}", earlier.display()), "File too large"]);
    assert_eq!(std::fs::read(&earlier).unwrap(), b"{\"earlier\": true}");
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());

    // Full during the search: the calibration set (~1.2 kB) fits, the checkpoint grows by ~0.5 kB
    // a generation and stops fitting after a few. The last complete checkpoint stays, no
    // temporary file does, and the run resumes from it once there is room.
    let out = tmp.path().join("cp");
    let search = ["--generations", "12", "--stalled", "0"];
    let checkpoint = out.join("checkpoint.json");
    expect_error(&mut with_file_size_limit(&tiny_prune(&text, &out, &search), 3000), &[&checkpoint.display().to_string(), "File too large"]);
    let cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert!(cp["generation"].as_u64().unwrap() < 12);
    assert_eq!(leftovers(&out), Vec::<String>::new());
    let (ok, log) = output(&mut tiny_prune(&text, &out, &[&search[..], &["--resume"]].concat()));
    assert!(ok, "{log}");

    // Full while writing the plots (the convergence PNG is ~180 kB): no truncated plot stays.
    let out = tmp.path().join("b");
    expect_error(&mut with_file_size_limit(&tiny_prune(&text, &out, &[]), 100_000), &["convergence-n1.png"]);
    assert!(!out.join("convergence-n1.png").exists(), "a truncated plot was left behind");
    assert!(!out.join("model").exists());
    assert_eq!(leftovers(&out), Vec::<String>::new());

    // Full while saving the pruned model (~590 kB of weights): no `model/` folder at all, no
    // temporary folder, and the report (written before) is complete.
    let out = tmp.path().join("c");
    expect_error(&mut with_file_size_limit(&tiny_prune(&text, &out, &[]), 300_000), &[&format!("saving the pruned model to {}", out.join("model").display()), "model.safetensors", "File too large"]);
    assert!(!out.join("model").exists(), "a partial model was left behind");
    assert_eq!(leftovers(&out), Vec::<String>::new());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["remove"], 1);
}

/// The Llama fixture deepened to `blocks` blocks: block `j` is fixture block `j % 4` with its
/// residual-branch outputs (o_proj, down_proj) scaled by a factor of its own, so every block differs.
fn deep_llama(dir: &Path, blocks: usize) -> PathBuf {
    use candle_core::{Device, Tensor};
    let src = fixture("llama");
    let weights = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    for (name, t) in &weights {
        match name.strip_prefix("model.layers.") {
            None => {
                out.insert(name.clone(), t.clone());
            }
            Some(rest) => {
                let (i, tail) = rest.split_once('.').unwrap();
                let i: usize = i.parse().unwrap();
                for j in (0..blocks).filter(|j| j % 4 == i) {
                    let scale = 0.4 + 0.15 * (j as f64 % 7.0) + 0.05 * j as f64;
                    let w = if tail.ends_with("o_proj.weight") || tail.ends_with("down_proj.weight") { (t * scale).unwrap() } else { t.clone() };
                    out.insert(format!("model.layers.{j}.{tail}"), w);
                }
            }
        }
    }
    let dst = dir.join("deep-llama");
    std::fs::create_dir_all(&dst).unwrap();
    candle_core::safetensors::save(&out, dst.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = blocks.into();
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dst.join("tokenizer.json")).unwrap();
    dst
}

/// The search's result in `<out>/report.json`: removed blocks and the generation reports.
fn search_result(out: &Path) -> (Vec<u64>, Vec<serde_json::Value>) {
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    let removed = run["removed"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    (removed, run["detail"]["history"].as_array().unwrap().clone())
}

/// Generation reports without their wall times.
fn without_times(history: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut h = history.to_vec();
    for g in &mut h {
        g.as_object_mut().unwrap().remove("elapsed_s");
    }
    h
}

#[test]
fn sigkill_and_resume_ends_on_the_same_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 120);
    let model = deep_llama(tmp.path(), 16);
    const GENERATIONS: u64 = 24;
    // `settings` replaces the defaults below (seed, calibration, population).
    let prune = |out: &Path, settings: &[(&str, &str)], extra: &[&str]| {
        let mut opts: Vec<(&str, &str)> =
            vec![("--seed", "7"), ("--calib-windows", "8"), ("--population", "8"), ("--seqlen", "64"), ("--calib", "random")];
        for (k, v) in settings {
            opts.iter_mut().find(|o| o.0 == *k).expect("a default to replace").1 = v;
        }
        let mut c = evop();
        c.args(["prune", "--model", model.to_str().unwrap(), "--corpus", text.to_str().unwrap(), "--method", "evop"])
            .args(["--eval-seqlen", "32", "--eval-windows", "2"])
            .args(["--remove", "5", "--generations", &GENERATIONS.to_string(), "--stalled", "0"])
            .args(["--batch-size", "8", "--compare", "none", "--no-save", "--out", out.to_str().unwrap()])
            .args(opts.iter().flat_map(|(k, v)| [*k, *v]))
            .args(extra);
        c
    };

    // The uninterrupted run.
    let whole = tmp.path().join("whole");
    let (ok, log) = output(&mut prune(&whole, &[], &[]));
    assert!(ok, "{log}");
    let (mask, history) = search_result(&whole);
    assert_eq!(history.len() as u64, GENERATIONS + 1, "the search should run every generation (generation 0 included)");

    // Starts `cmd` and kills it with SIGKILL as soon as `checkpoint` exists and records a
    // generation >= `at`; returns that generation and the checkpoint's generation reports.
    let kill_at = |mut cmd: Command, checkpoint: &Path, at: u64| -> (u64, Vec<serde_json::Value>) {
        let read = || -> Option<serde_json::Value> { serde_json::from_slice(&std::fs::read(checkpoint).ok()?).ok() };
        let generation = || read().and_then(|cp| cp["generation"].as_u64());
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let start = Instant::now();
        while generation().is_none_or(|g| g < at) {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before a checkpoint of generation {at} was seen");
            assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint of generation {at} after 300 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "the run finished before it could be killed: {status:?}");
        // The checkpoint on disk is complete (written to a temporary file, then renamed).
        let cp = read().expect("a readable checkpoint");
        let reached = cp["generation"].as_u64().unwrap();
        assert!(reached < GENERATIONS, "killed at generation {reached}, nothing left to resume");
        (reached, cp["history"].as_array().unwrap().clone())
    };

    // The same run killed as soon as its first checkpoint is on disk.
    let killed = tmp.path().join("killed");
    let checkpoint = killed.join("checkpoint.json");
    let (first, _) = kill_at(prune(&killed, &[], &[]), &checkpoint, 0);
    assert!(!killed.join("report.json").exists());

    // Resuming under other settings is refused, and the checkpoint is left as it was.
    let saved = std::fs::read(&checkpoint).unwrap();
    let calib = killed.join("calibration.json").display().to_string();
    expect_error(&mut prune(&killed, &[("--population", "6")], &["--resume"]), &[&format!("resuming the search from {}", checkpoint.display()), "checkpoint belongs to another run", "ga.population is 8 there but 6 here"]);
    expect_error(&mut prune(&killed, &[("--calib-windows", "6")], &["--resume"]), &[&calib, "--calib-windows 8", "--calib-windows 6"]);
    expect_error(&mut prune(&killed, &[("--seed", "8")], &["--resume"]), &[&calib, "--seed 7", "--seed 8"]);
    expect_error(&mut prune(&killed, &[("--seqlen", "32")], &["--resume"]), &[&calib, "--seqlen 64", "--seqlen 32"]);
    expect_error(&mut prune(&killed, &[("--calib", "ccds")], &["--resume"]), &[&calib, "--calib random", "--calib ccds"]);
    assert_eq!(std::fs::read(&checkpoint).unwrap(), saved);

    // Resumed, killed again a few generations later, resumed again: it ends where the
    // uninterrupted run ended, through the same generations.
    let (second, before_kill) = kill_at(prune(&killed, &[], &["--resume"]), &checkpoint, first + 3);
    eprintln!("killed at generation {first}, then at {second}, of {GENERATIONS}");
    let (ok, log) = output(&mut prune(&killed, &[], &["--resume"]));
    assert!(ok, "{log}");
    let (resumed_mask, resumed_history) = search_result(&killed);
    assert_eq!(resumed_mask, mask, "killed at generations {first} and {second}");
    assert_eq!(without_times(&resumed_history), without_times(&history), "killed at generations {first} and {second}");
    // It really continued from the checkpoint rather than starting again: the generations before
    // the kill are the checkpoint's own, wall times included.
    assert_eq!(resumed_history[..before_kill.len()], before_kill[..]);
}

/// `cmd` run under `umask`.
fn with_umask(cmd: &Command, umask: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask $1; shift; exec \"$@\"").arg("sh").arg(umask).arg(cmd.get_program()).args(cmd.get_args()).env("RUST_BACKTRACE", "0");
    c
}

/// Modes (permission bits) of every file and folder under `dir`, relative path -> mode.
fn modes(dir: &Path) -> BTreeMap<String, u32> {
    snapshot(dir)
        .into_keys()
        .map(|k| {
            let mode = std::fs::metadata(dir.join(k.trim_end_matches('/'))).unwrap().permissions().mode() & 0o777;
            (k, mode)
        })
        .collect()
}

#[test]
fn saved_files_get_the_mode_the_umask_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let text = corpus(tmp.path(), 40);
    for (umask, file_mode, dir_mode) in [("022", 0o644, 0o755), ("027", 0o640, 0o750)] {
        let out = tmp.path().join(format!("run-{umask}"));
        let json = tmp.path().join(format!("report-{umask}.json"));
        let (ok, log) = output(&mut with_umask(&tiny_prune(&text, &out, &["--json", json.to_str().unwrap()]), umask));
        assert!(ok, "{log}");
        let applied = tmp.path().join(format!("applied-{umask}"));
        let mut apply = evop();
        apply.args(["apply", "--model", fixture("llama").to_str().unwrap(), "--skip", "1", "--out", applied.to_str().unwrap()]);
        let (ok, log) = output(&mut with_umask(&apply, umask));
        assert!(ok, "{log}");
        let eval_json = tmp.path().join(format!("eval-{umask}.json"));
        let mut eval = evop();
        eval.args(["eval", "--model", fixture("llama").to_str().unwrap(), "--text", text.to_str().unwrap()])
            .args(["--seqlen", "8", "--windows", "2", "--json", eval_json.to_str().unwrap()]);
        let (ok, log) = output(&mut with_umask(&eval, umask));
        assert!(ok, "{log}");
        let mut all = modes(&out);
        assert!(all.contains_key("model/model.safetensors") && all.contains_key("report.json"), "{all:?}");
        all.extend(modes(&applied).into_iter().map(|(k, m)| (format!("applied/{k}"), m)));
        for f in [&json, &eval_json] {
            all.insert(f.display().to_string(), std::fs::metadata(f).unwrap().permissions().mode() & 0o777);
        }
        for (name, mode) in all {
            let want = if name.ends_with('/') { dir_mode } else { file_mode };
            assert_eq!(mode, want, "umask {umask}: {name} has mode {mode:o}, expected {want:o}");
        }
    }
}

//! The decision stage through `evop prune`: every searcher's answers scored on fresh windows that
//! no search read, the table and report.json say which won, and bad settings fail clearly.
use std::path::PathBuf;
use std::process::Command;

fn evop(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_evop")).args(args).env("RUST_BACKTRACE", "0").output().expect("run evop");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "evop {args:?} panicked:\n{text}");
    (out.status.success(), text)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures").join(name)
}

fn corpus(dir: &std::path::Path) -> PathBuf {
    let text = dir.join("text.txt");
    let body: Vec<String> = (0..80).map(|p| (0..24).map(|i| format!("w{}", 4 + (p * 11 + i * 5) % 120)).collect::<Vec<_>>().join(" ")).collect();
    std::fs::write(&text, body.join("\n\n")).unwrap();
    text
}

fn windows(path: &std::path::Path) -> Vec<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["windows"].as_array().unwrap().iter().map(|w| w["ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()).collect()
}

#[test]
fn prune_decides_among_every_searcher_on_fresh_windows() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(dir.path());
    let model = fixture("llama");
    let mut reports = Vec::new();
    for run in ["a", "b"] {
        let out = dir.path().join(format!("out-{run}"));
        let (ok, printed) = evop(&[
            "prune", "--model", model.to_str().unwrap(), "--corpus", text.to_str().unwrap(), "--calib", "random", "--seqlen", "8",
            "--calib-windows", "4", "--screen-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2", "--remove", "1",
            "--population", "4", "--generations", "2", "--decision-windows", "6", "--also", "shortgpt", "--heal", "none",
            "--portfolio-sleb-race", "1/1", "--no-save", "--out", out.to_str().unwrap(),
        ]);
        assert!(ok, "{printed}");
        assert!(printed.contains("| candidate | removed blocks | decision score | chosen |"), "{printed}");
        assert!(printed.contains("sleb at EvoP's time"), "{printed}");
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        let d = &report["decision"];
        let scores = d["scores"].as_array().unwrap();
        assert!(!scores.is_empty());
        // The answer is the candidate with the lowest decision score.
        let best = scores.iter().map(|c| c["score"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
        let chosen = &scores[d["chosen"].as_u64().unwrap() as usize];
        assert_eq!(chosen["score"].as_f64().unwrap(), best);
        assert_eq!(report["runs"][0]["removed"], chosen["removed"], "the default answer is the decision's choice");
        let sources: Vec<String> = scores.iter().flat_map(|c| c["sources"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string())).collect();
        assert!(sources.iter().any(|s| s.starts_with("evop finalist")), "{sources:?}");
        assert!(sources.iter().any(|s| s.starts_with("sleb (")), "{sources:?}");
        assert!(sources.iter().any(|s| s == "shortgpt"), "{sources:?}");
        // No decision window was read by the search.
        let searched = windows(&out.join("calibration.json"));
        let fresh = windows(&out.join("decision-windows.json"));
        assert_eq!(fresh.len(), 6);
        assert!(fresh.iter().all(|w| !searched.contains(w)), "a decision window is a calibration window");
        reports.push(report);
    }
    assert_eq!(reports[0]["decision"]["removed"], reports[1]["decision"]["removed"], "the same seed gives the same answer");
    assert_eq!(reports[0]["decision"]["scores"].as_array().unwrap().len(), reports[1]["decision"]["scores"].as_array().unwrap().len());
}

/// A corpus whose words follow a linear congruential sequence, so that no run of a few tokens
/// repeats by construction (unlike [`corpus`], whose paragraphs cycle).
fn varied_corpus(dir: &std::path::Path) -> PathBuf {
    let text = dir.join("varied.txt");
    let mut x: u64 = 12345;
    let body: Vec<String> = (0..80)
        .map(|_| {
            (0..24)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    format!("w{}", 4 + (x >> 33) % 120)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&text, body.join("\n\n")).unwrap();
    text
}

#[test]
fn longer_decision_windows_hold_no_token_run_a_search_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = varied_corpus(dir.path());
    let model = fixture("llama");
    let out = dir.path().join("out");
    let (ok, printed) = evop(&[
        "prune", "--model", model.to_str().unwrap(), "--corpus", text.to_str().unwrap(), "--calib", "random", "--seqlen", "8",
        "--calib-windows", "8", "--screen-windows", "2", "--eval-seqlen", "8", "--eval-windows", "2", "--remove", "1",
        "--population", "4", "--generations", "2", "--decision-windows", "40", "--decision-seqlen", "24", "--heal", "none",
        "--portfolio-sleb-windows", "3", "--no-save", "--out", out.to_str().unwrap(),
    ]);
    assert!(ok, "{printed}");
    let searched = windows(&out.join("calibration.json"));
    let fresh = windows(&out.join("decision-windows.json"));
    assert_eq!(fresh.len(), 40);
    assert!(fresh.iter().all(|w| w.len() == 24), "decision windows of --decision-seqlen tokens");
    for w in &fresh {
        for s in &searched {
            assert!(!w.windows(s.len()).any(|run| run == s.as_slice()), "decision window {w:?} holds calibration window {s:?}");
        }
    }
}

#[test]
fn bad_decision_settings_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(dir.path());
    let model = fixture("llama");
    let base = ["prune", "--model", model.to_str().unwrap(), "--corpus", text.to_str().unwrap(), "--no-save"];
    for (extra, needle) in [
        (vec!["--decision-loss", "mse"], "unknown --decision-loss `mse`"),
        (vec!["--time-budget=-3"], "--time-budget -3"),
        (vec!["--time-budget", "0"], "must be a positive number of seconds"),
        (vec!["--also", "evop"], "--also evop"),
        (vec!["--also", "nonsense"], "unknown --also `nonsense`"),
        (vec!["--method", "sleb", "--time-budget", "10"], "--time-budget applies to EvoP"),
        (vec!["--method", "sleb", "--budget", "5s"], "--budget in seconds applies to EvoP"),
        (vec!["--budget", "300s", "--time-budget", "10"], "both set a time budget"),
        (vec!["--budget", "fast"], "`fast`: expected a number of evaluations"),
        (vec!["--portfolio-sleb-race", "0/6"], "--portfolio-sleb-race `0/6`"),
        (vec!["--portfolio-sleb-race", "fast"], "--portfolio-sleb-race `fast`"),
        (vec!["--decision-seqlen", "1"], "--decision-seqlen 1"),
    ] {
        let out = dir.path().join("never");
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().copied());
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, printed) = evop(&args);
        assert!(!ok, "{args:?} succeeded:\n{printed}");
        assert!(printed.contains(needle), "{args:?}: expected `{needle}` in:\n{printed}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

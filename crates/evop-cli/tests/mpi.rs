//! `evop prune` across MPI ranks (feature `mpi`, Open MPI's `mpirun` on PATH): on a 16-block
//! random-weight Llama (written here from a seed, with the tiny fixture's tokenizer),
//! - 3 ranks end on the same mask, with the same per-generation history, as one process;
//! - a worker rank killed with SIGKILL mid-search ends the job; `--resume` on 2 ranks continues from
//!   the last checkpoint and ends on the uninterrupted run's mask and history.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

const MPIRUN: [&str; 2] = ["--oversubscribe", "--allow-run-as-root"];

/// A Llama of `blocks` blocks with the tiny fixture's tokenizer (vocabulary 128), hidden 64,
/// weights uniform in +-0.1 from SplitMix64(seed, tensor, index).
fn write_model(dir: &Path, blocks: usize, seed: u64) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evop-model/tests/fixtures/llama");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
    config["num_hidden_layers"] = blocks.into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let (h, f, v, kv) = (64usize, 160usize, 128usize, 32usize);
    let mut tensors = std::collections::HashMap::new();
    let mut k = 0u64;
    let mut add = |name: String, shape: &[usize], ones: bool| {
        k += 1;
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n as u64)
            .map(|i| if ones { 1.0 } else { (splitmix(seed ^ splitmix(k) ^ i) >> 40) as f32 / (1u64 << 24) as f32 * 0.2 - 0.1 })
            .collect();
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    };
    add("model.embed_tokens.weight".into(), &[v, h], false);
    for b in 0..blocks {
        let p = format!("model.layers.{b}");
        add(format!("{p}.self_attn.q_proj.weight"), &[h, h], false);
        add(format!("{p}.self_attn.k_proj.weight"), &[kv, h], false);
        add(format!("{p}.self_attn.v_proj.weight"), &[kv, h], false);
        add(format!("{p}.self_attn.o_proj.weight"), &[h, h], false);
        add(format!("{p}.mlp.gate_proj.weight"), &[f, h], false);
        add(format!("{p}.mlp.up_proj.weight"), &[f, h], false);
        add(format!("{p}.mlp.down_proj.weight"), &[h, f], false);
        add(format!("{p}.input_layernorm.weight"), &[h], true);
        add(format!("{p}.post_attention_layernorm.weight"), &[h], true);
    }
    add("model.norm.weight".into(), &[h], true);
    add("lm_head.weight".into(), &[v, h], false);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    text: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = root.join("model");
    write_model(&model, 16, 12);
    let text = root.join("text.txt");
    let body: Vec<String> = (0..40).map(|p| (0..24).map(|i| format!("w{}", 4 + (p * 13 + i * 7) % 120)).collect::<Vec<_>>().join(" ")).collect();
    std::fs::write(&text, body.join("\n\n")).unwrap();
    Fixture { _dir: dir, root, model, text }
}

fn prune_args(fx: &Fixture, out: &Path, generations: u64) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let mut a = vec![s("prune"), s("--model"), fx.model.display().to_string(), s("--corpus"), fx.text.display().to_string()];
    for (k, v) in [
        ("--calib", "random"),
        ("--seqlen", "16"),
        ("--calib-windows", "6"),
        ("--batch-size", "3"),
        ("--eval-seqlen", "16"),
        ("--eval-windows", "2"),
        ("--remove", "4"),
        ("--population", "8"),
        ("--stalled", "0"),
        ("--seed", "5"),
        ("--seed-with", "none"),
        ("--compare", "none"),
        ("--screen-windows", "0"),
    ] {
        a.extend([s(k), s(v)]);
    }
    a.extend([s("--generations"), generations.to_string(), s("--no-save"), s("--out"), out.display().to_string()]);
    a
}

fn check(out: Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

fn evop(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_evop"));
    c.args(args).env("RUST_BACKTRACE", "0");
    c
}

fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(MPIRUN).args(["-np", &ranks.to_string()]).arg(env!("CARGO_BIN_EXE_evop")).args(args).env("RUST_BACKTRACE", "0");
    c
}

/// The search's answer and its per-generation history without wall times.
fn outcome(out: &Path) -> (Vec<u64>, serde_json::Value, serde_json::Value) {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let run = &report["runs"][0];
    let removed = run["removed"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let mut history = run["detail"]["history"].clone();
    for g in history.as_array_mut().unwrap() {
        g.as_object_mut().unwrap().remove("elapsed_s");
    }
    (removed, history, run["detail"]["distributed"].clone())
}

#[test]
fn three_ranks_end_on_the_single_process_mask() {
    let fx = fixture();
    let (one, three) = (fx.root.join("one"), fx.root.join("three"));
    check(evop(&prune_args(&fx, &one, 5)).output().unwrap(), "one process");
    let text = check(mpirun(3, &prune_args(&fx, &three, 5)).output().expect("running mpirun (Open MPI installed?)"), "mpirun -np 3");
    assert!(text.contains("evop: 3 MPI ranks"), "{text}");
    let (a, ha, da) = outcome(&one);
    let (b, hb, db) = outcome(&three);
    assert_eq!(a, b, "same mask");
    assert_eq!(ha, hb, "same trajectory");
    assert!(da.is_null(), "a single process reports no distribution");
    assert_eq!(db["ranks"], 3);
    let masks: Vec<u64> = db["masks_by_rank"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(masks.iter().sum::<u64>(), hb.as_array().unwrap().last().unwrap()["evaluations"].as_u64().unwrap());
    assert!(masks[1] > 0 && masks[2] > 0, "both workers evaluated: {masks:?}");
    // Rank 0 alone writes and prints.
    assert_eq!(text.matches("| evop |").count(), 1, "{text}");
}

/// The rank-`rank` process among the children of `launcher` (mpirun forks the local ranks).
fn rank_pid(launcher: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid: Option<u32> = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(launcher) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn checkpoint_generation(path: &Path) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["generation"].as_u64()
}

fn wait_or_kill(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("mpirun did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_rank_ends_the_job_and_resume_finishes_on_the_same_mask() {
    const GENERATIONS: u64 = 40;
    let fx = fixture();
    let (whole, broken) = (fx.root.join("whole"), fx.root.join("broken"));
    check(evop(&prune_args(&fx, &whole, GENERATIONS)).output().unwrap(), "uninterrupted run");

    let child = mpirun(3, &prune_args(&fx, &broken, GENERATIONS)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("running mpirun");
    let launcher = child.id();
    let ck = broken.join("checkpoint.json");
    let t = Instant::now();
    let killed_at = loop {
        if let Some(g) = checkpoint_generation(&ck).filter(|&g| g >= 2) {
            let pid = rank_pid(launcher, 2).expect("rank 2 among mpirun's children");
            // SIGKILL: no handler, no clean-up, as a crashed node.
            let st = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            assert!(st.success());
            break g;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    let status = wait_or_kill(child, Duration::from_secs(60));
    assert!(!status.success(), "the job should end with an error when a rank dies");
    assert!(!broken.join("report.json").exists(), "the killed job must not have finished");
    let left = checkpoint_generation(&ck).expect("the checkpoint survives");
    assert!(left >= killed_at && left < GENERATIONS, "checkpoint at generation {left}, killed after {killed_at}");

    let mut resume = prune_args(&fx, &broken, GENERATIONS);
    resume.push("--resume".into());
    check(mpirun(2, &resume).output().unwrap(), "resume on 2 ranks");
    let (a, ha, _) = outcome(&whole);
    let (b, hb, db) = outcome(&broken);
    assert_eq!(a, b, "resumed run ends on the uninterrupted run's mask");
    assert_eq!(ha, hb, "and with its history");
    assert_eq!(db["ranks"], 2);
    println!("killed rank 2 after generation {killed_at}; resumed from generation {left} on 2 ranks; final mask {b:?}");
}

#[test]
fn bad_input_under_mpirun_ends_the_job_with_the_error() {
    let fx = fixture();
    // Output to a file and a bounded wait: a hang fails the test instead of stalling it.
    let log = fx.root.join("log.txt");
    let run = |args: Vec<String>| -> (bool, String) {
        let f = std::fs::File::create(&log).unwrap();
        let child = mpirun(2, &args).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        let status = wait_or_kill(child, Duration::from_secs(60));
        (status.success(), std::fs::read_to_string(&log).unwrap())
    };
    let mut baseline = prune_args(&fx, &fx.root.join("sleb"), 2);
    baseline.extend(["--method".into(), "sleb".into()]);
    let (ok, text) = run(baseline);
    assert!(!ok && text.contains("--method sleb: only the EvoP search runs across MPI ranks"), "{text}");

    let mut missing = prune_args(&fx, &fx.root.join("missing"), 2);
    let i = missing.iter().position(|a| a == "--model").unwrap();
    missing[i + 1] = fx.root.join("no-such-model").display().to_string();
    let (ok, text) = run(missing);
    assert!(!ok && text.contains("no-such-model"), "{text}");
}

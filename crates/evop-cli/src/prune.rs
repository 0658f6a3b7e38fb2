//! `evop prune`: choose blocks to remove with EvoP (default) or a baseline, compare with SLEB on
//! the same calibration set, evaluate on the evaluation split, save the pruned model, report and
//! plots.
//!
//! With no arguments: SmolLM2-135M (fetched if missing), 6 of 30 blocks, CCDS calibration of 16
//! windows x 128 tokens from the Wikipedia leads' calibration split, EvoP multi-fidelity (GA
//! screening on the first 4 windows, KL-to-dense loss, the best distinct masks of the final
//! population re-scored on all 16; the GA's size from `--preset`: `quick` on the CPU, `full` on a
//! GPU), SLEB on its own protocol inside the run (4 random windows, mean NLL; its answer seeds the
//! GA), then the decision stage (`evop::decision`): the GA's finalists, SLEB's answer and the greedy
//! seed scored by mean NLL on 16 fresh CCDS windows that no search read; the lowest is the answer.
//! Then SLEB given EvoP's wall time on its own protocol, perplexity on 24 windows x 256 tokens of
//! the evaluation split (each distinct mask evaluated once), healing (`--heal`).
use crate::experiment::{evaluate, ppl_candidates, sleb_candidates, ExperimentArgs, MethodRun, MethodRunner};
use anyhow::{bail, Context, Result};
use evop::heal::Healer;
use evop::model::BlockMask;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// Method: evop, sleb, shortgpt, ppl, angular, last-n, random, exhaustive.
    #[arg(long, default_value = "evop")]
    pub method: String,
    /// Blocks to remove.
    #[arg(long, conflicts_with = "sparsity")]
    pub remove: Option<usize>,
    /// Fraction of blocks to remove (ceil(sparsity * L)); default 0.2.
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Baselines to compare with (comma-separated; `none` for none): a baseline name runs on the
    /// same calibration set; `sleb@time` is SLEB given EvoP's wall time (on its own protocol:
    /// random windows, as many as it reads in EvoP's seconds, sized from the time of EvoP's greedy
    /// seed) and also shows SLEB's answer on EvoP's screening windows (EvoP's seed).
    #[arg(long, default_value = "sleb@time", value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Output directory: pruned model (`model/`), calibration set, report.json, plots, checkpoint.
    #[arg(long, default_value = "evop-out")]
    pub out: PathBuf,
    /// Continue an interrupted EvoP search from `<out>/checkpoint.json`.
    #[arg(long)]
    pub resume: bool,
    /// Write the report as JSON to this file too (it is always written to `<out>/report.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Do not save the pruned model.
    #[arg(long)]
    pub no_save: bool,
    /// Also write the pruned model as this GGUF file (GGUF models only): the kept blocks' tensors
    /// copied byte for byte in their quantisation, healed tensors re-quantised to their original
    /// type. Written even with --no-save; never overwrites.
    #[arg(long, value_name = "PATH")]
    pub gguf: Option<PathBuf>,
    #[command(flatten)]
    pub heal: crate::heal::HealArgs,
}

/// SLEB given the wall time of EvoP's run `evop` (on SLEB's protocol: random windows of the
/// same length), with the number of windows sized from SLEB's cost per window: measured by EvoP's
/// seed when that was SLEB (SLEB on `evop.seed_windows` windows), derived from it when it was the
/// one-shot ranking (whose evaluations are SLEB's first step: SLEB makes `sleb_candidates` /
/// `ppl_candidates` as many), else timed on one window. Also, for free, EvoP's seed itself (that
/// baseline's answer on EvoP's screening windows).
fn sleb_at_equal_time(
    args: &Args,
    setup: &crate::experiment::Setup,
    calib: &evop::data::CalibrationSet,
    evop: &MethodRun,
    n: usize,
    run_method: MethodRunner,
) -> Result<Vec<MethodRun>> {
    if args.method != "evop" {
        return Ok(Vec::new());
    }
    let lm = &setup.model.lm;
    let l = lm.num_blocks();
    let mut rows = Vec::new();
    if !evop.seed_removed.is_empty() {
        let mut seed = evop.clone();
        seed.method = format!("{} on EvoP's {} screening tokens (EvoP's seed)", evop.seed_method, evop.seed_windows * evop.seed_tokens);
        seed.removed = evop.seed_removed.clone();
        seed.search_seconds = evop.seed_seconds;
        seed.detail = serde_json::Value::Null;
        rows.push(seed);
    }
    let draw = |windows: usize| -> Result<evop::data::CalibrationSet> {
        let spec = evop::CalibrationSpec { windows, seqlen: args.exp.seqlen, sampler: evop::SamplerKind::Random };
        evop::build_calibration(&setup.model, &setup.split.calibration, &spec, args.exp.seed)
            .with_context(|| format!("drawing {windows} random windows for SLEB at EvoP's time"))
    };
    let seeded = evop.seed_seconds > 0.0 && evop.seed_windows > 0 && evop.seed_tokens > 0;
    // The seed's seconds per window, scaled to whole windows (a forward's time is close to linear
    // in the tokens at these lengths).
    let seed_per_window = evop.seed_seconds / evop.seed_windows as f64 * args.exp.seqlen as f64 / evop.seed_tokens.max(1) as f64;
    // SLEB inside EvoP's run (the decision stage's candidate) measured its own seconds per window.
    let inside = &evop.detail["portfolio_sleb"];
    if let (Some(removed), Some(w), Some(s)) = (inside["removed"].as_array(), inside["windows"].as_u64(), inside["seconds"].as_f64()) {
        let mut row = evop.clone();
        row.method = format!("sleb on {} random tokens (a candidate inside EvoP's run)", w as usize * args.exp.seqlen);
        row.removed = removed.iter().filter_map(|b| b.as_u64().map(|b| b as usize)).collect();
        row.search_seconds = s;
        row.detail = serde_json::Value::Null;
        rows.push(row);
    }
    // Raced, it scored `raced_share` of plain SLEB's candidate-windows: plain SLEB's pace is slower.
    let inside_per_window = match (inside["windows"].as_u64(), inside["seconds"].as_f64()) {
        (Some(w), Some(s)) if w > 0 && s > 0.0 => Some(s / w as f64 / inside["raced_share"].as_f64().filter(|x| *x > 0.0).unwrap_or(1.0)),
        _ => None,
    };
    let per_window = match evop.seed_method.as_str() {
        _ if inside_per_window.is_some() => inside_per_window.expect("checked"),
        "sleb" if seeded => seed_per_window,
        "ppl" if seeded => seed_per_window * sleb_candidates(l, n) / ppl_candidates(l),
        _ => {
            let probe = draw(1)?;
            let t = std::time::Instant::now();
            run_method(&args.exp, setup, &probe, "sleb", n, None, None, None)?;
            t.elapsed().as_secs_f64()
        }
    };
    let windows = ((evop.search_seconds / per_window).round() as usize).clamp(1, 4096);
    // The count follows measured seconds, so a slow machine may ask for more windows than a small
    // corpus holds: SLEB then reads the whole pool (the row's label gives its tokens).
    let random = match draw(windows) {
        Err(e) => match e.downcast_ref::<evop::EvopError>() {
            Some(evop::EvopError::Data(evop::data::DataError::NotEnoughWindows { available, .. })) if *available >= 1 => draw(*available)?,
            _ => return Err(e),
        },
        ok => ok?,
    };
    let mut equal = run_method(&args.exp, setup, &random, "sleb", n, None, None, None)?;
    equal.method = format!("sleb at EvoP's time ({} random tokens)", random.len() * args.exp.seqlen);
    rows.push(equal);
    // The table's calibration NLL is on EvoP's calibration set for every row.
    let windows = calib.token_windows();
    for r in &mut rows {
        r.calibration_nll = if r.removed == evop.removed {
            evop.calibration_nll
        } else {
            let mask = BlockMask::from_removed(l, &r.removed)?;
            evop::model::perplexity::perplexity(lm.as_ref(), &windows, &mask, args.exp.batch_size)?.mean_nll
        };
    }
    Ok(rows)
}

pub fn run(args: Args) -> Result<()> {
    run_with(args, crate::experiment::run_method)
}

/// [`run`] with the methods run by `run_method` (under mpirun/srun, `mpi::run_method` spreads the
/// EvoP search over the ranks).
/// The settings checked before anything is downloaded, loaded or written.
pub fn check_settings(args: &Args) -> Result<()> {
    crate::checks::experiment(&args.exp)?;
    args.heal.check()?;
    crate::checks::method("--method", &args.method, &[])?;
    for m in args.compare.iter().filter(|m| !matches!(m.as_str(), "none" | "sleb@time")) {
        crate::checks::method("--compare", m, &["sleb@time", "none"])?;
    }
    if args.remove == Some(0) {
        bail!("--remove 0: must be at least 1");
    }
    args.exp.decision_spec()?;
    args.exp.sleb_race()?;
    for m in args.exp.also.iter().filter(|m| m.as_str() != "none") {
        crate::checks::method("--also", m, &["none"])?;
        if m == "evop" {
            bail!("--also evop: EvoP's finalists are candidates already; name baselines");
        }
    }
    if args.exp.time_budget_s().is_some() && args.method != "evop" {
        let flag = if matches!(args.exp.budget, Some(crate::experiment::Budget::Seconds(_))) { "--budget in seconds" } else { "--time-budget" };
        bail!("{flag} applies to EvoP (--method evop), not to --method {}", args.method);
    }
    if let Some(s) = args.sparsity.filter(|s| !(*s > 0.0 && *s < 1.0)) {
        bail!("--sparsity {s}: must be between 0 and 1 (exclusive)");
    }
    if let Some(p) = &args.json {
        crate::checks::output_file("--json", p)?;
    }
    if let Some(p) = &args.gguf {
        crate::apply::check_new_file("--gguf", p)?;
    }
    Ok(())
}

pub fn run_with(args: Args, run_method: MethodRunner) -> Result<()> {
    // Settings errors before anything is downloaded, loaded or written.
    check_settings(&args)?;
    let gguf_source = args.gguf.as_deref().map(|out| crate::apply::check_gguf_output(args.exp.model.model.as_deref(), out, "--gguf")).transpose()?;
    let model_dir = args.out.join("model");
    if !args.no_save && model_dir.exists() && std::fs::read_dir(&model_dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already holds a model; choose another --out, remove it, or pass --no-save", model_dir.display());
    }
    // Settings against the model's shape, from its configuration alone (no weights loaded yet).
    let model_path = crate::common::resolve_model_path(args.exp.model.model.as_deref())?;
    if let Some(shape) = crate::checks::peek_shape(&model_path) {
        crate::checks::experiment_shape(&args.exp, &shape)?;
        if let Some(n) = args.remove {
            crate::checks::removals(&shape, "--remove", &[n])?;
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let setup = args.exp.setup()?;
    crate::checks::experiment_shape(&args.exp, &crate::checks::loaded_shape(&setup.model))?;
    let l = setup.model.lm.num_blocks();
    let n = match (args.remove, args.sparsity) {
        (Some(n), _) => n,
        (None, s) => evop::baselines::blocks_for_sparsity(s.unwrap_or(0.2), l)?,
    };
    if n == 0 || n >= l {
        bail!("--remove {n}: must be between 1 and {} for a model of {l} blocks", l - 1);
    }

    // The calibration set: reused on --resume so the resumed search sees the same data.
    let calib_path = args.out.join("calibration.json");
    let calib = if args.resume && calib_path.exists() {
        let saved = evop::data::CalibrationSet::load(&calib_path)?;
        crate::common::check_saved_calibration(&calib_path, &saved, &args.exp.calibration_spec()?, args.exp.seed)?;
        saved
    } else {
        let s = crate::progress::spinner("building the calibration set");
        let c = evop::build_calibration(&setup.model, &setup.split.calibration, &args.exp.calibration_spec()?, args.exp.seed)?;
        s.finish_and_clear();
        c.save(&calib_path)?;
        c
    };

    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping after the current generation (Ctrl-C again to abort)");
        });
    }
    let checkpoint = Some((args.out.join("checkpoint.json"), args.resume));
    let mut runs: Vec<MethodRun> = Vec::new();
    let main = run_method(&args.exp, &setup, &calib, &args.method, n, checkpoint, Some(interrupt.clone()), Some(&args.out))
        .map_err(|e| if args.resume { e.context(format!("resuming the search from {}", args.out.join("checkpoint.json").display())) } else { e })?;
    if interrupt.load(Ordering::SeqCst) {
        eprintln!("search interrupted; resume with the same arguments plus --resume");
        return Ok(());
    }
    runs.push(main);
    for other in args.compare.iter().filter(|m| m.as_str() != "none" && **m != args.method) {
        if other == "sleb@time" {
            runs.extend(sleb_at_equal_time(&args, &setup, &calib, &runs[0], n, run_method)?);
        } else {
            runs.push(run_method(&args.exp, &setup, &calib, other, n, None, None, None)?);
        }
    }

    let dense = evaluate(&args.exp, &setup, &BlockMask::dense(l), "dense")?;
    // Methods that agree share one evaluation (the evaluator is deterministic).
    for i in 0..runs.len() {
        let earlier = runs[..i].iter().find(|r| r.removed == runs[i].removed).and_then(|r| r.eval.clone());
        runs[i].eval = Some(match earlier {
            Some(e) => e,
            None => evaluate(&args.exp, &setup, &BlockMask::from_removed(l, &runs[i].removed)?, &runs[i].method)?,
        });
    }

    let calib_windows = calib.token_windows();
    let healings = crate::heal::heal_runs(&args.exp, &args.heal, &setup, &mut runs, Some(&calib_windows))?;

    let name = setup.model.source.file_name().map_or_else(|| setup.model.source.display().to_string(), |f| f.to_string_lossy().into_owned());
    println!("\nDepth pruning of {name}: {n} of {l} blocks, calibration {} x {} tokens ({}), evaluation {} tokens",
        calib.len(), args.exp.seqlen, args.exp.calib, setup.eval.tokens());
    if args.method == "evop" {
        println!("EvoP search: {}", args.exp.search_summary());
    }
    if args.heal.enabled() {
        println!("Healing: {} on {} x {} CCDS tokens of the calibration pool{}, guard {} windows",
            args.heal.healer(args.exp.batch_size).name(), args.heal.fit_windows(&setup.model)?, args.heal.heal_seqlen,
            if args.heal.heal_corpus == "none" { String::new() } else { format!(" and {} (share {})", args.heal.heal_corpus, args.heal.heal_corpus_share) }, args.heal.heal_guard_windows);
    }
    println!();
    println!("| model | removed blocks | calib NLL | eval PPL | search s |");
    println!("|---|---|---:|---:|---:|");
    println!("| dense | - | - | {:.3} | - |", dense.overall.perplexity);
    for r in &runs {
        println!(
            "| {} | {:?} | {:.4} | {:.3} | {:.1} |",
            r.method, r.removed, r.calibration_nll, r.eval.as_ref().map_or(f64::NAN, |e| e.overall.perplexity), r.search_seconds
        );
        if let Some(h) = &r.healed {
            println!(
                "| {} + healed ({} of {} runs patched, {:.1} s) | {:?} | {:.4} | {:.3} | {:.1} |",
                r.method, h.patched_runs, h.runs.len(), h.seconds, r.removed, h.calibration_nll.unwrap_or(f64::NAN), h.eval.overall.perplexity, r.search_seconds + h.seconds
            );
        }
    }
    if let Some(d) = runs[0].detail.get("decision").filter(|d| !d.is_null()) {
        let d: evop::Decision = serde_json::from_value(d.clone())?;
        println!(
            "\nDecision among every searcher's answers on {} fresh tokens ({} CCDS windows no search read; mean {}; {:.1} s, in EvoP's search s):",
            d.tokens, d.windows, if d.loss == evop::model::LossKind::Nll { "NLL" } else { "KL to dense" }, d.seconds
        );
        println!("\n| candidate | removed blocks | decision score | chosen |");
        println!("|---|---|---:|---|");
        for (i, c) in d.scores.iter().enumerate() {
            println!("| {} | {:?} | {:.4} | {} |", c.sources.join(", "), c.removed, c.score, if i == d.chosen { "yes" } else { "" });
        }
    }
    if let Some(h) = &runs[0].healed {
        println!("\nHealing of {} ({:?}):\n{}", runs[0].method, runs[0].removed, crate::heal::describe(h));
    }

    let rows: Vec<(String, Vec<usize>)> = runs.iter().map(|r| (r.method.clone(), r.removed.clone())).collect();
    crate::plots::block_map(&args.out.join("block-map"), l, &rows)?;
    let report = serde_json::json!({
        "model": setup.model.source.display().to_string(),
        "num_blocks": l,
        "remove": n,
        "calibration": calib.settings,
        "calibration_clusters": calib.clusters,
        "search": { "preset": args.exp.preset.name(&args.exp.model.device), "population": args.exp.population(), "init_near_seeds": args.exp.init_near_seeds(),
                    "stalled": args.exp.stalled(), "finalists": args.exp.finalists(), "time_budget_s": args.exp.time_budget_s(),
                    "decision_windows": args.exp.decision_windows(), "decision_loss": args.exp.decision_loss,
                    "portfolio_sleb_windows": args.exp.portfolio_sleb_windows, "portfolio_sleb_race": args.exp.portfolio_sleb_race, "also": args.exp.also },
        "decision": runs[0].detail.get("decision").cloned().unwrap_or(serde_json::Value::Null),
        "dense": dense,
        "heal": if args.heal.enabled() { serde_json::json!({ "healer": args.heal.healer(args.exp.batch_size).name(), "windows": args.heal.fit_windows(&setup.model)?,
            "guard_windows": args.heal.heal_guard_windows, "seqlen": args.heal.heal_seqlen, "corpus": args.heal.heal_corpus, "corpus_share": args.heal.heal_corpus_share }) } else { serde_json::Value::Null },
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&report)?;
    crate::common::atomic_write(&args.out.join("report.json"), text.as_bytes())?;
    let mask = BlockMask::from_removed(l, &runs[0].removed)?;
    let healing = healings.first().cloned().flatten();
    let healed_label = if healing.is_some() { " healed" } else { "" };
    if !args.no_save {
        let mut model = setup.model;
        if let Some(h) = &healing {
            h.apply(&mut model)?;
        }
        evop::model::save_pruned(&model, &mask, &model_dir).with_context(|| format!("saving the pruned model to {}", model_dir.display()))?;
        println!("\npruned{healed_label} model ({}) written to {}", runs[0].method, model_dir.display());
    }
    if let (Some(dest), Some(source)) = (&args.gguf, &gguf_source) {
        let patched = healing.as_ref().map(|h| h.replacements.clone()).unwrap_or_default();
        evop::model::io::gguf_write::write_pruned_gguf_patched(source, &mask, &patched, dest)
            .with_context(|| format!("writing the pruned GGUF {}", dest.display()))?;
        println!("pruned{healed_label} GGUF ({}) written to {}", runs[0].method, dest.display());
    }
    // The extra copy last: if it fails, `--out` already holds the complete results.
    if let Some(p) = &args.json {
        crate::common::atomic_write(p, text.as_bytes())?;
    }
    println!("report, calibration set and plots in {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use evop::baselines::Pruner;
    use evop::model::{load, LoadOptions};

    /// The candidate counts that size SLEB at EvoP's time are those SLEB and the one-shot seed
    /// really evaluate.
    #[test]
    fn candidate_counts_match_the_baselines() {
        let model = load(std::path::Path::new("synthetic:tiny"), &LoadOptions::default()).unwrap();
        let l = model.lm.num_blocks();
        let windows: Vec<Vec<u32>> = (0..2).map(|w| (0..8).map(|t| (w * 8 + t) as u32 % 50).collect()).collect();
        for n in 1..=l.saturating_sub(3).min(3) {
            let sleb = evop::baselines::Sleb::default().prune(&model.lm, &windows, n).unwrap();
            assert_eq!(sleb.counts.candidates as f64, sleb_candidates(l, n), "sleb, n = {n} of {l}");
            let spec = evop::SearchSpec::default();
            let ppl = spec.seed_pruner("ppl", l).unwrap().prune(&model.lm, &windows, n).unwrap();
            assert_eq!(ppl.counts.candidates as f64, ppl_candidates(l), "ppl, n = {n} of {l}");
            assert!(!ppl.removed().contains(&0) && !ppl.removed().contains(&(l - 1)), "the seed keeps the ends");
        }
    }
}

//! `evop compare`: several methods at several n on one calibration set; one table, JSON, a block
//! map and a perplexity-vs-sparsity plot.
use crate::experiment::{evaluate, run_method, ExperimentArgs, MethodRun};
use anyhow::{Context, Result};
use evop::model::BlockMask;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// Methods, comma-separated: evop, sleb, shortgpt, ppl, angular, last-n, random, exhaustive.
    #[arg(long, value_delimiter = ',', default_value = "evop,sleb,shortgpt,ppl,angular,last-n,random")]
    pub methods: Vec<String>,
    /// Numbers of blocks to remove, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
    pub remove: Vec<usize>,
    /// Output directory for the report and plots.
    #[arg(long, default_value = "evop-compare")]
    pub out: PathBuf,
    #[command(flatten)]
    pub heal: crate::heal::HealArgs,
}

pub fn run(args: Args) -> Result<()> {
    // Settings errors before anything is downloaded, loaded or written.
    crate::checks::experiment(&args.exp)?;
    args.heal.check()?;
    for m in &args.methods {
        crate::checks::method("--methods", m, &[])?;
    }
    if args.methods.is_empty() || args.remove.is_empty() {
        anyhow::bail!("--methods and --remove need at least one value each");
    }
    if args.remove.contains(&0) {
        anyhow::bail!("--remove 0: must be at least 1");
    }
    // Settings against the model's shape, from its configuration alone (no weights loaded yet).
    let model_path = crate::common::resolve_model_path(args.exp.model.model.as_deref())?;
    if let Some(shape) = crate::checks::peek_shape(&model_path) {
        crate::checks::experiment_shape(&args.exp, &shape)?;
        crate::checks::removals(&shape, "--remove", &args.remove)?;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let setup = args.exp.setup()?;
    let shape = crate::checks::loaded_shape(&setup.model);
    crate::checks::experiment_shape(&args.exp, &shape)?;
    crate::checks::removals(&shape, "--remove", &args.remove)?;
    let l = setup.model.lm.num_blocks();
    let s = crate::progress::spinner("building the calibration set");
    let calib = evop::build_calibration(&setup.model, &setup.split.calibration, &args.exp.calibration_spec()?, args.exp.seed)?;
    s.finish_and_clear();
    calib.save(&args.out.join("calibration.json"))?;
    let dense = evaluate(&args.exp, &setup, &BlockMask::dense(l), "dense")?;
    let mut runs: Vec<MethodRun> = Vec::new();
    for &n in &args.remove {
        for m in &args.methods {
            let mut r = run_method(&args.exp, &setup, &calib, m, n, None, None, Some(&args.out))?;
            r.eval = Some(evaluate(&args.exp, &setup, &BlockMask::from_removed(l, &r.removed)?, m)?);
            runs.push(r);
        }
    }
    let calib_windows = calib.token_windows();
    crate::heal::heal_runs(&args.exp, &args.heal, &setup, &mut runs, Some(&calib_windows))?;
    println!("\ncalibration {} x {} tokens ({}), evaluation {} tokens; dense perplexity {:.3}\n", calib.len(), args.exp.seqlen, args.exp.calib, setup.eval.tokens(), dense.overall.perplexity);
    println!("| n | method | removed blocks | calib NLL | eval PPL | worst topic PPL | search s | block fwd |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for r in &runs {
        let e = r.eval.as_ref().expect("evaluated");
        println!(
            "| {} | {} | {:?} | {:.4} | {:.3} | {} | {:.1} | {} |",
            r.n, r.method, r.removed, r.calibration_nll, e.overall.perplexity,
            e.worst_topic.as_ref().map_or("-".into(), |(t, p)| format!("{p:.3} ({t})")),
            r.search_seconds, r.counts.block_forwards
        );
        if let Some(h) = &r.healed {
            println!(
                "| {} | {} + healed ({}/{} runs) | {:?} | {:.4} | {:.3} | {} | {:.1} | - |",
                r.n, r.method, h.patched_runs, h.runs.len(), r.removed, h.calibration_nll.unwrap_or(f64::NAN), h.eval.overall.perplexity,
                h.eval.worst_topic.as_ref().map_or("-".into(), |(t, p)| format!("{p:.3} ({t})")),
                r.search_seconds + h.seconds
            );
        }
    }
    let series: Vec<(String, Vec<(usize, f64)>)> = args
        .methods
        .iter()
        .map(|m| (m.clone(), runs.iter().filter(|r| &r.method == m).map(|r| (r.n, r.eval.as_ref().unwrap().overall.perplexity)).collect()))
        .chain(args.methods.iter().filter(|_| args.heal.enabled()).map(|m| {
            (format!("{m} + healed"), runs.iter().filter(|r| &r.method == m).filter_map(|r| Some((r.n, r.healed.as_ref()?.eval.overall.perplexity))).collect())
        }))
        .collect();
    crate::plots::ppl_vs_sparsity(&args.out.join("ppl-vs-removed"), &series)?;
    for &n in &args.remove {
        let rows: Vec<(String, Vec<usize>)> = runs.iter().filter(|r| r.n == n).map(|r| (r.method.clone(), r.removed.clone())).collect();
        crate::plots::block_map(&args.out.join(format!("block-map-n{n}")), l, &rows)?;
    }
    let report = serde_json::json!({ "dense": dense, "calibration": calib.settings, "runs": runs });
    crate::common::atomic_write(&args.out.join("compare.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("\nreport and plots in {}", args.out.display());
    Ok(())
}

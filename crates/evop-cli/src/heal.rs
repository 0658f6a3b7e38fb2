//! Healing in the command line: the `--heal*` options of `evop prune` and `evop compare`, and
//! `evop heal` (heal a mask found earlier and write the healed model).
//!
//! The healer fits on windows CCDS-draws from the calibration pool (plus `--heal-corpus`, text
//! like what the model serves), never on the evaluation split; docs/healing.md measures it.
use crate::experiment::{ExperimentArgs, MethodRun, Setup};
use anyhow::{bail, Context, Result};
use evop::data::Corpus;
use evop::heal::{Healer, Healing, LinearPatch};
use evop::model::{BlockMask, LoadedModel};
use evop::EvalReport;
use serde::Serialize;
use std::path::PathBuf;

/// The healer and its calibration windows.
#[derive(clap::Args, Clone, Debug)]
pub struct HealArgs {
    /// Healer applied to every answer after the search: `linear` (a training-free linear patch
    /// per removed run, folded into the weights; docs/healing.md) or `none`.
    #[arg(long, default_value = "linear")]
    pub heal: String,
    /// Windows the patches are fitted on, CCDS-drawn from the calibration pool: a number, or
    /// `auto` (128 windows of 128 tokens per 768 of hidden size, at least 64, a multiple of 16:
    /// SmolLM2 96, Qwen2.5-Coder-0.5B 160, -1.5B 256; docs/healing.md).
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub heal_windows: String,
    /// Held-back windows (one per cluster in turn) each patch must improve to be kept; 0 turns
    /// the guard off.
    #[arg(long, default_value_t = 16)]
    pub heal_guard_windows: usize,
    /// Tokens per healing window.
    #[arg(long, default_value_t = 128)]
    pub heal_seqlen: usize,
    /// Ridge toward the identity, relative to the mean diagonal of the MLP outputs' Gram matrix.
    #[arg(long, default_value_t = evop::heal::DEFAULT_RIDGE)]
    pub heal_ridge: f64,
    /// How the ridge is scaled: `diag` (per output dimension, by that dimension's MLP output
    /// energy) or `mean` (one penalty, by the mean energy). Default: the measured choice.
    #[arg(long, value_name = "mean|diag")]
    pub heal_scale: Option<String>,
    /// Whether runs of a single removed block are patched too (`true` or `false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub heal_single_runs: bool,
    /// Extra text for the healer's windows beside the calibration pool (see
    /// --heal-corpus-share): a text asset name (default `code-python-calib`: Python sources of
    /// click and flask, fetched from PyPI), a file, directory or JSONL like --corpus, or `none`.
    /// Patches fitted on prose alone made code worse (docs/healing.md): calibrate on what the
    /// model serves.
    #[arg(long, value_name = "NAME|PATH|none", default_value = "code-python-calib")]
    pub heal_corpus: String,
    /// Share of the healer's fit and guard windows drawn from `--heal-corpus` alone (CCDS within
    /// it), the rest from the calibration pool (default 0.5, the measured choice), or `pooled`:
    /// both pooled and drawn across by CCDS (each source in proportion to the clusters it forms).
    #[arg(long, value_name = "0..1|pooled", default_value = "0.5")]
    pub heal_corpus_share: String,
}

/// One answer after healing: the healer's report per removed run and the healed evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct HealedRun {
    pub healer: String,
    pub seconds: f64,
    pub patched_runs: usize,
    pub runs: Vec<evop::heal::RunReport>,
    pub calibration_nll: Option<f64>,
    pub eval: EvalReport,
}

impl HealArgs {
    /// Whether a healer is on.
    pub fn enabled(&self) -> bool {
        self.heal != "none"
    }

    /// The settings checked before anything is fetched, loaded or written.
    pub fn check(&self) -> Result<()> {
        match self.heal.as_str() {
            "linear" | "none" => {}
            other => bail!("unknown --heal `{other}` (expected linear or none)"),
        }
        self.fixed_fit_windows()?;
        if self.heal_seqlen < 2 {
            bail!("--heal-seqlen {}: must be at least 2", self.heal_seqlen);
        }
        if !(self.heal_ridge > 0.0 && self.heal_ridge.is_finite()) {
            bail!("--heal-ridge {}: must be a positive number", self.heal_ridge);
        }
        self.scale()?;
        self.corpus_share()?;
        let c = self.heal_corpus.as_str();
        if c != "none" && !evop::assets::is_text_name(c) && !std::path::Path::new(c).exists() {
            bail!(
                "--heal-corpus {c}: no such file or directory, and not a text asset ({}) or `none`",
                evop::assets::TEXT_NAMES.join(", ")
            );
        }
        Ok(())
    }

    /// `--heal-windows` as a number of windows; `None` for `auto`.
    fn fixed_fit_windows(&self) -> Result<Option<usize>> {
        match self.heal_windows.as_str() {
            "auto" => Ok(None),
            s => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => bail!("--heal-windows {s}: expected a positive number of windows or `auto`"),
            },
        }
    }

    /// `--heal-windows` for `model` (`auto`: from its hidden size at `--heal-seqlen`).
    pub fn fit_windows(&self, model: &LoadedModel) -> Result<usize> {
        Ok(self.fixed_fit_windows()?.unwrap_or_else(|| evop::fit_windows_for_hidden(model.lm.info().hidden_size, self.heal_seqlen)))
    }

    /// `--heal-corpus-share` as a number, `None` for `pooled`.
    fn corpus_share(&self) -> Result<Option<f64>> {
        match self.heal_corpus_share.as_str() {
            "pooled" => Ok(None),
            s => match s.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(Some(x)),
                _ => bail!("--heal-corpus-share {s}: expected a number between 0 and 1, or `pooled`"),
            },
        }
    }

    fn scale(&self) -> Result<evop::heal::RidgeScale> {
        Ok(match self.heal_scale.as_deref() {
            None => evop::heal::DEFAULT_RIDGE_SCALE,
            Some("mean") => evop::heal::RidgeScale::Mean,
            Some("diag") => evop::heal::RidgeScale::Diagonal,
            Some(other) => bail!("unknown --heal-scale `{other}` (expected mean or diag)"),
        })
    }

    /// The healer (settings checked by [`HealArgs::check`]).
    pub fn healer(&self, batch_size: usize) -> LinearPatch {
        LinearPatch {
            ridge: self.heal_ridge,
            scale: self.scale().unwrap_or(evop::heal::DEFAULT_RIDGE_SCALE),
            single_block_runs: self.heal_single_runs,
            guard: self.heal_guard_windows > 0,
            batch_size: batch_size.max(1),
        }
    }

    /// The file of `--heal-corpus` (a text asset is fetched on first use); `None` for `none`.
    pub fn heal_corpus_path(&self) -> Result<Option<PathBuf>> {
        Ok(match self.heal_corpus.as_str() {
            "none" => None,
            name if evop::assets::is_text_name(name) => Some(evop::assets::AssetStore::from_env().text(name)?),
            path => Some(PathBuf::from(path)),
        })
    }

    /// The healer's windows from the calibration pool (and `--heal-corpus`).
    pub fn data(&self, model: &LoadedModel, pool: &Corpus, seed: u64) -> Result<evop::heal::HealData> {
        let extra = match self.heal_corpus_path()? {
            Some(path) => Some(crate::experiment::read_corpus(&path).with_context(|| format!("reading --heal-corpus {}", path.display()))?),
            None => None,
        };
        let spec = evop::HealDataSpec {
            fit_windows: self.fit_windows(model)?,
            guard_windows: self.heal_guard_windows,
            seqlen: self.heal_seqlen,
            ..Default::default()
        };
        let s = crate::progress::spinner("drawing the healing windows");
        let data = evop::build_heal_data_with(model, pool, extra.as_ref(), self.corpus_share()?, &spec, seed)
        .context("drawing the healing windows")?;
        s.finish_and_clear();
        Ok(data)
    }
}

/// Heals `mask` of `setup.model` and evaluates the healed model on the evaluation windows.
pub fn heal_and_evaluate(
    exp: &ExperimentArgs,
    heal: &HealArgs,
    setup: &Setup,
    data: &evop::heal::HealData,
    mask: &BlockMask,
    calibration: Option<&[Vec<u32>]>,
) -> Result<(Healing, HealedRun)> {
    let healer = heal.healer(exp.batch_size);
    let s = crate::progress::spinner(&format!("healing {mask} ({})", healer.name()));
    let healing = healer.heal(&setup.model, mask, data).with_context(|| format!("healing {mask}"))?;
    s.finish_and_clear();
    let lm = setup.model.rebuilt_with(healing.replacements.clone())?;
    let s = crate::progress::spinner(&format!("evaluating the healed {mask} on {} tokens", setup.eval.tokens()));
    let eval = evop::evaluate(lm.as_ref(), &setup.eval, mask, exp.batch_size)?;
    let calibration_nll = calibration
        .map(|w| evop::model::perplexity::perplexity(lm.as_ref(), w, mask, exp.batch_size).map(|p| p.mean_nll))
        .transpose()?;
    s.finish_and_clear();
    let healed = HealedRun {
        healer: healing.healer.clone(),
        seconds: healing.seconds,
        patched_runs: healing.patched_runs(),
        runs: healing.runs.clone(),
        calibration_nll,
        eval,
    };
    Ok((healing, healed))
}

/// Heals every distinct answer of `runs` (the first of equal masks heals; the others share its
/// result) and returns the healing of each run.
pub fn heal_runs(
    exp: &ExperimentArgs,
    heal: &HealArgs,
    setup: &Setup,
    runs: &mut [MethodRun],
    calibration: Option<&[Vec<u32>]>,
) -> Result<Vec<Option<Healing>>> {
    let mut out: Vec<Option<Healing>> = vec![None; runs.len()];
    if !heal.enabled() || runs.is_empty() {
        return Ok(out);
    }
    let data = heal.data(&setup.model, &setup.split.calibration, exp.seed)?;
    let l = setup.model.lm.num_blocks();
    for i in 0..runs.len() {
        if let Some(j) = (0..i).find(|&j| runs[j].removed == runs[i].removed) {
            runs[i].healed = runs[j].healed.clone();
            out[i] = out[j].clone();
            continue;
        }
        let mask = BlockMask::from_removed(l, &runs[i].removed)?;
        let (healing, healed) = heal_and_evaluate(exp, heal, setup, &data, &mask, calibration)?;
        runs[i].healed = Some(healed);
        out[i] = Some(healing);
    }
    Ok(out)
}

/// One line per removed run: where the patch went, how well it fit, and the guard's verdict.
pub fn describe(healed: &HealedRun) -> String {
    healed
        .runs
        .iter()
        .map(|r| {
            let fit = r.explained.map_or(String::new(), |e| format!(", explains {:.1}% (unpatched {:.1}%)", 100.0 * e, 100.0 * r.explained_unpatched.unwrap_or(f64::NAN)));
            let guard = match (r.guard_nll_before, r.guard_nll_after) {
                (Some(b), Some(a)) => format!(", guard NLL {b:.4} -> {a:.4}"),
                _ => String::new(),
            };
            let verdict = match &r.decision {
                evop::heal::RunDecision::Patched => "patched".to_string(),
                evop::heal::RunDecision::RefusedByGuard => "refused by the guard".to_string(),
                evop::heal::RunDecision::Skipped(why) => format!("skipped: {why}"),
            };
            format!("  run {:?} -> block {}: {verdict}{fit}{guard}", r.removed, r.patched_block.map_or("-".into(), |b| b.to_string()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `evop heal`: heal a mask found earlier, compare it with the unhealed mask on the evaluation
/// split, and write the healed pruned model.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub exp: ExperimentArgs,
    /// Blocks to remove, comma-separated (e.g. the mask `evop prune` found).
    #[arg(long, value_delimiter = ',', required = true)]
    pub skip: Vec<usize>,
    /// Output: a `.gguf` file (GGUF models only: healed tensors re-quantised to their original
    /// type, every other tensor copied byte for byte) or else a Hugging Face directory (created;
    /// it must not exist or be empty). Nothing existing is overwritten.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub heal: HealArgs,
}

pub fn run(args: Args) -> Result<()> {
    crate::checks::experiment(&args.exp)?;
    args.heal.check()?;
    if !args.heal.enabled() {
        bail!("evop heal --heal none: nothing to heal (`evop apply` writes the unhealed pruned model)");
    }
    let gguf_source = if crate::apply::is_gguf_out(&args.out) {
        Some(crate::apply::check_gguf_output(args.exp.model.model.as_deref(), &args.out, "--out")?)
    } else {
        if args.out.is_file() || std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!("--out {}: exists and is not an empty directory; refusing to overwrite it", args.out.display());
        }
        None
    };
    let model_path = crate::common::resolve_model_path(args.exp.model.model.as_deref())?;
    if let Some(shape) = crate::checks::peek_shape(&model_path) {
        crate::checks::experiment_shape(&args.exp, &shape)?;
        crate::common::mask_from_list(shape.blocks, &args.skip)?;
    }
    let setup = args.exp.setup()?;
    let l = setup.model.lm.num_blocks();
    let mask = crate::common::mask_from_list(l, &args.skip)?;
    let data = args.heal.data(&setup.model, &setup.split.calibration, args.exp.seed)?;
    let dense = crate::experiment::evaluate(&args.exp, &setup, &BlockMask::dense(l), "dense")?;
    let unhealed = crate::experiment::evaluate(&args.exp, &setup, &mask, "unhealed")?;
    let (healing, healed) = heal_and_evaluate(&args.exp, &args.heal, &setup, &data, &mask, None)?;
    println!("\n{mask}: {} fit windows and {} guard windows of {} tokens; evaluation {} tokens\n", data.fit.len(), data.guard.len(), args.heal.heal_seqlen, setup.eval.tokens());
    println!("| model | eval PPL | gap closed | heal s |");
    println!("|---|---:|---:|---:|");
    println!("| dense | {:.3} | - | - |", dense.overall.perplexity);
    println!("| pruned | {:.3} | - | - |", unhealed.overall.perplexity);
    let closed = gap_closed(dense.overall.perplexity, unhealed.overall.perplexity, healed.eval.overall.perplexity);
    println!("| pruned + {} | {:.3} | {:.1}% | {:.1} |", healed.healer, healed.eval.overall.perplexity, 100.0 * closed, healed.seconds);
    println!("\n{}", describe(&healed));
    let report = serde_json::json!({ "removed": args.skip, "dense": dense, "unhealed": unhealed, "healed": healed });
    let text = serde_json::to_string_pretty(&report)?;
    match gguf_source {
        Some(source) => {
            evop::model::io::gguf_write::write_pruned_gguf_patched(&source, &mask, &healing.replacements, &args.out)
                .with_context(|| format!("writing the healed GGUF {}", args.out.display()))?;
            let json = args.out.with_extension("heal.json");
            crate::common::atomic_write(&json, text.as_bytes())?;
            println!("\nhealed pruned GGUF written to {} (report {})", args.out.display(), json.display());
        }
        None => {
            let mut model = setup.model;
            healing.apply(&mut model)?;
            evop::model::save_pruned(&model, &mask, &args.out).with_context(|| format!("saving the healed model to {}", args.out.display()))?;
            crate::common::atomic_write(&args.out.join("heal.json"), text.as_bytes())?;
            println!("\nhealed pruned model written to {}", args.out.display());
        }
    }
    Ok(())
}

/// Share of the log-perplexity gap `ln ppl_pruned - ln ppl_dense` that healing closed.
pub fn gap_closed(dense: f64, pruned: f64, healed: f64) -> f64 {
    (pruned.ln() - healed.ln()) / (pruned.ln() - dense.ln())
}

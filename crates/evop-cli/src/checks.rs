//! Settings checked before anything is downloaded, loaded or written: method and task names,
//! counts, lengths and output paths; and the ones that need the model's shape (block count,
//! positions), checked as soon as its configuration is read ([`peek_shape`]: `config.json` or the
//! GGUF header, before the weights are loaded) and before any calibration or forward.
use crate::experiment::ExperimentArgs;
use anyhow::{bail, Result};
use std::path::Path;

/// The method names `evop prune --method` and `evop compare --methods` take.
pub fn method_names() -> String {
    std::iter::once("evop").chain(evop::baselines::PRUNER_NAMES.iter().copied()).collect::<Vec<_>>().join(", ")
}

/// `name` is `evop` or a baseline [`evop::baselines::pruner_by_name`] accepts, else an error
/// naming `option` and listing every method (and the option's `extra` values).
pub fn method(option: &str, name: &str, extra: &[&str]) -> Result<()> {
    let e = match evop::baselines::pruner_by_name(name) {
        _ if name == "evop" => return Ok(()),
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    // `random:SEED` with a bad seed: the baseline's own message says what is wrong.
    if !matches!(e, evop::baselines::BaselineError::UnknownMethod { .. }) {
        bail!("{option} {name}: {e}");
    }
    let extra: String = extra.iter().map(|x| format!(", {x}")).collect();
    bail!("unknown {option} `{name}` (known: {}{extra})", method_names())
}

/// `--seed-with`: baselines (not `evop`) or `none`.
fn seed_method(name: &str) -> Result<()> {
    if name == "none" {
        return Ok(());
    }
    evop::baselines::pruner_by_name(name)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("--seed-with `{name}`: {e}; or `none`"))
}

/// An input file or directory that must exist.
pub fn input_path(option: &str, path: &Path) -> Result<()> {
    if let Err(e) = std::fs::metadata(path) {
        bail!("{option} {}: {e}", path.display());
    }
    Ok(())
}

/// A file to be written at the end of a run: its folder must exist and it must not be a folder.
pub fn output_file(option: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{option} {}: is a directory; give a file name", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{option} {}: the directory {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

/// A window length: next-token prediction needs 2 tokens.
pub fn seqlen(option: &str, n: usize) -> Result<()> {
    if n < 2 {
        bail!("{option} {n}: a window needs at least 2 tokens");
    }
    Ok(())
}

/// What `prune` and `compare` share, before anything is loaded.
pub fn experiment(exp: &ExperimentArgs) -> Result<()> {
    exp.search_spec()?;
    exp.calibration_spec()?;
    exp.loss_kind()?;
    seqlen("--seqlen", exp.seqlen)?;
    seqlen("--eval-seqlen", exp.eval_seqlen)?;
    if exp.calib_windows == 0 {
        bail!("--calib-windows 0: at least one calibration window");
    }
    let min_population = if exp.strategy == "ga" { 2 } else { 1 };
    if exp.population() < min_population {
        bail!("--population {}: the {} strategy needs at least {min_population}", exp.population(), exp.strategy);
    }
    if exp.calib == "ccds" {
        if exp.clusters == Some(0) {
            bail!("--clusters 0: at least one cluster");
        }
        if exp.pool < exp.calib_windows {
            bail!("--pool {}: the CCDS pool must hold at least the --calib-windows {} windows drawn from it", exp.pool, exp.calib_windows);
        }
        if let Some(k) = exp.clusters.filter(|&k| k > exp.pool) {
            bail!("--clusters {k}: more clusters than the --pool {} windows clustered", exp.pool);
        }
    }
    if exp.seed_tokens.is_some_and(|t| t < 2) {
        bail!("--seed-tokens {}: a window needs at least 2 tokens", exp.seed_tokens.unwrap_or(0));
    }
    for name in &exp.seed_with() {
        seed_method(name)?;
    }
    if let Some(corpus) = &exp.corpus {
        input_path("--corpus", corpus)?;
    }
    Ok(())
}

/// A model's shape as its configuration states it.
#[derive(Clone, Debug)]
pub struct Shape {
    pub blocks: usize,
    pub positions: usize,
    /// Where the values were read (for messages).
    pub source: String,
}

/// The block count and positions of the model at `path` (resolved), from its configuration only
/// (`config.json`, the GGUF header or the synthetic shape), without loading weights. `None` when
/// they cannot be read: the loader then reports what is wrong.
pub fn peek_shape(path: &Path) -> Option<Shape> {
    if let Some(name) = evop::model::synthetic::synthetic_name(path) {
        let c = evop::model::synthetic::synthetic_config(name).ok()?;
        return Some(Shape { blocks: c.num_hidden_layers, positions: c.max_position_embeddings, source: path.display().to_string() });
    }
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).ok()?).ok()?;
        let get = |k: &str| cfg.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        return Some(Shape {
            blocks: get("num_hidden_layers")?,
            positions: get("max_position_embeddings")?,
            source: format!("max_position_embeddings of {}", cfg_path.display()),
        });
    }
    if evop::model::io::gguf_write::is_gguf(path) {
        let c = evop::model::gguf::GgufFile::open(path).ok()?.decoder_config().ok()?;
        return Some(Shape {
            blocks: c.num_hidden_layers,
            positions: c.max_position_embeddings,
            source: format!("context_length of {}", path.display()),
        });
    }
    None
}

/// The shape of a loaded model.
pub fn loaded_shape(model: &evop::model::LoadedModel) -> Shape {
    let info = model.lm.info();
    Shape { blocks: info.num_blocks, positions: info.max_positions, source: model.source.display().to_string() }
}

/// Window lengths against the model's positions.
pub fn positions(shape: &Shape, lengths: &[(&str, usize)]) -> Result<()> {
    for (option, n) in lengths {
        if *n > shape.positions {
            bail!("{option} {n} exceeds the model's {} positions ({})", shape.positions, shape.source);
        }
    }
    Ok(())
}

/// Blocks to remove against the model's block count.
pub fn removals(shape: &Shape, option: &str, counts: &[usize]) -> Result<()> {
    for &n in counts {
        if n == 0 || n >= shape.blocks {
            bail!("{option} {n}: must be between 1 and {} for a model of {} blocks", shape.blocks.saturating_sub(1), shape.blocks);
        }
    }
    Ok(())
}

/// What `prune` and `compare` check once the model's shape is known.
pub fn experiment_shape(exp: &ExperimentArgs, shape: &Shape) -> Result<()> {
    positions(shape, &[("--seqlen", exp.seqlen), ("--eval-seqlen", exp.eval_seqlen)])?;
    if exp.calib == "ccds" {
        if let Some(b) = exp.embedder.strip_prefix("hidden:").and_then(|b| b.parse::<usize>().ok()) {
            if b > shape.blocks {
                bail!("--embedder hidden:{b}: the model has block boundaries 0..={}", shape.blocks);
            }
        }
    }
    Ok(())
}

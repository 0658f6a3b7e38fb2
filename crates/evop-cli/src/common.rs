//! Options shared by several subcommands: which model, device, dtype and mask.
use anyhow::{Context, Result};
use evop::model::{load, BlockMask, LoadOptions, LoadedModel};
use std::path::{Path, PathBuf};

/// Which model to load and where.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a GGUF file, a model name fetched into the asset cache if missing
    /// (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), a Hugging Face hub id ORG/NAME[@REVISION]
    /// (safetensors; ORG/NAME[@REVISION]:FILE.gguf for one GGUF file) fetched into the hub cache
    /// (HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE), or synthetic:NAME; an existing path always
    /// wins; default: SmolLM2-135M-Instruct (fetched if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Device: cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Run Llama weights through the Mistral code path with this sliding attention window
    /// (results are those of Llama weights; for exercising the Mistral path).
    #[arg(long, value_name = "WINDOW")]
    pub as_mistral: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        self.load_path(&resolve_model_path(self.model.as_deref())?)
    }

    /// [`ModelArgs::load`] with `check` run on the model's shape as soon as its configuration is
    /// read (before the weights are loaded), and again on the loaded model.
    pub fn load_checked(&self, check: impl Fn(&crate::checks::Shape) -> Result<()>) -> Result<LoadedModel> {
        let path = resolve_model_path(self.model.as_deref())?;
        if let Some(shape) = crate::checks::peek_shape(&path) {
            check(&shape)?;
        }
        let model = self.load_path(&path)?;
        check(&crate::checks::loaded_shape(&model))?;
        Ok(model)
    }

    /// Loads the model at the resolved `path`.
    fn load_path(&self, path: &Path) -> Result<LoadedModel> {
        let path = path.to_path_buf();
        let opts = LoadOptions { dtype: evop::model::parse_dtype(&self.dtype)?, device: evop::model::parse_device(&self.device)? };
        let mut model = load(&path, &opts).with_context(|| format!("loading {}", path.display()))?;
        if let Some(window) = self.as_mistral {
            if model.architecture() != evop::model::Architecture::Llama {
                anyhow::bail!("--as-mistral needs Llama weights, {} is {}", path.display(), model.architecture());
            }
            model.lm = evop::model::load::as_mistral(&model, window)?;
        }
        Ok(model)
    }
}

/// Resolves `--model`: an existing path is used as it is; else a known asset name
/// ([`evop::assets::MODEL_NAMES`]) is fetched into (or found in) the asset cache, and a hub id
/// `ORG/NAME[@REVISION][:FILE]` into the Hugging Face cache ([`crate::hub`]); `synthetic:NAME` and
/// anything else are passed on unchanged (the loader builds the synthetic model or reports the path as not
/// found). No `--model`: SmolLM2-135M-Instruct from the asset cache.
pub fn resolve_model_path(model: Option<&Path>) -> Result<PathBuf> {
    let store = || evop::assets::AssetStore::from_env();
    let Some(path) = model else {
        return store().smollm2_gguf().context("fetching the default model");
    };
    if path.exists() || evop::model::synthetic::synthetic_name(path).is_some() {
        return Ok(path.to_path_buf());
    }
    match path.to_str() {
        Some(name) if evop::assets::is_model_name(name) => store().model(name).with_context(|| format!("fetching the model {name}")),
        Some(name) => match crate::hub::parse(name) {
            Some(id) => crate::hub::resolve(&id)
                .with_context(|| format!("`{name}` is not a local file or directory; fetching it from the Hugging Face hub")),
            None => bail_missing(path),
        },
        None => bail_missing(path),
    }
}

/// A `--model` that is neither a file, a directory, a model name nor a Hugging Face id.
fn bail_missing(path: &Path) -> Result<PathBuf> {
    anyhow::bail!(
        "--model {}: no such file or directory (nor a model name that `evop assets fetch` knows, nor a Hugging Face id `org/name`)",
        path.display()
    )
}

/// Parses `--skip 3,17,18` into a mask for a model of `num_blocks` blocks.
pub fn mask_from_list(num_blocks: usize, skip: &[usize]) -> Result<BlockMask> {
    Ok(BlockMask::from_removed(num_blocks, skip)?)
}

/// Writes `path` through a temporary sibling renamed into place, so `path` holds either its
/// previous content or the whole new one; on failure the temporary file is removed and the error
/// names `path`.
pub fn atomic_write(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// On `--resume`: refuses a saved calibration set that this run's settings would not have drawn,
/// naming the file, the option, the saved value and the requested one (the search's checkpoint
/// is checked separately, by its fingerprint).
pub fn check_saved_calibration(path: &std::path::Path, set: &evop::data::CalibrationSet, spec: &evop::CalibrationSpec, seed: u64) -> Result<()> {
    let sampler = match spec.sampler {
        evop::SamplerKind::Random => "random",
        evop::SamplerKind::Ccds { .. } => "ccds",
    };
    let checks = [
        ("--calib", set.settings.sampler.sampler.clone(), sampler.to_string()),
        ("--calib-windows", set.len().to_string(), spec.windows.to_string()),
        ("--seqlen", set.settings.window.seqlen.to_string(), spec.seqlen.to_string()),
        ("--seed", set.settings.sampler.seed.to_string(), seed.to_string()),
    ];
    for (option, saved, asked) in checks {
        if saved != asked {
            anyhow::bail!(
                "{}: the interrupted run used {option} {saved}, this run asks for {option} {asked}; resume with the same settings, or start again without --resume",
                path.display()
            );
        }
    }
    Ok(())
}

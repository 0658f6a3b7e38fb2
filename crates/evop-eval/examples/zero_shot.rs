//! Zero-shot multiple-choice accuracy of SmolLM2-135M-Instruct (or any evop-loadable model) on
//! BIG-bench tasks, dense or with blocks removed.
//!
//! ```text
//! cargo run --release -p evop-eval --example zero_shot -- \
//!     --tasks science,winogrande --limit 200 --seed 0 [--remove 20,21] [--model DIR|GGUF] [--json out.json]
//! ```
//! Task names: `science`, `winogrande`, `step_inference`, or any BIG-bench task path
//! (`natural_instructions/subtask047_misc_answering_science_questions`). Files are fetched into the
//! evop asset cache on first use. Prints one JSON line per task.
use anyhow::{bail, Context};
use evop_eval::{evaluate_task_cached, load_bigbench, resolve_task, BigBenchFormat, EvalOptions, TokenCache};
use evop_model::{load, BlockMask, LoadOptions};
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    tasks: Vec<String>,
    opts: EvalOptions,
    remove: Vec<usize>,
    model: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        tasks: vec!["science".into(), "winogrande".into()],
        opts: EvalOptions { limit: Some(200), ..EvalOptions::default() },
        remove: Vec::new(),
        model: None,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => a.tasks = value()?.split(',').map(str::to_string).collect(),
            "--limit" => {
                let v = value()?;
                a.opts.limit = if v == "all" { None } else { Some(v.parse().context("--limit")?) };
            }
            "--seed" => a.opts.seed = value()?.parse().context("--seed")?,
            "--batch-size" => a.opts.batch_size = value()?.parse().context("--batch-size")?,
            "--remove" => a.remove = value()?.split(',').filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?,
            "--model" => a.model = Some(value()?.into()),
            "--json" => a.json = Some(value()?.into()),
            "-h" | "--help" => {
                println!("zero_shot --tasks science,winogrande,step_inference --limit N|all --seed S --batch-size B --remove i,j --model PATH --json OUT");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (see --help)"),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let store = evop_assets::AssetStore::from_env();
    let path = match &args.model {
        Some(p) => p.clone(),
        None => store.smollm2_gguf()?,
    };
    let model = load(&path, &LoadOptions::default()).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = model.tokenizer()?;
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &args.remove)?;
    let mut cache = TokenCache::new();
    let mut results = Vec::new();
    for name in &args.tasks {
        let full = resolve_task(name);
        let file = store.bigbench_task(full)?;
        let task = load_bigbench(&file, full, BigBenchFormat::Auto)?;
        let started = Instant::now();
        let r = evaluate_task_cached(model.lm.as_ref(), tokenizer, &mut cache, &task, &mask, &args.opts)?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"result": r, "items_in_task": task.len(), "seed": args.opts.seed, "seconds": (secs * 10.0).round() / 10.0})
        );
        results.push(r);
    }
    if let Some(out) = args.json {
        std::fs::write(&out, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

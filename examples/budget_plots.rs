//! The plots of docs/results.md's calibration-budget study, drawn from its committed rows files
//! (`docs/results/robust-b{512,2k,8k,32k}.rows.jsonl`, as `examples/study.rs` writes them, and the
//! cells a later pass added in `robust-b*-more.rows.jsonl`):
//! evaluation perplexity against calibration tokens per method (one SVG per n), and worst-topic
//! against mean perplexity (one point per method, budget and n, averaged over seeds).
//!
//! ```text
//! cargo run --release --example budget_plots -- --rows docs/results --out docs/results
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// Folder of the rows files.
    #[arg(long, default_value = "docs/results")]
    rows: PathBuf,
    /// Folder the SVGs are written to.
    #[arg(long, default_value = "docs/results")]
    out: PathBuf,
    /// Methods drawn (in this order).
    #[arg(long, value_delimiter = ',', default_value = "sleb,sleb-ccds,evop-ccds,evop-ccds:kl,evop1l-ccds,evop-random")]
    methods: Vec<String>,
}

/// (budget tokens, n, method) -> (eval ppl, worst-topic ppl) per seed.
type Table = BTreeMap<(u32, usize, String), Vec<(f64, f64)>>;

fn read(args: &Args) -> Result<Table> {
    let mut table = Table::new();
    let budgets = [("robust-b512", 512u32), ("robust-b2k", 2048), ("robust-b8k", 8192), ("robust-b32k", 32768)];
    // Each budget's rows, then the cells a later pass finished (`STEM-more.rows.jsonl`, optional).
    let files = budgets.iter().flat_map(|&(stem, tokens)| [(format!("{stem}.rows.jsonl"), tokens, true), (format!("{stem}-more.rows.jsonl"), tokens, false)]);
    for (file, tokens, required) in files {
        let path = args.rows.join(&file);
        if !required && !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let field = |k: &str| v.get(k).with_context(|| format!("{}:{}: no field `{k}`", path.display(), i + 1));
            let n = field("n")?.as_u64().context("`n` is not a number")? as usize;
            let method = field("method")?.as_str().context("`method` is not a string")?.to_string();
            let ppl = field("eval_ppl")?.as_f64().context("`eval_ppl` is not a number")?;
            let worst = field("worst_topic_ppl")?.as_f64().unwrap_or(f64::NAN);
            table.entry((tokens, n, method)).or_default().push((ppl, worst));
        }
    }
    Ok(table)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, c) = v.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
    s / c as f64
}

const PALETTE: [RGBColor; 6] = [BLACK, RGBColor(120, 120, 120), BLUE, RED, GREEN, MAGENTA];

fn ppl_vs_tokens(args: &Args, table: &Table, n: usize) -> Result<PathBuf> {
    let path = args.out.join(format!("budget-ppl-n{n}.svg"));
    let series: Vec<(String, Vec<(f64, f64)>)> = args
        .methods
        .iter()
        .map(|m| {
            let pts = table
                .iter()
                .filter(|((_, k, name), _)| *k == n && name == m)
                .map(|((t, _, _), v)| (*t as f64, mean(v.iter().map(|p| p.0))))
                .collect();
            (m.clone(), pts)
        })
        .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    let ys: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).collect();
    let (lo, hi) = (ys.iter().cloned().fold(f64::MAX, f64::min) * 0.97, ys.iter().cloned().fold(0.0, f64::max) * 1.03);
    let target = path.clone();
    let root = SVGBackend::new(&target, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Evaluation perplexity vs calibration tokens, n = {n} (mean of seeds)"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((400f64..40_000f64).log_scale(), lo..hi)?;
    chart.configure_mesh().x_desc("calibration tokens (log)").y_desc("perplexity").label_style(("sans-serif", 14)).draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    drop(chart);
    Ok(path)
}

fn worst_vs_mean(args: &Args, table: &Table) -> Result<PathBuf> {
    let path = args.out.join("budget-worst-vs-mean.svg");
    let mut pts: Vec<(usize, f64, f64)> = Vec::new(); // (method index, mean, worst)
    for ((_, _, name), v) in table {
        if let Some(i) = args.methods.iter().position(|m| m == name) {
            pts.push((i, mean(v.iter().map(|p| p.0)), mean(v.iter().map(|p| p.1))));
        }
    }
    let (xlo, xhi) = (pts.iter().map(|p| p.1).fold(f64::MAX, f64::min) * 0.95, pts.iter().map(|p| p.1).fold(0.0, f64::max) * 1.05);
    let (ylo, yhi) = (pts.iter().map(|p| p.2).fold(f64::MAX, f64::min) * 0.95, pts.iter().map(|p| p.2).fold(0.0, f64::max) * 1.05);
    let target = path.clone();
    let root = SVGBackend::new(&target, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Worst-topic vs mean evaluation perplexity (n = 3, 6, 9; every budget)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())?;
    chart.configure_mesh().x_desc("mean perplexity (log)").y_desc("worst-topic perplexity (log)").label_style(("sans-serif", 14)).draw()?;
    for (i, name) in args.methods.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let mine: Vec<(f64, f64)> = pts.iter().filter(|p| p.0 == i).map(|p| (p.1, p.2)).collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(mine.iter().map(|&p| Circle::new(p, 4, c.filled())))?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    drop(chart);
    Ok(path)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let table = read(&args)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for n in [6, 9] {
        println!("wrote {}", ppl_vs_tokens(&args, &table, n)?.display());
    }
    println!("wrote {}", worst_vs_mean(&args, &table)?.display());
    Ok(())
}

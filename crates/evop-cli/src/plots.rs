//! Plots (plotters, SVG and PNG): GA convergence, which blocks each method removed, and
//! perplexity against sparsity per method.
use anyhow::Result;
use evop::search::GenerationReport;
use plotters::prelude::*;
use std::path::Path;

/// Draws `$body` into `$stem.svg` and `$stem.png`. Each file is drawn into a temporary sibling
/// (same extension, so the bitmap encoder is chosen as for the final name) that is renamed into
/// place once complete; on failure the temporary file is removed and the error names the file.
macro_rules! svg_and_png {
    ($stem:expr, $size:expr, |$root:ident| $body:block) => {{
        let tmp_of = |p: &Path| {
            let ext = p.extension().map_or_else(String::new, |e| e.to_string_lossy().into_owned());
            let stem = p.file_stem().map_or_else(|| "plot".into(), |s| s.to_string_lossy().into_owned());
            p.with_file_name(format!(".{stem}.tmp-{}.{ext}", std::process::id()))
        };
        let finish = |p: &Path, tmp: &Path, drawn: Result<()>| {
            // The backend is dropped by now, so nothing writes to `tmp` any more.
            let done = drawn.and_then(|()| std::fs::rename(tmp, p).map_err(anyhow::Error::from));
            if done.is_err() {
                let _ = std::fs::remove_file(tmp);
            }
            done.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        {
            let p = $stem.with_extension("svg");
            let tmp = tmp_of(&p);
            let drawn = (|| -> Result<()> {
                let $root = SVGBackend::new(&tmp, $size).into_drawing_area();
                $body
                $root.present()?;
                Ok(())
            })();
            finish(&p, &tmp, drawn)?;
        }
        {
            let p = $stem.with_extension("png");
            let tmp = tmp_of(&p);
            let drawn = (|| -> Result<()> {
                let $root = BitMapBackend::new(&tmp, $size).into_drawing_area();
                $body
                $root.present()?;
                Ok(())
            })();
            finish(&p, &tmp, drawn)?;
        }
    }};
}

/// Best and mean fitness per generation.
pub fn convergence(stem: &Path, history: &[GenerationReport]) -> Result<()> {
    if history.is_empty() {
        return Ok(());
    }
    let best: Vec<(f64, f64)> = history.iter().filter_map(|r| r.best.map(|b| (r.generation as f64, b))).collect();
    let mean: Vec<(f64, f64)> = history.iter().filter_map(|r| r.mean.map(|m| (r.generation as f64, m))).collect();
    let all: Vec<f64> = best.iter().chain(&mean).map(|p| p.1).collect();
    let (lo, hi) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let gens = history.last().map_or(1, |r| r.generation.max(1)) as f64;
    svg_and_png!(stem, (720, 420), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("EvoP search: calibration objective per generation", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..gens, (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("generation").y_desc("objective (nats)").label_style(("sans-serif", 14)).draw()?;
        chart.draw_series(LineSeries::new(best.clone(), BLUE.stroke_width(2)))?.label("best").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart.draw_series(LineSeries::new(mean.clone(), RED))?.label("population mean").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    });
    Ok(())
}

/// One row per method, one cell per block; removed blocks filled.
pub fn block_map(stem: &Path, num_blocks: usize, rows: &[(String, Vec<usize>)]) -> Result<()> {
    let height = 90 + 40 * rows.len() as u32;
    svg_and_png!(stem, (760, height), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Removed blocks per method", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(120)
            .build_cartesian_2d(0..num_blocks, 0..rows.len())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("block")
            .x_labels(num_blocks.min(32))
            .label_style(("sans-serif", 14))
            .y_labels(rows.len() + 1)
            .y_label_formatter(&|y| rows.get(*y).map(|r| r.0.clone()).unwrap_or_default())
            .draw()?;
        for (r, (_, removed)) in rows.iter().enumerate() {
            chart.draw_series((0..num_blocks).map(|b| {
                let style = if removed.contains(&b) { BLUE.filled() } else { RGBColor(225, 225, 225).filled() };
                Rectangle::new([(b, r), (b + 1, r + 1)], style)
            }))?;
        }
    });
    Ok(())
}

/// Perplexity against blocks removed, one line per method.
pub fn ppl_vs_sparsity(stem: &Path, series: &[(String, Vec<(usize, f64)>)]) -> Result<()> {
    let pts: Vec<&(usize, f64)> = series.iter().flat_map(|s| &s.1).collect();
    if pts.is_empty() {
        return Ok(());
    }
    let max_n = pts.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let hi = pts.iter().map(|p| p.1).fold(0f64, f64::max) * 1.05;
    let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min) * 0.95;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0), RGBColor(128, 0, 128), RGBColor(0, 128, 128)];
    svg_and_png!(stem, (720, 440), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Evaluation perplexity vs blocks removed", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_n as f64 + 0.5, (lo.max(1.0)..hi).log_scale())?;
        chart.configure_mesh().x_desc("blocks removed").y_desc("perplexity (log)").label_style(("sans-serif", 14)).draw()?;
        for (i, (name, s)) in series.iter().enumerate() {
            let c = palette[i % palette.len()];
            let data: Vec<(f64, f64)> = s.iter().map(|&(n, p)| (n as f64, p)).collect();
            chart.draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))?.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            chart.draw_series(data.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    });
    Ok(())
}

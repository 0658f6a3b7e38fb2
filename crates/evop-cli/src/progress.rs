//! Progress bars with ETA for long loops: an observer of the evolutionary search.
use evop::search::{BoxError, GenerationReport, Observer, StopReason};
use indicatif::{ProgressBar, ProgressStyle};

/// Shows the search's generations, best value and evaluations.
pub struct SearchProgress {
    bar: ProgressBar,
}

impl SearchProgress {
    pub fn new(generations: u64, label: &str) -> Self {
        let bar = ProgressBar::new(generations + 1);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] gen {pos}/{len} {msg} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Self { bar }
    }
}

impl Observer for SearchProgress {
    fn observe(&mut self, r: &GenerationReport) -> Result<(), BoxError> {
        self.bar.set_position(r.generation + 1);
        self.bar.set_message(format!(
            "best {:.4} mean {:.4} evals {} hits {} diversity {:.2}",
            r.best.unwrap_or(f64::NAN),
            r.mean.unwrap_or(f64::NAN),
            r.evaluations,
            r.cache_hits,
            r.diversity
        ));
        Ok(())
    }

    fn finish(&mut self, reason: StopReason, _last: &GenerationReport) -> Result<(), BoxError> {
        self.bar.finish_with_message(format!("stopped: {reason:?}"));
        Ok(())
    }
}

/// A spinner for a step without a known length.
pub fn spinner(msg: &str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    s.enable_steady_tick(std::time::Duration::from_millis(200));
    s.set_message(msg.to_string());
    s
}

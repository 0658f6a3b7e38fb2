//! When to stop: the criteria a caller sets ([`Termination`]) and the reason a run stopped
//! ([`StopReason`]). Criteria are checked after every generation (and once after initialisation); the
//! first one met, in the order they were added, is the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fitness::Direction;

/// A stopping criterion.
#[derive(Clone, Debug)]
pub enum Termination {
    /// Stop once this many generations (after initialisation) have run.
    MaxGenerations(u64),
    /// Stop once the fitness has been called on this many masks (any fidelity). A generation is never cut
    /// short, so a run may overshoot by up to one generation's evaluations.
    Budget(u64),
    /// Stop once the best value has not improved for this many generations.
    Stalled(u64),
    /// Stop once this much wall time has passed (summed over resumed runs).
    WallTime(Duration),
    /// Stop once the best value is at least as good as this one.
    TargetReached(f64),
    /// Stop once the flag is set (e.g. from a Ctrl-C handler); the current generation finishes first and
    /// its checkpoint is written.
    Interrupted(Arc<AtomicBool>),
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopReason {
    MaxGenerations,
    Budget,
    Stalled,
    WallTime,
    TargetReached,
    Interrupted,
}

/// What the criteria look at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    pub generation: u64,
    pub evaluations: u64,
    pub since_improvement: u64,
    pub elapsed: Duration,
    pub best: f64,
    pub direction: Direction,
}

impl Termination {
    pub(crate) fn check(&self, p: &Progress) -> Option<StopReason> {
        let hit = match self {
            Termination::MaxGenerations(g) => p.generation >= *g,
            Termination::Budget(b) => p.evaluations >= *b,
            Termination::Stalled(s) => p.since_improvement >= *s,
            Termination::WallTime(t) => p.elapsed >= *t,
            Termination::TargetReached(t) => p.best.is_finite() && !p.direction.is_better(*t, p.best),
            Termination::Interrupted(flag) => flag.load(Ordering::SeqCst),
        };
        hit.then_some(self.reason())
    }

    /// The reason this criterion reports when met.
    pub fn reason(&self) -> StopReason {
        match self {
            Termination::MaxGenerations(_) => StopReason::MaxGenerations,
            Termination::Budget(_) => StopReason::Budget,
            Termination::Stalled(_) => StopReason::Stalled,
            Termination::WallTime(_) => StopReason::WallTime,
            Termination::TargetReached(_) => StopReason::TargetReached,
            Termination::Interrupted(_) => StopReason::Interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            generation: 5,
            evaluations: 100,
            since_improvement: 3,
            elapsed: Duration::from_secs(2),
            best: 1.5,
            direction: Direction::Minimize,
        }
    }

    #[test]
    fn each_criterion_fires_at_its_threshold() {
        let p = progress();
        assert_eq!(Termination::MaxGenerations(5).check(&p), Some(StopReason::MaxGenerations));
        assert_eq!(Termination::MaxGenerations(6).check(&p), None);
        assert_eq!(Termination::Budget(100).check(&p), Some(StopReason::Budget));
        assert_eq!(Termination::Budget(101).check(&p), None);
        assert_eq!(Termination::Stalled(3).check(&p), Some(StopReason::Stalled));
        assert_eq!(Termination::Stalled(4).check(&p), None);
        assert_eq!(Termination::WallTime(Duration::from_secs(2)).check(&p), Some(StopReason::WallTime));
        assert_eq!(Termination::WallTime(Duration::from_secs(3)).check(&p), None);
        assert_eq!(Termination::TargetReached(1.5).check(&p), Some(StopReason::TargetReached));
        assert_eq!(Termination::TargetReached(1.4).check(&p), None);
        let max = Progress { direction: Direction::Maximize, ..p };
        assert_eq!(Termination::TargetReached(1.4).check(&max), Some(StopReason::TargetReached));
        assert_eq!(Termination::TargetReached(1.6).check(&max), None);
        let nan = Progress { best: f64::NAN, ..p };
        assert_eq!(Termination::TargetReached(1e9).check(&nan), None);
        let flag = Arc::new(AtomicBool::new(false));
        let t = Termination::Interrupted(flag.clone());
        assert_eq!(t.check(&p), None);
        flag.store(true, Ordering::SeqCst);
        assert_eq!(t.check(&p), Some(StopReason::Interrupted));
    }
}

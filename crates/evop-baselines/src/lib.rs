//! evop-baselines

//! evop-model

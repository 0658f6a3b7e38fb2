//! evop-data

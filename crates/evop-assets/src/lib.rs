//! evop-assets

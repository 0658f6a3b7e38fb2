//! evop-search

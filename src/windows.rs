//! Drawing a set of windows from a pool that may hold fewer than asked: the one fallback that the
//! healer's windows, the decision windows and SLEB's random windows inside EvoP's run share.
use crate::error::{EvopError, Result};
use evop_data::DataError;

/// Runs `draw(asked)`; if the pool holds fewer windows than asked but at least `min`, runs
/// `draw(available)` instead. Returns the result and how many windows were asked of `draw` the
/// time it succeeded. Any other error, and a pool below `min`, is returned as it came.
pub fn draw_at_most<T>(asked: usize, min: usize, mut draw: impl FnMut(usize) -> Result<T>) -> Result<(T, usize)> {
    match draw(asked) {
        Err(EvopError::Data(DataError::NotEnoughWindows { available, .. })) if available >= min.max(1) && available < asked => {
            Ok((draw(available)?, available))
        }
        other => other.map(|t| (t, asked)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize) -> impl FnMut(usize) -> Result<Vec<usize>> {
        move |k| {
            if k > size {
                Err(DataError::NotEnoughWindows { requested: k, available: size }.into())
            } else {
                Ok((0..k).collect())
            }
        }
    }

    #[test]
    fn a_large_pool_gives_what_was_asked() {
        assert_eq!(draw_at_most(4, 2, pool(10)).unwrap(), (vec![0, 1, 2, 3], 4));
    }

    #[test]
    fn a_small_pool_gives_all_it_holds() {
        assert_eq!(draw_at_most(8, 2, pool(3)).unwrap(), (vec![0, 1, 2], 3));
    }

    #[test]
    fn a_pool_below_the_minimum_is_an_error() {
        let e = draw_at_most(8, 2, pool(1)).unwrap_err();
        assert!(matches!(e, EvopError::Data(DataError::NotEnoughWindows { available: 1, .. })), "{e}");
        assert!(draw_at_most(8, 0, pool(0)).is_err(), "an empty pool gives nothing to draw");
    }
}

//! Checkpoints: after every generation the search writes its whole state (strategy state, RNG position,
//! memo cache, history, best-so-far) as JSON, atomically (temporary file in the same folder, fsync, then
//! rename), so a crash leaves either the previous checkpoint or the new one. A resumed run finishes
//! exactly as the uninterrupted one: fitness values are stored as IEEE bits and the ChaCha8 stream as
//! (seed, stream, word position).
//!
//! A checkpoint carries a fingerprint of the configuration (space, seed, direction, strategy and its
//! parameters, the fitness's maximum fidelity); resuming under another configuration is refused with
//! [`SearchError::CheckpointMismatch`] naming the first differing key.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::mask::Mask;
use crate::memo::MemoSnapshot;
use crate::observer::GenerationReport;

pub(crate) const FORMAT: u32 = 1;

/// Serde helper: `Vec<f64>` as IEEE-754 bit patterns, so NaN and infinities survive JSON exactly.
pub(crate) mod f64_bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<u64>::deserialize(d)?.into_iter().map(f64::from_bits).collect())
    }
}

/// The position of a ChaCha8 generator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RngState {
    seed: String,
    stream: u64,
    word_pos: String,
}

impl RngState {
    pub(crate) fn capture(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub(crate) fn restore(&self) -> Result<ChaCha8Rng> {
        let bad = || SearchError::CheckpointCorrupt("unreadable RNG state".into());
        if self.seed.len() != 64 || !self.seed.is_ascii() {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().map_err(|_| bad())?);
        Ok(rng)
    }
}

/// Everything a run needs to continue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "S: Serialize + DeserializeOwned")]
pub(crate) struct Checkpoint<S> {
    pub format: u32,
    pub fingerprint: Vec<(String, String)>,
    pub generation: u64,
    pub rng: RngState,
    pub state: S,
    pub memo: MemoSnapshot,
    pub history: Vec<GenerationReport>,
    pub best: Mask,
    pub best_bits: u64,
    pub last_improvement: u64,
    pub elapsed: Duration,
}

impl<S: Serialize + DeserializeOwned> Checkpoint<S> {
    /// Writes atomically: temporary file next to `path`, fsync, rename. On failure (a full disk) the
    /// temporary file is removed and `path` keeps the previous checkpoint.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|source| SearchError::CheckpointFormat { path: path.to_path_buf(), source })?;
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)
        });
        written.map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            SearchError::Io { path: path.to_path_buf(), source }
        })
    }

    /// Reads a checkpoint and checks its format version and fingerprint against `current`.
    pub(crate) fn read(path: &Path, current: &[(String, String)]) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| SearchError::Io { path: path.to_path_buf(), source })?;
        // Check the version and fingerprint before the strategy state, so that a checkpoint of another
        // strategy gets the clear mismatch error rather than a parse error.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            fingerprint: Vec<(String, String)>,
        }
        let parse_err = |source| SearchError::CheckpointFormat { path: path.to_path_buf(), source };
        let head: Head = serde_json::from_slice(&bytes).map_err(parse_err)?;
        if head.format != FORMAT {
            return Err(SearchError::CheckpointVersion { expected: FORMAT, found: head.format });
        }
        check_fingerprint(&head.fingerprint, current)?;
        serde_json::from_slice(&bytes).map_err(parse_err)
    }
}

fn check_fingerprint(stored: &[(String, String)], current: &[(String, String)]) -> Result<()> {
    let missing = || "<absent>".to_string();
    for (k, v) in current {
        let theirs = stored.iter().find(|(sk, _)| sk == k).map(|(_, sv)| sv.clone());
        if theirs.as_ref() != Some(v) {
            return Err(SearchError::CheckpointMismatch { key: k.clone(), checkpoint: theirs.unwrap_or_else(missing), current: v.clone() });
        }
    }
    if let Some((k, v)) = stored.iter().find(|(sk, _)| !current.iter().any(|(ck, _)| ck == sk)) {
        return Err(SearchError::CheckpointMismatch { key: k.clone(), checkpoint: v.clone(), current: missing() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn rng_state_round_trips_mid_block() {
        let mut a = ChaCha8Rng::seed_from_u64(7);
        for n in [0usize, 1, 5, 17, 40] {
            for _ in 0..n {
                a.random::<u32>();
            }
            let s: RngState = serde_json::from_str(&serde_json::to_string(&RngState::capture(&a)).unwrap()).unwrap();
            let mut b = s.restore().unwrap();
            let xs: Vec<u64> = (0..50).map(|_| a.random()).collect();
            let ys: Vec<u64> = (0..50).map(|_| b.random()).collect();
            assert_eq!(xs, ys);
        }
    }

    #[test]
    fn corrupt_rng_state_is_rejected() {
        let s = RngState { seed: "zz".into(), stream: 0, word_pos: "0".into() };
        assert!(matches!(s.restore(), Err(SearchError::CheckpointCorrupt(_))));
    }

    #[test]
    fn fingerprints_must_match_key_by_key() {
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let a = vec![kv("seed", "1"), kv("space.len", "32")];
        assert!(check_fingerprint(&a, &a).is_ok());
        let b = vec![kv("seed", "2"), kv("space.len", "32")];
        match check_fingerprint(&a, &b) {
            Err(SearchError::CheckpointMismatch { key, checkpoint, current }) => {
                assert_eq!((key.as_str(), checkpoint.as_str(), current.as_str()), ("seed", "1", "2"))
            }
            other => panic!("{other:?}"),
        }
        assert!(check_fingerprint(&a, &a[..1]).is_err());
        assert!(check_fingerprint(&a[..1], &a).is_err());
    }
}

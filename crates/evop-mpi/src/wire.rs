//! The wire format of the work queue: the four messages that cross between the root and a worker,
//! each a tag plus an array of `u64` words (one MPI datatype for everything).
//!
//! Only masks, fidelities and scalars cross: a task is `[header, id, fidelity, count, len, bits...]`
//! (each mask as `ceil(len / 64)` words of its removed-block bitset), a result is
//! `[header, id, seconds, count, values...]` (IEEE-754 bit patterns, so NaN and infinities arrive
//! exactly), a failure carries the worker's error text packed into words, and stop is a bare header.
//! The header word holds a magic number and the format version, so ranks running different builds
//! fail with a clear error instead of misreading each other. Every decoder checks lengths, counts and
//! bit ranges and names the field that is wrong.

use evop_search::{Fidelity, Mask, MaskSpace};

/// An MPI-style message tag.
pub type Tag = i32;

/// Root to worker: evaluate these masks.
pub const TAG_TASK: Tag = 3701;
/// Root to worker: leave the serving loop.
pub const TAG_STOP: Tag = 3702;
/// Worker to root: the values of a task.
pub const TAG_VALUES: Tag = 3711;
/// Worker to root: the task failed, with the error text.
pub const TAG_FAILED: Tag = 3712;

/// Format version; bump on any change to the layouts above.
pub const VERSION: u64 = 1;
const MAGIC: u64 = 0x4556_4F50_4D51_0000; // "EVOPMQ" in the high bytes
const HEADER: u64 = MAGIC | VERSION;

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {message} message: {detail}")]
pub struct WireError {
    /// Which message (`task`, `values`, ...).
    pub message: &'static str,
    /// What is wrong, naming the field and the value found.
    pub detail: String,
}

fn bad(message: &'static str, detail: impl Into<String>) -> WireError {
    WireError { message, detail: detail.into() }
}

/// A batch share handed to one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Identifier chosen by the root; the reply must carry it back.
    pub id: u64,
    pub fidelity: Fidelity,
    pub masks: Vec<Mask>,
}

/// What the root sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Task(Task),
    Stop,
}

/// What a worker sends back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// One value per mask of task `id`, in order, and the seconds the worker's fitness took.
    Values { id: u64, values: Vec<f64>, seconds: f64 },
    /// The worker's fitness failed on task `id`.
    Failed { id: u64, message: String },
}

fn check_header(message: &'static str, words: &[u64]) -> Result<(), WireError> {
    match words.first() {
        None => Err(bad(message, "empty message")),
        Some(&h) if h & !0xFFFF == MAGIC && h & 0xFFFF != VERSION => Err(bad(
            message,
            format!("format version {} from the peer, this build speaks version {VERSION} (mixed builds across ranks?)", h & 0xFFFF),
        )),
        Some(&h) if h != HEADER => Err(bad(message, format!("header word {h:#x} is not an evop-mpi header"))),
        Some(_) => Ok(()),
    }
}

fn words_per_mask(len: usize) -> usize {
    len.div_ceil(64)
}

impl Request {
    /// The message's tag and words.
    pub fn encode(&self) -> (Tag, Vec<u64>) {
        match self {
            Request::Stop => (TAG_STOP, vec![HEADER]),
            Request::Task(t) => {
                let len = t.masks.first().map_or(0, Mask::len);
                let per = words_per_mask(len);
                let mut w = Vec::with_capacity(5 + per * t.masks.len());
                w.extend([HEADER, t.id, t.fidelity.0, t.masks.len() as u64, len as u64]);
                for m in &t.masks {
                    assert_eq!(m.len(), len, "every mask of a task has the same length");
                    let start = w.len();
                    w.resize(start + per, 0);
                    for i in m.removed() {
                        w[start + i / 64] |= 1u64 << (i % 64);
                    }
                }
                (TAG_TASK, w)
            }
        }
    }

    /// Decodes a message the root sent.
    pub fn decode(tag: Tag, words: &[u64]) -> Result<Request, WireError> {
        match tag {
            TAG_STOP => {
                check_header("stop", words)?;
                if words.len() != 1 {
                    return Err(bad("stop", format!("{} words, expected 1", words.len())));
                }
                Ok(Request::Stop)
            }
            TAG_TASK => {
                const M: &str = "task";
                check_header(M, words)?;
                if words.len() < 5 {
                    return Err(bad(M, format!("{} words, shorter than the 5-word head", words.len())));
                }
                let (id, fidelity, count, len) = (words[1], Fidelity(words[2]), words[3], words[4]);
                let len = usize::try_from(len).ok().filter(|&l| l > 0 && l <= 1 << 20).ok_or_else(|| bad(M, format!("mask length {len} is out of range")))?;
                let per = words_per_mask(len);
                let body = &words[5..];
                if count == 0 || body.len() as u64 != count.saturating_mul(per as u64) {
                    return Err(bad(M, format!("count {count} masks of length {len} need {} words, found {}", count.saturating_mul(per as u64), body.len())));
                }
                let masks = body.chunks(per).enumerate().map(|(k, bits)| decode_mask(len, bits).map_err(|d| bad(M, format!("mask {k}: {d}")))).collect::<Result<_, _>>()?;
                Ok(Request::Task(Task { id, fidelity, masks }))
            }
            other => Err(bad("request", format!("unexpected tag {other} from the root"))),
        }
    }
}

fn decode_mask(len: usize, bits: &[u64]) -> Result<Mask, String> {
    let tail = len % 64;
    if tail != 0 && bits[bits.len() - 1] >> tail != 0 {
        return Err(format!("bits set past length {len}"));
    }
    let removed: Vec<usize> =
        bits.iter().enumerate().flat_map(|(w, &word)| (0..64).filter(move |b| word >> b & 1 == 1).map(move |b| w * 64 + b)).collect();
    let space = MaskSpace::new(len, removed.len(), []).map_err(|e| e.to_string())?;
    Mask::from_removed(&space, &removed).map_err(|e| e.to_string())
}

impl Reply {
    /// The message's tag and words.
    pub fn encode(&self) -> (Tag, Vec<u64>) {
        match self {
            Reply::Values { id, values, seconds } => {
                let mut w = Vec::with_capacity(4 + values.len());
                w.extend([HEADER, *id, seconds.to_bits(), values.len() as u64]);
                w.extend(values.iter().map(|v| v.to_bits()));
                (TAG_VALUES, w)
            }
            Reply::Failed { id, message } => {
                let bytes = message.as_bytes();
                let mut w = vec![HEADER, *id, bytes.len() as u64];
                w.extend(bytes.chunks(8).map(|c| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(b)
                }));
                (TAG_FAILED, w)
            }
        }
    }

    /// Decodes a message a worker sent.
    pub fn decode(tag: Tag, words: &[u64]) -> Result<Reply, WireError> {
        match tag {
            TAG_VALUES => {
                const M: &str = "values";
                check_header(M, words)?;
                if words.len() < 4 {
                    return Err(bad(M, format!("{} words, shorter than the 4-word head", words.len())));
                }
                let count = words[3];
                if words.len() as u64 - 4 != count {
                    return Err(bad(M, format!("count {count}, but {} values follow", words.len() - 4)));
                }
                let seconds = f64::from_bits(words[2]);
                Ok(Reply::Values { id: words[1], values: words[4..].iter().map(|&b| f64::from_bits(b)).collect(), seconds })
            }
            TAG_FAILED => {
                const M: &str = "failed";
                check_header(M, words)?;
                if words.len() < 3 {
                    return Err(bad(M, format!("{} words, shorter than the 3-word head", words.len())));
                }
                let n = words[2];
                if (words.len() as u64 - 3) != n.div_ceil(8) {
                    return Err(bad(M, format!("text of {n} bytes does not fit {} words", words.len() - 3)));
                }
                let mut bytes: Vec<u8> = words[3..].iter().flat_map(|w| w.to_le_bytes()).collect();
                bytes.truncate(n as usize);
                let message = String::from_utf8(bytes).map_err(|e| bad(M, format!("text is not UTF-8: {e}")))?;
                Ok(Reply::Failed { id: words[1], message })
            }
            other => Err(bad("reply", format!("unexpected tag {other} from a worker"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(len: usize, removed: &[usize]) -> Mask {
        Mask::from_removed(&MaskSpace::new(len, removed.len(), []).unwrap(), removed).unwrap()
    }

    #[test]
    fn tasks_round_trip_across_word_boundaries() {
        for len in [1usize, 5, 63, 64, 65, 130] {
            let ms = vec![mask(len, &[0]), mask(len, &[len - 1]), mask(len, &[]), mask(len, &(0..len).step_by(3).collect::<Vec<_>>())];
            let r = Request::Task(Task { id: 42, fidelity: Fidelity(7), masks: ms });
            let (tag, w) = r.encode();
            assert_eq!(tag, TAG_TASK);
            assert_eq!(w.len(), 5 + 4 * len.div_ceil(64));
            assert_eq!(Request::decode(tag, &w).unwrap(), r);
        }
        let (tag, w) = Request::Stop.encode();
        assert_eq!(Request::decode(tag, &w).unwrap(), Request::Stop);
    }

    #[test]
    fn replies_round_trip_bit_exactly() {
        let v = Reply::Values { id: 9, values: vec![1.5, f64::NAN, f64::NEG_INFINITY, -0.0, 1e-310], seconds: 0.25 };
        let (tag, w) = v.encode();
        match Reply::decode(tag, &w).unwrap() {
            Reply::Values { id, values, seconds } => {
                assert_eq!((id, seconds), (9, 0.25));
                let bits: Vec<u64> = values.iter().map(|x| x.to_bits()).collect();
                assert_eq!(bits, [1.5f64, f64::NAN, f64::NEG_INFINITY, -0.0, 1e-310].map(f64::to_bits));
            }
            other => panic!("{other:?}"),
        }
        for text in ["", "x", "eight by", "device lost: cuda:3 — out of memory"] {
            let f = Reply::Failed { id: 3, message: text.to_string() };
            let (tag, w) = f.encode();
            assert_eq!(Reply::decode(tag, &w).unwrap(), f);
        }
    }

    #[test]
    fn malformed_messages_name_what_is_wrong() {
        let (tag, mut w) = Request::Task(Task { id: 1, fidelity: Fidelity(1), masks: vec![mask(10, &[2])] }).encode();
        let err = |tag, w: &[u64]| Request::decode(tag, w).unwrap_err().to_string();
        assert!(err(tag, &w[..4]).contains("shorter than the 5-word head"));
        assert!(err(tag, &w[..5]).contains("need 1 words, found 0"));
        let mut stray = w.clone();
        stray[5] |= 1 << 12;
        assert!(err(tag, &stray).contains("bits set past length 10"));
        w[0] = MAGIC | 9;
        assert!(err(tag, &w).contains("format version 9"));
        w[0] = 12345;
        assert!(err(tag, &w).contains("not an evop-mpi header"));
        assert!(err(TAG_VALUES, &[HEADER]).contains("unexpected tag"));
        assert!(err(TAG_TASK, &[]).contains("empty message"));
        let r = |tag, w: &[u64]| Reply::decode(tag, w).unwrap_err().to_string();
        assert!(r(TAG_VALUES, &[HEADER, 1, 0, 3, 0]).contains("count 3, but 1 values follow"));
        assert!(r(TAG_FAILED, &[HEADER, 1, 20, 0]).contains("text of 20 bytes"));
        assert!(r(TAG_FAILED, &[HEADER, 1, 2, 0xFFFF]).contains("not UTF-8"));
        assert!(r(TAG_TASK, &[HEADER]).contains("unexpected tag 3701"));
    }
}

//! Writing a pruned model back as GGUF (the llama.cpp format), optionally with some tensors
//! replaced by new values (a healed block's patched `mlp.down_proj`).
//!
//! [`write_pruned_gguf`] reads a GGUF file of an architecture evop loads and writes a copy that
//! lacks the removed blocks:
//! - every tensor of a kept block is copied byte for byte in its original quantisation (nothing is
//!   dequantised or requantised), renamed `blk.{old}.*` -> `blk.{new}.*` with the kept blocks
//!   renumbered from 0 in order; every other tensor (`token_embd`, `output_norm`, `output`, ...)
//!   is copied as it is; the tensors keep their order and their dimensions and types;
//! - `{arch}.block_count` is set to the number of kept blocks (in its original integer type);
//!   every per-block metadata array (an array whose key starts with `{arch}.` and whose length is
//!   the old block count, e.g. a per-layer `{arch}.attention.head_count_kv`) keeps the kept
//!   blocks' entries; every other key (tokenizer, chat template, `general.*`) is copied byte for
//!   byte, in its original order;
//! - provenance: [`REMOVED_BLOCKS_KEY`] (the removed block indices of the source),
//!   [`ORIGINAL_BLOCK_COUNT_KEY`] and [`SOURCE_KEY`] (the source's file name) are appended;
//!   such keys already in the source (a pruned model pruned again) are replaced;
//! - the output is GGUF v3, little-endian, with the source's `general.alignment` (default 32):
//!   the data section and every tensor's data start on an aligned offset, each tensor padded with
//!   zeros to the alignment, tensors laid out contiguously in the order of the tensor directory
//!   (what llama.cpp's reader checks).
//!
//! [`write_pruned_gguf_patched`] does the same and also replaces tensors given by their Hugging
//! Face names (in the source's block numbering) with new values, **re-quantised** to the source
//! tensor's ggml type with candle's quantiser (`QTensor::quantize`, the reference ggml algorithms:
//! round-to-nearest per block for Q4_0..Q8_0, the scale/min search of `quantize_row_q*_K_ref`
//! for the K-quants, no importance matrix). A patched tensor keeps its place, name (renumbered),
//! dimensions and type; only its bytes change (same byte size). llama `attn_q`/`attn_k` weights,
//! which llama.cpp stores with their rows permuted for interleaved RoPE, are permuted the same
//! way (the inverse of [`crate::io::gguf::unpermute_rows`]) before quantising, so a patched Q/K
//! weight is given in Hugging Face row order like every other tensor. The new names of the
//! re-quantised tensors are recorded under [`PATCHED_TENSORS_KEY`]. Every tensor not patched is
//! still copied byte for byte.
//!
//! The file is written to a temporary sibling (`.NAME.evop-tmp-PID-N`, created like
//! [`std::fs::File::create`]: mode 0666 under the umask), synced, and then linked into place
//! without replacing anything: an existing destination is never overwritten, and an interrupted
//! write never leaves a partial file under the destination's name.
use crate::error::{ModelError, Result};
use crate::io::gguf::{gguf_name, GgufFile};
use crate::mask::BlockMask;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Array of the source's removed block indices (u32), ascending.
pub const REMOVED_BLOCKS_KEY: &str = "general.evop.removed_blocks";
/// The source's block count (u32).
pub const ORIGINAL_BLOCK_COUNT_KEY: &str = "general.evop.original_block_count";
/// The source's file name (string).
pub const SOURCE_KEY: &str = "general.evop.source";
/// Array of the new GGUF names of the re-quantised (patched) tensors, in file order (strings);
/// written only when some tensor was patched.
pub const PATCHED_TENSORS_KEY: &str = "general.evop.patched_tensors";
/// Prefix of the keys this writer owns (dropped from the source, then written anew).
const EVOP_PREFIX: &str = "general.evop.";

/// The GGUF version written.
const GGUF_VERSION: u32 = 3;
/// Alignment when the source has no `general.alignment` (GGUF's default).
const DEFAULT_ALIGNMENT: u64 = 32;

// GGUF metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Whether `path` is a file that starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The block count (`{arch}.block_count`) of a GGUF file of an architecture evop loads.
pub fn gguf_block_count(path: &Path) -> Result<usize> {
    let gguf = GgufFile::open(path)?;
    gguf.arch_spec()?;
    let key = format!("{}.block_count", gguf.architecture()?);
    let v = gguf.meta(&key)?;
    int_value(v).map(|n| n as usize).ok_or_else(|| gguf_err(path, format!("metadata `{key}` is not a non-negative integer")))
}

/// Writes the model of the GGUF file `source` without the blocks `mask` removes to the new GGUF
/// file `dest` (see the module documentation). Errors name the file and the tensor or metadata
/// key at fault; `dest` must not exist.
pub fn write_pruned_gguf(source: &Path, mask: &BlockMask, dest: &Path) -> Result<()> {
    write_pruned_gguf_patched(source, mask, &HashMap::new(), dest)
}

/// [`write_pruned_gguf`] with the tensors of `patched` replaced: each key is a Hugging Face name
/// in the **source's** block numbering (`model.layers.12.mlp.down_proj.weight`), each value a
/// tensor of that weight's Hugging Face shape (any float dtype, any device). Each is re-quantised
/// to the source tensor's ggml type and written in place of the source's bytes (see the module
/// documentation; llama Q/K weights are given in Hugging Face row order and permuted here as
/// llama.cpp expects). The new names of the patched tensors are recorded under
/// [`PATCHED_TENSORS_KEY`] when `patched` is not empty.
///
/// Everything is checked (and quantised) before anything is written. Errors (naming the file and
/// the tensor): a name that maps to no tensor of the file, a tensor of a block `mask` removes, a
/// shape other than the source tensor's, a non-float or non-finite tensor, a quantisation whose
/// byte size differs from the source tensor's; `dest` must not exist.
pub fn write_pruned_gguf_patched(
    source: &Path,
    mask: &BlockMask,
    patched: &HashMap<String, Tensor>,
    dest: &Path,
) -> Result<()> {
    refuse_existing(dest)?;
    let plan = Plan::new(source, mask, patched)?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let (tmp, file) = create_temp(dir, dest)?;
    let written = plan.write(file, dest);
    let published = written.and_then(|()| publish(&tmp, dest));
    let _ = std::fs::remove_file(&tmp);
    published
}

fn gguf_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), message: message.into() }
}

fn refuse_existing(dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(ModelError::io(
            dest,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "refusing to overwrite an existing file"),
        ));
    }
    Ok(())
}

/// A non-negative integer metadata value.
fn int_value(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// One metadata entry as it is in the source: the key's bytes, the value type and the byte range
/// of the value (after the type) in the header.
struct RawKv {
    key_bytes: Vec<u8>,
    key: String,
    vtype: u32,
    value: Range<usize>,
}

/// One tensor directory entry as it is in the source.
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    dtype: u32,
    offset: u64,
}

/// A bounds-checked little-endian reader over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated header: {n} bytes needed at offset {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.u64()?;
        self.take(n)
    }
    /// Skips one value of type `vtype`.
    fn skip_value(&mut self, vtype: u32, depth: usize) -> std::result::Result<(), String> {
        match vtype {
            T_U8 | T_I8 | T_BOOL => self.take(1).map(drop),
            T_U16 | T_I16 => self.take(2).map(drop),
            T_U32 | T_I32 | T_F32 => self.take(4).map(drop),
            T_U64 | T_I64 | T_F64 => self.take(8).map(drop),
            T_STRING => self.bytes().map(drop),
            T_ARRAY => {
                if depth > 64 {
                    return Err("arrays nested too deeply".into());
                }
                let (elem, len) = (self.u32()?, self.u64()?);
                match fixed_size(elem) {
                    Some(size) => self.take(len.checked_mul(size).ok_or("array too long")?).map(drop),
                    None => (0..len).try_for_each(|_| self.skip_value(elem, depth + 1)),
                }
            }
            t => Err(format!("unknown value type {t}")),
        }
    }
}

/// Byte size of one value of a fixed-size type.
fn fixed_size(vtype: u32) -> Option<u64> {
    match vtype {
        T_U8 | T_I8 | T_BOOL => Some(1),
        T_U16 | T_I16 => Some(2),
        T_U32 | T_I32 | T_F32 => Some(4),
        T_U64 | T_I64 | T_F64 => Some(8),
        _ => None,
    }
}

/// How candle reads a GGUF string (trailing NULs dropped, lossy UTF-8), so names match its maps.
fn candle_string(bytes: &[u8]) -> String {
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1] == 0 {
        end -= 1;
    }
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Everything needed to write the pruned file, checked before anything is written.
struct Plan {
    source: PathBuf,
    header: Vec<u8>,
    alignment: u64,
    /// The data of each written tensor, in order.
    data: Vec<TensorData>,
}

/// Where a written tensor's bytes come from.
enum TensorData {
    /// Copied from the source: (source name, data offset in the file, byte size).
    Copy(String, u64, u64),
    /// Re-quantised bytes of a patched tensor.
    Bytes(Vec<u8>),
}

impl Plan {
    fn new(source: &Path, mask: &BlockMask, patched: &HashMap<String, Tensor>) -> Result<Self> {
        let gguf = GgufFile::open(source)?;
        gguf.arch_spec()?;
        let arch = gguf.architecture()?;
        let err = |m: String| gguf_err(source, m);
        let content = &gguf.content;

        // The block count and the mask.
        let count_key = format!("{arch}.block_count");
        let old_l = int_value(gguf.meta(&count_key)?)
            .ok_or_else(|| err(format!("metadata `{count_key}` is not a non-negative integer")))? as usize;
        if mask.num_blocks() != old_l {
            return Err(err(format!(
                "the block mask has {} entries but `{count_key}` is {old_l}",
                mask.num_blocks()
            )));
        }
        let new_l = old_l - mask.num_removed();
        if new_l == 0 {
            return Err(err(format!("the block mask removes all {old_l} blocks")));
        }
        let new_index: Vec<Option<usize>> = {
            let mut v = vec![None; old_l];
            for (new, old) in mask.kept().enumerate() {
                v[old] = Some(new);
            }
            v
        };

        // Patched tensors: GGUF name -> HF name, each checked against the directory and the mask.
        let mut patch_names: HashMap<String, &str> = HashMap::with_capacity(patched.len());
        let mut hf_sorted: Vec<&String> = patched.keys().collect();
        hf_sorted.sort();
        for hf in hf_sorted {
            let name = match gguf_name(hf) {
                None => {
                    return Err(err(format!(
                        "patched tensor `{hf}` maps to no GGUF tensor name (not a Hugging Face name of a Llama-family weight)"
                    )))
                }
                Some(n) if !content.tensor_infos.contains_key(&n) => {
                    return Err(err(format!("patched tensor `{hf}` maps to `{n}`, which is not a tensor of the file")))
                }
                Some(n) => n,
            };
            if let Some(idx) = block_of(&name) {
                if new_index.get(idx).is_some_and(Option::is_none) {
                    return Err(err(format!(
                        "patched tensor `{hf}` (`{name}`) is in block {idx}, which the block mask removes"
                    )));
                }
            }
            patch_names.insert(name, hf.as_str());
        }

        // Alignment as candle reads it (and so as the source's data offsets were computed).
        let alignment = match content.metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match int_value(v) {
                Some(a) if a > 0 => a,
                _ => return Err(err(format!("metadata `general.alignment` is {v:?}, not a positive integer"))),
            },
        };

        // The header as it is in the file, read again to keep key order and exact bytes.
        let mut f = std::fs::File::open(source).map_err(|e| ModelError::io(source, e))?;
        let file_len = f.metadata().map_err(|e| ModelError::io(source, e))?.len();
        let header_len = content.tensor_data_offset.min(file_len);
        let mut raw = vec![0u8; header_len as usize];
        f.read_exact(&mut raw).map_err(|e| ModelError::io(source, e))?;
        let (kvs, tensors) = scan_header(&raw, alignment, content.tensor_data_offset).map_err(&err)?;

        // Metadata: block count rewritten, per-block arrays filtered, the rest copied.
        let mut out_kvs: Vec<(Vec<u8>, u32, Vec<u8>)> = Vec::with_capacity(kvs.len() + 3);
        for kv in &kvs {
            if kv.key.starts_with(EVOP_PREFIX) {
                continue;
            }
            let bytes = &raw[kv.value.clone()];
            let value = if kv.key == count_key {
                encode_int(kv.vtype, new_l as u64).ok_or_else(|| err(format!("metadata `{count_key}` has value type {}", kv.vtype)))?
            } else if kv.key.starts_with(&format!("{arch}.")) && kv.vtype == T_ARRAY && array_len(bytes) == Some(old_l as u64) {
                filter_array(bytes, mask).map_err(|m| err(format!("metadata `{}`: {m}", kv.key)))?
            } else {
                bytes.to_vec()
            };
            out_kvs.push((kv.key_bytes.clone(), kv.vtype, value));
        }
        let removed: Vec<u32> = mask.removed().map(|i| i as u32).collect();
        let mut arr = Vec::new();
        put_u32(&mut arr, T_U32);
        put_u64(&mut arr, removed.len() as u64);
        removed.iter().for_each(|&i| put_u32(&mut arr, i));
        out_kvs.push((REMOVED_BLOCKS_KEY.as_bytes().to_vec(), T_ARRAY, arr));
        out_kvs.push((ORIGINAL_BLOCK_COUNT_KEY.as_bytes().to_vec(), T_U32, (old_l as u32).to_le_bytes().to_vec()));
        let name = source.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut s = Vec::new();
        put_str(&mut s, name.as_bytes());
        out_kvs.push((SOURCE_KEY.as_bytes().to_vec(), T_STRING, s));
        let mut patched_new_names = Vec::new();

        // Tensors: removed blocks dropped, kept blocks renamed, sizes from the ggml types.
        let mut out_tensors: Vec<(String, &RawTensor, u64)> = Vec::new();
        let mut data = Vec::new();
        for t in &tensors {
            let info = content.tensor_infos.get(&t.name).ok_or_else(|| err(format!("tensor `{}` is not in the directory", t.name)))?;
            let new_name = match t.name.strip_prefix("blk.") {
                None => t.name.clone(),
                Some(rest) => {
                    let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
                    let idx: usize = idx.parse().map_err(|_| err(format!("tensor `{}`: block index `{idx}` is not a number", t.name)))?;
                    if idx >= old_l {
                        return Err(err(format!("tensor `{}`: block {idx} is out of range, `{count_key}` is {old_l}", t.name)));
                    }
                    match new_index[idx] {
                        None => continue,
                        Some(new) => format!("blk.{new}.{tail}"),
                    }
                }
            };
            let elems = info.shape.elem_count();
            let (bs, ts) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
            if elems % bs != 0 {
                return Err(err(format!("tensor `{}`: {elems} elements are not a whole number of {:?} blocks of {bs}", t.name, info.ggml_dtype)));
            }
            let size = (elems / bs * ts) as u64;
            let start = content.tensor_data_offset.checked_add(t.offset).filter(|s| s.checked_add(size).is_some_and(|e| e <= file_len));
            let start = start.ok_or_else(|| err(format!("tensor `{}`: {size} bytes at data offset {} run past the end of the file ({file_len} bytes)", t.name, t.offset)))?;
            match patch_names.get(&t.name) {
                None => data.push(TensorData::Copy(t.name.clone(), start, size)),
                Some(hf) => {
                    let bytes = requantise(source, &gguf, &arch, &t.name, hf, &patched[*hf])?;
                    if bytes.len() as u64 != size {
                        return Err(err(format!(
                            "patched tensor `{hf}` (`{}`): re-quantised to {:?} it is {} bytes, the source tensor {size}",
                            t.name,
                            info.ggml_dtype,
                            bytes.len()
                        )));
                    }
                    data.push(TensorData::Bytes(bytes));
                    patched_new_names.push(new_name.clone());
                }
            }
            out_tensors.push((new_name, t, size));
        }
        if !patched_new_names.is_empty() {
            let mut arr = Vec::new();
            put_u32(&mut arr, T_STRING);
            put_u64(&mut arr, patched_new_names.len() as u64);
            patched_new_names.iter().for_each(|n| put_str(&mut arr, n.as_bytes()));
            out_kvs.push((PATCHED_TENSORS_KEY.as_bytes().to_vec(), T_ARRAY, arr));
        }

        // The new header.
        let mut h = Vec::with_capacity(raw.len());
        h.extend_from_slice(b"GGUF");
        put_u32(&mut h, GGUF_VERSION);
        put_u64(&mut h, out_tensors.len() as u64);
        put_u64(&mut h, out_kvs.len() as u64);
        for (key, vtype, value) in &out_kvs {
            put_str(&mut h, key);
            put_u32(&mut h, *vtype);
            h.extend_from_slice(value);
        }
        let mut offset = 0u64;
        for (name, t, size) in &out_tensors {
            put_str(&mut h, name.as_bytes());
            put_u32(&mut h, t.dims.len() as u32);
            t.dims.iter().for_each(|&d| put_u64(&mut h, d));
            put_u32(&mut h, t.dtype);
            put_u64(&mut h, offset);
            offset += size.div_ceil(alignment) * alignment;
        }
        let padded = (h.len() as u64).div_ceil(alignment) * alignment;
        h.resize(padded as usize, 0);
        Ok(Self { source: source.to_path_buf(), header: h, alignment, data })
    }

    /// Writes the header and the tensors' bytes to `file` (a temporary file for `dest`) and syncs it.
    fn write(&self, file: std::fs::File, dest: &Path) -> Result<()> {
        let io_dest = |e| ModelError::io(dest, e);
        let mut src = std::fs::File::open(&self.source).map_err(|e| ModelError::io(&self.source, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&self.header).map_err(io_dest)?;
        let mut buf = Vec::new();
        for data in &self.data {
            let bytes: &[u8] = match data {
                TensorData::Copy(name, start, size) => {
                    buf.resize(*size as usize, 0);
                    src.seek(SeekFrom::Start(*start)).and_then(|_| src.read_exact(&mut buf)).map_err(|e| {
                        gguf_err(&self.source, format!("tensor `{name}`: reading {size} bytes at offset {start}: {e}"))
                    })?;
                    &buf
                }
                TensorData::Bytes(bytes) => bytes,
            };
            w.write_all(bytes).map_err(io_dest)?;
            let size = bytes.len() as u64;
            let pad = size.div_ceil(self.alignment) * self.alignment - size;
            w.write_all(&vec![0u8; pad as usize]).map_err(io_dest)?;
        }
        let file = w.into_inner().map_err(|e| io_dest(e.into_error()))?;
        file.sync_all().map_err(io_dest)
    }
}

/// The block index of a GGUF tensor name `blk.{i}.*`.
fn block_of(gguf_name: &str) -> Option<usize> {
    gguf_name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// llama.cpp's Q/K row permutation for interleaved RoPE (`convert_hf_to_gguf.py`,
/// `LlamaModel.permute`): rows ordered `(head, half, i)` become `(head, i, half)`; the inverse of
/// [`crate::io::gguf::unpermute_rows`].
fn permute_rows(w: &Tensor, heads: usize) -> std::result::Result<Tensor, String> {
    let (rows, cols) = w.dims2().map_err(|e| e.to_string())?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(format!("{rows} rows do not split into {heads} heads of even size"));
    }
    let permuted = w
        .reshape((heads, 2, rows / heads / 2, cols))
        .and_then(|t| t.transpose(1, 2))
        .and_then(|t| t.reshape((rows, cols)))
        .and_then(|t| t.contiguous());
    permuted.map_err(|e| e.to_string())
}

/// The bytes of the patched tensor `hf` (the source's `name`) quantised to the source tensor's
/// ggml type, in the source's layout; every check of its value is here.
fn requantise(source: &Path, gguf: &GgufFile, arch: &str, name: &str, hf: &str, value: &Tensor) -> Result<Vec<u8>> {
    let err = |m: String| gguf_err(source, format!("patched tensor `{hf}` (`{name}`): {m}"));
    let content: &Content = &gguf.content;
    let info = &content.tensor_infos[name];
    let want = info.shape.dims();
    if !value.dtype().is_float() {
        return Err(err(format!("has dtype {:?}, not a float type", value.dtype())));
    }
    if value.dims() != want {
        return Err(err(format!("has shape {:?}, the source tensor {want:?}", value.dims())));
    }
    let to_f32 = value.to_device(&Device::Cpu).and_then(|t| t.to_dtype(candle_core::DType::F32)).and_then(|t| t.contiguous());
    let mut t = to_f32.map_err(|e| err(format!("cannot be read as f32 on the CPU: {e}")))?;
    let values = t.flatten_all().and_then(|f| f.to_vec1::<f32>()).map_err(|e| err(e.to_string()))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(err(format!("element {i} is {}, not finite", values[i])));
    }
    let permutes = gguf.arch_spec()?.gguf_permutes_qk;
    let heads_key = if permutes && name.ends_with(".attn_q.weight") {
        Some(format!("{arch}.attention.head_count"))
    } else if permutes && name.ends_with(".attn_k.weight") {
        Some(format!("{arch}.attention.head_count_kv"))
    } else {
        None
    };
    if let Some(key) = heads_key {
        // `head_count_kv` defaults to `head_count`, as llama.cpp reads it.
        let head_count = format!("{arch}.attention.head_count");
        let v = content.metadata.get(&key).or_else(|| content.metadata.get(&head_count));
        let heads = v.and_then(int_value).ok_or_else(|| err(format!("metadata `{key}` is missing or not an integer")))?;
        t = permute_rows(&t, heads as usize).map_err(|m| err(format!("cannot permute its rows as llama.cpp does: {m}")))?;
    }
    let dtype: GgmlDType = info.ggml_dtype;
    let q = QTensor::quantize(&t, dtype).map_err(|e| err(format!("cannot be quantised to {dtype:?}: {e}")))?;
    let bytes = q.data().map_err(|e| err(format!("quantised to {dtype:?}: {e}")))?;
    Ok(bytes.into_owned())
}

/// Reads the metadata entries and the tensor directory from the raw header of a v2 or v3 file.
fn scan_header(raw: &[u8], alignment: u64, data_offset: u64) -> std::result::Result<(Vec<RawKv>, Vec<RawTensor>), String> {
    let mut c = Cursor { buf: raw, pos: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("no GGUF magic".into());
    }
    let version = c.u32()?;
    if version != 2 && version != 3 {
        return Err(format!("GGUF version {version} cannot be rewritten (versions 2 and 3 can)"));
    }
    let (n_tensors, n_kv) = (c.u64()?, c.u64()?);
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key_bytes = c.bytes()?.to_vec();
        let key = candle_string(&key_bytes);
        let vtype = c.u32()?;
        let start = c.pos;
        c.skip_value(vtype, 0).map_err(|m| format!("metadata `{key}`: {m}"))?;
        if kvs.iter().any(|k: &RawKv| k.key == key) {
            return Err(format!("metadata `{key}` appears twice"));
        }
        kvs.push(RawKv { key_bytes, key, vtype, value: start..c.pos });
    }
    let mut tensors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = candle_string(c.bytes()?);
        let n_dims = c.u32()?;
        let dims = (0..n_dims).map(|_| c.u64()).collect::<std::result::Result<Vec<_>, _>>().map_err(|m| format!("tensor `{name}`: {m}"))?;
        let dtype = c.u32()?;
        let offset = c.u64()?;
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        tensors.push(RawTensor { name, dims, dtype, offset });
    }
    let end = (c.pos as u64).div_ceil(alignment) * alignment;
    if end != data_offset {
        return Err(format!("the header ends at {end} (aligned) but the tensor data starts at {data_offset}"));
    }
    Ok((kvs, tensors))
}

/// The length of an encoded array value.
fn array_len(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(4..12)?.try_into().ok()?))
}

/// An encoded array value with only the kept blocks' elements.
fn filter_array(value: &[u8], mask: &BlockMask) -> std::result::Result<Vec<u8>, String> {
    let mut c = Cursor { buf: value, pos: 0 };
    let (elem, len) = (c.u32()?, c.u64()?);
    let mut out = Vec::with_capacity(value.len());
    put_u32(&mut out, elem);
    put_u64(&mut out, (mask.num_blocks() - mask.num_removed()) as u64);
    for i in 0..len as usize {
        let start = c.pos;
        c.skip_value(elem, 1)?;
        if mask.is_kept(i) {
            out.extend_from_slice(&value[start..c.pos]);
        }
    }
    Ok(out)
}

/// `n` encoded as the integer type `vtype`, if it is one and `n` fits.
fn encode_int(vtype: u32, n: u64) -> Option<Vec<u8>> {
    Some(match vtype {
        T_U8 => u8::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_I8 => i8::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_U16 => u16::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_I16 => i16::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_U32 => u32::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_I32 => i32::try_from(n).ok()?.to_le_bytes().to_vec(),
        T_U64 => n.to_le_bytes().to_vec(),
        T_I64 => i64::try_from(n).ok()?.to_le_bytes().to_vec(),
        _ => return None,
    })
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A new temporary file beside `dest`, opened like [`std::fs::File::create`] (mode 0666 under
/// the umask) but never reusing an existing path.
fn create_temp(dir: &Path, dest: &Path) -> Result<(PathBuf, std::fs::File)> {
    let name = dest.file_name().map_or_else(|| "model.gguf".into(), |n| n.to_string_lossy().into_owned());
    for n in 0..1000u32 {
        let tmp = dir.join(format!(".{name}.evop-tmp-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ModelError::io(&tmp, e)),
        }
    }
    Err(ModelError::io(dir, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary file name")))
}

/// Gives the complete temporary file the name `dest` unless `dest` exists by now: a hard link
/// (which never replaces), or a rename after a last check where links are not supported.
fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => refuse_existing(dest),
        Err(_) => {
            refuse_existing(dest)?;
            std::fs::rename(tmp, dest).map_err(|e| ModelError::io(dest, e))
        }
    }?;
    if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Best effort: make the new name durable (not possible on every platform).
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_filtered_by_element() {
        let mask = BlockMask::from_removed(3, &[1]).unwrap();
        // An array of 3 strings "a", "bb", "ccc".
        let mut v = Vec::new();
        put_u32(&mut v, T_STRING);
        put_u64(&mut v, 3);
        for s in ["a", "bb", "ccc"] {
            put_str(&mut v, s.as_bytes());
        }
        let mut want = Vec::new();
        put_u32(&mut want, T_STRING);
        put_u64(&mut want, 2);
        put_str(&mut want, b"a");
        put_str(&mut want, b"ccc");
        assert_eq!(array_len(&v), Some(3));
        assert_eq!(filter_array(&v, &mask).unwrap(), want);
    }

    #[test]
    fn gguf_names_invert_hf_names() {
        // The pairs of `io::gguf`'s `hf_name` (its table, read the other way); the integration
        // test `gguf_requant` patches every tensor of SmolLM2 by its HF name, checking the rest.
        let pairs = [
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"),
            ("self_attn.k_proj.bias", "attn_k.bias"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.o_proj.bias", "attn_output.bias"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
            ("input_layernorm.weight", "attn_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ];
        for (hf, gguf) in pairs {
            assert_eq!(gguf_name(&format!("model.layers.17.{hf}")).unwrap(), format!("blk.17.{gguf}"));
        }
        assert_eq!(gguf_name("model.embed_tokens.weight").unwrap(), "token_embd.weight");
        assert_eq!(gguf_name("model.norm.weight").unwrap(), "output_norm.weight");
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        let bad = [
            "model.layers.x.mlp.down_proj.weight",
            "model.layers.+3.mlp.down_proj.weight",
            "model.layers..mlp.down_proj.weight",
            "model.layers.03.mlp.down_proj.weight",
            "model.layers.3.mlp.nope",
            "nope",
        ];
        for bad in bad {
            assert!(gguf_name(bad).is_none(), "{bad}");
        }
        assert_eq!(block_of("blk.12.ffn_down.weight"), Some(12));
        assert_eq!(block_of("token_embd.weight"), None);
    }

    #[test]
    fn permute_inverts_unpermute() {
        let w = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
        for heads in [1, 2, 3, 6] {
            let p = permute_rows(&crate::io::gguf::unpermute_rows(&w, heads).unwrap(), heads).unwrap();
            assert_eq!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap(), "{heads} heads");
        }
        assert!(permute_rows(&w, 5).is_err());
        assert!(permute_rows(&w, 0).is_err());
    }

    #[test]
    fn integers_keep_their_type() {
        assert_eq!(encode_int(T_U32, 27).unwrap(), 27u32.to_le_bytes());
        assert_eq!(encode_int(T_I64, 27).unwrap(), 27i64.to_le_bytes());
        assert!(encode_int(T_U8, 300).is_none());
        assert!(encode_int(T_STRING, 1).is_none());
    }
}

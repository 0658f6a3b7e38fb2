//! Building a `tokenizers::Tokenizer` from the byte-level BPE embedded in a GGUF file
//! (`tokenizer.ggml.model = gpt2`).
//!
//! A GGUF stores the vocabulary, the merges and the token types, but not the normalizer or the
//! pre-tokenizer: `tokenizer.ggml.pre` only names the pre-tokenizer (llama.cpp compiles the regex
//! in, `llama-vocab.cpp`). [`pipeline_for_pre`] maps each name evop knows to the normalizer and
//! pre-tokenizer of the model's original `tokenizer.json`:
//!
//! | `pre` | normalizer | pre-tokenizer |
//! |---|---|---|
//! | `smollm` (SmolLM2) | none | [split digits individually; byte-level with the GPT-2 regex, no prefix space] |
//! | `qwen2`, `deepseek-r1-qwen` (Qwen2 / Qwen2.5) | NFC | [Split([`QWEN2_SPLIT_REGEX`], isolated); byte-level without regex, no prefix space] |
//! | `llama-bpe`, `llama3`, `llama-v3`, `smaug-bpe` (Llama 3) | none | [Split([`LLAMA3_SPLIT_REGEX`], isolated); byte-level without regex, no prefix space] |
//! | `default`, `gpt2`, missing key (GPT-2) | none | byte-level with the GPT-2 regex, no prefix space |
//!
//! Any other value falls back to the GPT-2 row with a `tracing` warning naming it. The decoder is
//! always byte-level and no BOS is added (`encode` passes `add_special_tokens = false`).
//!
//! Added tokens follow the GGUF token types the way Hugging Face does: control tokens (type 3,
//! `<|endoftext|>`, `<|im_start|>`, `<|fim_prefix|>`) are added as special tokens, user-defined
//! tokens (type 4, Qwen2.5's `<tool_call>`) as plain added tokens; both are matched whole in the
//! raw (unnormalized) input text, before pre-tokenization.
use crate::error::{ModelError, Result};
use crate::io::gguf::GgufFile;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>` and the like): added as special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens (Qwen2.5's `<tool_call>`): added as non-special tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Qwen2's split regex: the `pre_tokenizer` of Qwen2's `tokenizer.json` and `PRETOKENIZE_REGEX` of
/// Hugging Face's `Qwen2Tokenizer`. llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2` keeps it as a comment
/// and runs the same pattern with `(?i:'s|...)` spelled out as `'[sS]|...`. Digits are single tokens.
pub const QWEN2_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex (its `tokenizer.json`; llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): as Qwen2's,
/// but numbers in groups of up to three digits.
pub const LLAMA3_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer families evop knows, by `tokenizer.ggml.pre` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2: byte-level with the GPT-2 regex (`default`, `gpt2`, or no `pre` key).
    Gpt2,
    /// SmolLM2 (`smollm`): digits split individually, then GPT-2 byte-level.
    SmolLm,
    /// Qwen2 / Qwen2.5 (`qwen2`, `deepseek-r1-qwen`): NFC, then [`QWEN2_SPLIT_REGEX`].
    Qwen2,
    /// Llama 3 (`llama-bpe`, `llama3`, `llama-v3`, `smaug-bpe`): [`LLAMA3_SPLIT_REGEX`].
    Llama3,
}

impl PreTokenizerKind {
    /// The family for a `tokenizer.ggml.pre` value, `None` when evop does not know it.
    pub fn from_pre(pre: &str) -> Option<Self> {
        match pre {
            "default" | "gpt2" => Some(Self::Gpt2),
            "smollm" => Some(Self::SmolLm),
            "qwen2" | "deepseek-r1-qwen" => Some(Self::Qwen2),
            "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => Some(Self::Llama3),
            _ => None,
        }
    }
}

/// The normalizer and pre-tokenizer for a `tokenizer.ggml.pre` value (see the module table). An
/// unknown value gets the GPT-2 pre-tokenizer and a warning.
pub fn pipeline_for_pre(pre: &str) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper)> {
    let kind = PreTokenizerKind::from_pre(pre).unwrap_or_else(|| {
        tracing::warn!(
            pre,
            "GGUF tokenizer.ggml.pre `{pre}` is not known to evop; using the GPT-2 byte-level pre-tokenizer, \
             token ids may differ from the model's own tokenizer"
        );
        PreTokenizerKind::Gpt2
    });
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Tokenizer(format!("split regex: {e}")))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            // add_prefix_space false, trim_offsets false, use_regex false (the split did the work).
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])))
    };
    // add_prefix_space false, trim_offsets true, use_regex true (the GPT-2 regex).
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    Ok(match kind {
        PreTokenizerKind::Gpt2 => (None, gpt2()),
        PreTokenizerKind::SmolLm => (
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), gpt2()])),
        ),
        PreTokenizerKind::Qwen2 => (Some(NormalizerWrapper::NFC(NFC)), split(QWEN2_SPLIT_REGEX)?),
        PreTokenizerKind::Llama3 => (None, split(LLAMA3_SPLIT_REGEX)?),
    })
}

/// The tokenizer embedded in a GGUF file.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
    let model = gguf.meta("tokenizer.ggml.model")?.to_string().map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    if model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model `{model}` is not supported (only gpt2-style byte-level BPE)"
        )));
    }
    let pre = gguf
        .meta("tokenizer.ggml.pre")
        .ok()
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "default".into());
    let tokens = gguf.meta_strings("tokenizer.ggml.tokens")?;
    let merges = gguf.meta_strings("tokenizer.ggml.merges")?;
    let types = gguf.meta_ints("tokenizer.ggml.token_type").unwrap_or_default();
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("malformed merge `{m}`")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    let (normalizer, pre_tok) = pipeline_for_pre(&pre)?;
    // The normalizer goes in before the added tokens (they are matched on the raw text anyway).
    tok.with_normalizer(normalizer).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == wanted)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(added(TOKEN_TYPE_CONTROL, true)).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.add_tokens(added(TOKEN_TYPE_USER_DEFINED, false)).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tok)
}

/// Encodes `text` without special tokens.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?.get_ids().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let (_, p) = pipeline_for_pre(pre).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Char).into_iter().map(|(w, _, _)| w.to_string()).collect()
    }

    #[test]
    fn each_pre_value_maps_to_its_family() {
        assert_eq!(PreTokenizerKind::from_pre("qwen2"), Some(PreTokenizerKind::Qwen2));
        assert_eq!(PreTokenizerKind::from_pre("smollm"), Some(PreTokenizerKind::SmolLm));
        assert_eq!(PreTokenizerKind::from_pre("llama-bpe"), Some(PreTokenizerKind::Llama3));
        assert_eq!(PreTokenizerKind::from_pre("default"), Some(PreTokenizerKind::Gpt2));
        assert_eq!(PreTokenizerKind::from_pre("made-up"), None);
        assert!(pipeline_for_pre("made-up").is_ok(), "unknown values fall back to GPT-2");
        assert!(matches!(pipeline_for_pre("qwen2").unwrap().0, Some(NormalizerWrapper::NFC(_))));
        assert!(pipeline_for_pre("smollm").unwrap().0.is_none());
    }

    #[test]
    fn qwen2_split_follows_the_regex() {
        // Byte-level spelling: a space is `Ġ`, a newline `Ċ`.
        assert_eq!(pieces("qwen2", "DON'T 12345"), ["DON", "'T", "Ġ", "1", "2", "3", "4", "5"]);
        assert_eq!(pieces("qwen2", "a  b\n\n  c"), ["a", "Ġ", "Ġb", "ĊĊ", "Ġ", "Ġc"]);
        // Punctuation takes a leading space and trailing newlines; a letter run takes one leading non-letter.
        assert_eq!(pieces("qwen2", "x = {};\n"), ["x", "Ġ=", "Ġ{};Ċ"]);
        assert_eq!(pieces("qwen2", "(foo"), ["(foo"]);
        assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(pieces("smollm", "12345"), ["1", "2", "3", "4", "5"]);
    }
}

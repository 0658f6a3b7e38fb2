//! Building a `tokenizers::Tokenizer` from the byte-level BPE embedded in a GGUF file
//! (`tokenizer.ggml.model = gpt2`). For `pre = smollm` (and other GPT-2-style vocabularies that
//! split digits) the pre-tokenizer is [split digits individually; byte-level with the GPT-2 regex,
//! no prefix space], matching the original `tokenizer.json` of SmolLM2.
use crate::error::{ModelError, Result};
use crate::io::gguf::GgufFile;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>` and the like).
const TOKEN_TYPE_CONTROL: i64 = 3;

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
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre_tok = match pre.as_str() {
        "smollm" | "smaug-bpe" | "llama-bpe" | "qwen2" | "deepseek-llm" => PreTokenizerWrapper::Sequence(
            Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level]),
        ),
        _ => byte_level,
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
        .filter_map(|(i, _)| tokens.get(i))
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(special).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tok)
}

/// Encodes `text` without special tokens.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?.get_ids().to_vec())
}

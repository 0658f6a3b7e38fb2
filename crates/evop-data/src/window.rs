//! Candidate calibration windows: token sequences of exactly `seqlen` ids cut from a corpus, each
//! with its provenance (source, document, title, topic, token offset).
//!
//! Documents are tokenized one by one with the target model's tokenizer, without special tokens
//! (as in the perplexity protocol). Two ways to cut ([`Boundary`]):
//! - [`Boundary::WithinDocument`]: windows never cross a document; each document is cut into
//!   consecutive non-overlapping windows from its first token.
//! - [`Boundary::AcrossDocuments`]: the documents' tokens are concatenated with the tokens of the
//!   separator (default `"\n\n"`, tokenized alone) between them, and the stream is cut into
//!   consecutive windows, like SLEB and EvoP cut their calibration stream. Provenance names the
//!   document where the window starts; `doc_span` says how many documents it touches.
//!
//! The tail shorter than `seqlen` (per document, or of the stream) is dropped or padded
//! ([`Remainder`]). A padded window records its real length in [`Window::n_tokens`]; padding is at
//! the end, so with causal attention the real positions are unaffected.
use crate::corpus::{Corpus, DocMeta};
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// Whether windows may cross document boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boundary {
    WithinDocument,
    AcrossDocuments,
}

/// What happens to a tail shorter than `seqlen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remainder {
    /// The tail is discarded.
    Drop,
    /// The tail becomes a window padded at the end with `pad_id`.
    Pad { pad_id: u32 },
}

/// How to cut windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowOptions {
    /// Tokens per window.
    pub seqlen: usize,
    pub boundary: Boundary,
    pub remainder: Remainder,
    /// Text placed between documents when cutting across boundaries.
    pub separator: String,
}

impl WindowOptions {
    /// Defaults: within documents, remainder dropped, separator `"\n\n"`.
    pub fn new(seqlen: usize) -> Self {
        Self { seqlen, boundary: Boundary::WithinDocument, remainder: Remainder::Drop, separator: "\n\n".into() }
    }

    /// Sets the boundary rule.
    pub fn boundary(mut self, boundary: Boundary) -> Self {
        self.boundary = boundary;
        self
    }

    /// Sets the remainder rule.
    pub fn remainder(mut self, remainder: Remainder) -> Self {
        self.remainder = remainder;
        self
    }

    /// Checks `seqlen >= 2` (a window must predict at least one token).
    pub fn validate(&self) -> Result<()> {
        if self.seqlen < 2 {
            return Err(DataError::param("seqlen", self.seqlen, "a window needs at least 2 tokens"));
        }
        Ok(())
    }
}

/// Where a window came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Source (corpus) name of the document the window starts in.
    pub source: String,
    /// File-order index of that document in its source.
    pub doc_index: usize,
    pub title: Option<String>,
    pub topic: Option<String>,
    /// Token offset of the window's first token in that document's tokens (across boundaries it
    /// may point into the separator that follows the document).
    pub token_offset: usize,
    /// Number of documents the window touches (1 within documents).
    pub doc_span: usize,
}

/// A window of `seqlen` token ids with its provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub ids: Vec<u32>,
    /// Real (non-padding) tokens at the start of `ids`.
    pub n_tokens: usize,
    pub provenance: Provenance,
}

impl Window {
    /// The real tokens (without padding).
    pub fn real_ids(&self) -> &[u32] {
        &self.ids[..self.n_tokens.min(self.ids.len())]
    }
}

/// Tokenizes every document without special tokens (batched, in document order).
pub fn tokenize_corpus(corpus: &Corpus, tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    let encodings = tokenizer
        .encode_batch(corpus.texts(), false)
        .map_err(|e| DataError::Tokenizer(format!("encoding corpus `{}`: {e}", corpus.name)))?;
    Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
}

/// Tokenizes the corpus and cuts windows: [`tokenize_corpus`] then [`windows_from_tokens`].
pub fn make_windows(corpus: &Corpus, tokenizer: &Tokenizer, opts: &WindowOptions) -> Result<Vec<Window>> {
    opts.validate()?;
    let tokens = tokenize_corpus(corpus, tokenizer)?;
    let separator = match opts.boundary {
        Boundary::AcrossDocuments if !opts.separator.is_empty() => evop_model::encode(tokenizer, &opts.separator)?,
        _ => Vec::new(),
    };
    windows_from_tokens(corpus, &tokens, &separator, opts)
}

/// Cuts windows from already tokenized documents (`tokens[i]` belongs to `corpus.documents[i]`);
/// `separator` holds the separator's token ids (used only across boundaries).
pub fn windows_from_tokens(
    corpus: &Corpus,
    tokens: &[Vec<u32>],
    separator: &[u32],
    opts: &WindowOptions,
) -> Result<Vec<Window>> {
    opts.validate()?;
    if tokens.len() != corpus.documents.len() {
        return Err(DataError::param(
            "tokens",
            format!("{} token lists", tokens.len()),
            format!("corpus `{}` has {} documents", corpus.name, corpus.documents.len()),
        ));
    }
    let seqlen = opts.seqlen;
    let pad = |chunk: &[u32]| -> Option<(Vec<u32>, usize)> {
        match opts.remainder {
            _ if chunk.len() == seqlen => Some((chunk.to_vec(), seqlen)),
            Remainder::Drop => None,
            Remainder::Pad { .. } if chunk.is_empty() => None,
            Remainder::Pad { pad_id } => {
                let mut ids = chunk.to_vec();
                ids.resize(seqlen, pad_id);
                Some((ids, chunk.len()))
            }
        }
    };
    let provenance = |meta: &DocMeta, token_offset: usize, doc_span: usize| Provenance {
        source: meta.source.clone(),
        doc_index: meta.index,
        title: meta.title.clone(),
        topic: meta.topic.clone(),
        token_offset,
        doc_span,
    };
    let mut windows = Vec::new();
    match opts.boundary {
        Boundary::WithinDocument => {
            for (doc, ids) in corpus.documents.iter().zip(tokens) {
                for (i, chunk) in ids.chunks(seqlen).enumerate() {
                    if let Some((ids, n_tokens)) = pad(chunk) {
                        windows.push(Window { ids, n_tokens, provenance: provenance(&doc.meta, i * seqlen, 1) });
                    }
                }
            }
        }
        Boundary::AcrossDocuments => {
            // The stream: non-empty documents, each followed by the separator except the last.
            let docs: Vec<usize> = (0..tokens.len()).filter(|&i| !tokens[i].is_empty()).collect();
            let mut stream = Vec::new();
            let mut starts = Vec::with_capacity(docs.len());
            for (k, &d) in docs.iter().enumerate() {
                starts.push(stream.len());
                stream.extend_from_slice(&tokens[d]);
                if k + 1 < docs.len() {
                    stream.extend_from_slice(separator);
                }
            }
            // Index (into `docs`) of the segment containing stream position `p`.
            let segment = |p: usize| starts.partition_point(|&s| s <= p).saturating_sub(1);
            for (i, chunk) in stream.chunks(seqlen).enumerate() {
                let start = i * seqlen;
                if let Some((ids, n_tokens)) = pad(chunk) {
                    let first = segment(start);
                    let last = segment(start + chunk.len() - 1);
                    let meta = &corpus.documents[docs[first]].meta;
                    windows.push(Window {
                        ids,
                        n_tokens,
                        provenance: provenance(meta, start - starts[first], last - first + 1),
                    });
                }
            }
        }
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> (Corpus, Vec<Vec<u32>>) {
        let c = Corpus::from_texts("src", &["a", "b", "c"]);
        (c, vec![vec![1, 2, 3, 4, 5], vec![], vec![6, 7, 8]])
    }

    #[test]
    fn within_documents_drop_or_pad_the_tail() {
        let (c, t) = corpus();
        let w = windows_from_tokens(&c, &t, &[], &WindowOptions::new(2)).unwrap();
        let ids: Vec<_> = w.iter().map(|w| w.ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2], vec![3, 4], vec![6, 7]]);
        assert_eq!(w[1].provenance.token_offset, 2);
        assert_eq!(w[2].provenance.doc_index, 2);

        let opts = WindowOptions::new(2).remainder(Remainder::Pad { pad_id: 0 });
        let w = windows_from_tokens(&c, &t, &[], &opts).unwrap();
        assert_eq!(w.len(), 5);
        assert_eq!(w[2].ids, vec![5, 0]);
        assert_eq!(w[2].n_tokens, 1);
        assert_eq!(w[2].real_ids(), &[5]);
    }

    #[test]
    fn across_documents_inserts_the_separator_and_tracks_the_start() {
        let (c, t) = corpus();
        let opts = WindowOptions::new(4).boundary(Boundary::AcrossDocuments);
        // Stream: 1 2 3 4 5 9 6 7 8 (empty document skipped).
        let w = windows_from_tokens(&c, &t, &[9], &opts).unwrap();
        let ids: Vec<_> = w.iter().map(|w| w.ids.clone()).collect();
        assert_eq!(ids, vec![vec![1, 2, 3, 4], vec![5, 9, 6, 7]]);
        assert_eq!(w[1].provenance.doc_index, 0);
        assert_eq!(w[1].provenance.token_offset, 4);
        assert_eq!(w[1].provenance.doc_span, 2);
        let padded = windows_from_tokens(&c, &t, &[9], &opts.clone().remainder(Remainder::Pad { pad_id: 0 })).unwrap();
        assert_eq!(padded[2].ids, vec![8, 0, 0, 0]);
        assert_eq!(padded[2].provenance.doc_index, 2);
        assert_eq!(padded[2].provenance.token_offset, 2);
    }

    #[test]
    fn bad_options_are_errors() {
        let (c, t) = corpus();
        assert!(windows_from_tokens(&c, &t, &[], &WindowOptions::new(1)).unwrap_err().to_string().contains("seqlen"));
        assert!(windows_from_tokens(&c, &t[..2], &[], &WindowOptions::new(2)).is_err());
    }
}

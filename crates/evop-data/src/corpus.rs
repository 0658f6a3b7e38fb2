//! Documents and the readers that make them: a plain text file, a directory of text files, a
//! JSONL file with a chosen text field. (The Wikipedia leads JSON has its own module,
//! [`crate::wikipedia`].)
//!
//! A [`Corpus`] is an ordered list of [`Document`]s. Order is file order and is part of the
//! contract: the evaluation split ([`crate::split`]) and window provenance refer to
//! [`DocMeta::index`], the position of the document in the file (or directory listing) it was
//! read from, which stays attached to the document through every split.
use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where a document came from and what it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocMeta {
    /// Name of the source (corpus) the document was read from, e.g. `wikipedia-leads`.
    pub source: String,
    /// Position of the document in its source, in file order (0-based).
    pub index: usize,
    /// Title (article title, file name, or a JSONL `title` field), when known.
    pub title: Option<String>,
    /// Topic (Wikipedia topic, or a JSONL `topic` field), when known.
    pub topic: Option<String>,
}

/// One document: text plus metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub text: String,
    pub meta: DocMeta,
}

/// An ordered collection of documents from one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corpus {
    /// Name of the corpus (the source name, or `source/calibration`, `source/evaluation` after a split).
    pub name: String,
    pub documents: Vec<Document>,
}

impl Corpus {
    /// A corpus from in-memory texts (titles and topics unknown); `index` is the position in `texts`.
    pub fn from_texts<S: AsRef<str>>(name: impl Into<String>, texts: &[S]) -> Self {
        let name = name.into();
        let documents = texts
            .iter()
            .enumerate()
            .map(|(index, t)| Document {
                text: t.as_ref().to_string(),
                meta: DocMeta { source: name.clone(), index, title: None, topic: None },
            })
            .collect();
        Self { name, documents }
    }

    /// One plain UTF-8 text file as one document, titled with the file name. Source name: the file name.
    pub fn from_text_file(path: &Path) -> Result<Self> {
        let name = file_name(path);
        let text = read_utf8(path)?;
        let doc = Document { text, meta: DocMeta { source: name.clone(), index: 0, title: Some(name.clone()), topic: None } };
        Self { name, documents: vec![doc] }.non_empty()
    }

    /// Every regular, non-hidden file directly inside `dir` (no recursion), sorted by file name, one
    /// document each, titled with the file name. Source name: the directory name. Files must be UTF-8.
    pub fn from_text_dir(dir: &Path) -> Result<Self> {
        let name = file_name(dir);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut documents = Vec::with_capacity(files.len());
        for (index, path) in files.iter().enumerate() {
            documents.push(Document {
                text: read_utf8(path)?,
                meta: DocMeta { source: name.clone(), index, title: Some(file_name(path)), topic: None },
            });
        }
        Self { name, documents }.non_empty()
    }

    /// A JSON-lines file: one JSON object per non-blank line, the document text in the string field
    /// `text_field`. String fields `title` and `topic`, where present, become metadata. `index` counts
    /// records (blank lines are skipped and not counted). Source name: the file name.
    pub fn from_jsonl(path: &Path, text_field: &str) -> Result<Self> {
        let name = file_name(path);
        let content = read_utf8(path)?;
        let mut documents = Vec::new();
        for (line_no, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || Some(format!("line {}", line_no + 1));
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| DataError::parse(path, at(), format!("not JSON: {e}")))?;
            let obj = value.as_object().ok_or_else(|| DataError::parse(path, at(), "record is not a JSON object"))?;
            let text = match obj.get(text_field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(DataError::parse(
                        path,
                        at(),
                        format!("field `{text_field}` is {}, not a string", json_kind(other)),
                    ))
                }
                None => return Err(DataError::parse(path, at(), format!("missing field `{text_field}`"))),
            };
            let string_field = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
            documents.push(Document {
                text,
                meta: DocMeta {
                    source: name.clone(),
                    index: documents.len(),
                    title: string_field("title"),
                    topic: string_field("topic"),
                },
            });
        }
        Self { name, documents }.non_empty()
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether there is no document.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// The texts in order.
    pub fn texts(&self) -> Vec<&str> {
        self.documents.iter().map(|d| d.text.as_str()).collect()
    }

    /// The texts joined with `"\n\n"` (the standard perplexity protocol's joining).
    pub fn joined_text(&self) -> String {
        evop_model::perplexity::join_texts(&self.texts())
    }

    /// Errors with [`DataError::EmptyCorpus`] when no document has non-whitespace text.
    pub fn non_empty(self) -> Result<Self> {
        if self.documents.iter().all(|d| d.text.trim().is_empty()) {
            return Err(DataError::EmptyCorpus { source_name: self.name });
        }
        Ok(self)
    }
}

pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        DataError::parse(path, Some(format!("byte {}", e.utf8_error().valid_up_to())), "not valid UTF-8 text")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reads_field_and_metadata_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("docs.jsonl");
        std::fs::write(&p, "{\"body\": \"one\", \"title\": \"A\"}\n\n{\"body\": \"two\", \"topic\": \"T\"}\n").unwrap();
        let c = Corpus::from_jsonl(&p, "body").unwrap();
        assert_eq!(c.texts(), vec!["one", "two"]);
        assert_eq!(c.documents[0].meta.title.as_deref(), Some("A"));
        assert_eq!(c.documents[1].meta.topic.as_deref(), Some("T"));
        assert_eq!(c.documents[1].meta.index, 1);

        std::fs::write(&p, "{\"body\": \"one\"}\n{\"text\": \"two\"}\n").unwrap();
        let e = Corpus::from_jsonl(&p, "body").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("`body`"), "{e}");
        std::fs::write(&p, "{\"body\": 3}\n").unwrap();
        let e = Corpus::from_jsonl(&p, "body").unwrap_err().to_string();
        assert!(e.contains("a number"), "{e}");
        std::fs::write(&p, "not json\n").unwrap();
        assert!(Corpus::from_jsonl(&p, "body").unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn directory_is_read_in_name_order_and_rejects_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::write(dir.path().join(".hidden"), "skip").unwrap();
        let c = Corpus::from_text_dir(dir.path()).unwrap();
        assert_eq!(c.texts(), vec!["first", "second"]);
        assert_eq!(c.documents[1].meta.title.as_deref(), Some("b.txt"));
        let one = Corpus::from_text_file(&dir.path().join("a.txt")).unwrap();
        assert_eq!(one.texts(), vec!["first"]);

        std::fs::write(dir.path().join("c.txt"), [0xffu8, 0xfe]).unwrap();
        let e = Corpus::from_text_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("c.txt") && e.contains("UTF-8"), "{e}");
        let e = Corpus::from_text_file(&dir.path().join("missing.txt")).unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn empty_corpus_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.txt");
        std::fs::write(&p, "  \n").unwrap();
        assert!(matches!(Corpus::from_text_file(&p), Err(DataError::EmptyCorpus { .. })));
    }
}

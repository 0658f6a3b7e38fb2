//! all-MiniLM-L6-v2 through candle matches sentence-transformers (fixture written by
//! scripts/make_fixtures.py) within 1e-4 cosine; padding to the longest in a batch changes nothing;
//! batches embedded concurrently give the bits of each batch alone.
use evop_data::{MiniLm, MiniLmOptions};
use ndarray::Array2;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_the_sentence_transformers_fixture() -> anyhow::Result<()> {
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    ))?)?;
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone())?;
    let expected: Vec<Vec<f32>> = serde_json::from_value(fixture["embeddings"].clone())?;
    let max_length = fixture["max_length"].as_u64().unwrap() as usize;

    let dir = evop_assets::AssetStore::from_env().minilm_dir()?;
    let model = MiniLm::load(&dir, MiniLmOptions { max_length, batch_size: 3, ..Default::default() })?;
    let got: Array2<f32> = model.embed_texts(&sentences)?;
    assert_eq!(got.dim(), (sentences.len(), 384));
    let mut min_cos = f64::INFINITY;
    for (i, want) in expected.iter().enumerate() {
        let row = got.row(i).to_vec();
        let cos = cosine(&row, want);
        min_cos = min_cos.min(cos);
        assert!(cos > 1.0 - 1e-4, "sentence {i} ({:?}): cosine {cos}", sentences[i]);
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i} norm {norm}");
    }

    eprintln!("MiniLM vs sentence-transformers: min cosine {min_cos:.8} over {} sentences", sentences.len());

    // Batches run concurrently: each batch's rows are bit for bit those of the batch run alone.
    for (c, chunk) in sentences.chunks(3).enumerate() {
        let alone = model.embed_texts(chunk)?;
        for (j, row) in alone.rows().into_iter().enumerate() {
            assert_eq!(row, got.row(3 * c + j), "sentence {}: concurrent batch differs from the batch alone", 3 * c + j);
        }
    }

    // One at a time (no padding at all) gives the same rows as padded batches.
    for (i, s) in sentences.iter().enumerate() {
        let alone = model.embed_texts(&[s])?;
        let cos = cosine(&alone.row(0).to_vec(), &got.row(i).to_vec());
        assert!(cos > 1.0 - 1e-6, "sentence {i}: batched vs alone cosine {cos}");
    }
    Ok(())
}

#[test]
fn bad_options_and_directories_are_errors() {
    let e = MiniLm::load(std::path::Path::new("/nonexistent/minilm"), MiniLmOptions::default()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/minilm/config.json"), "{e}");
    let e = MiniLm::load(std::path::Path::new("/tmp"), MiniLmOptions { batch_size: 0, ..Default::default() })
        .err()
        .unwrap();
    assert!(e.to_string().contains("batch_size"), "{e}");
}

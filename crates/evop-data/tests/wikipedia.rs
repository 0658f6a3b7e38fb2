//! The real Wikipedia leads and SmolLM2's tokenizer (assets from `evop_assets::AssetStore::from_env`):
//! file order, the documented split, windows that point back at their document, a CCDS set built
//! with MiniLM end to end, and the hidden-state embedder against `evop_model::hidden_states`.
use evop_data::{
    make_windows, read_wikipedia_leads, tokenize_corpus, Boundary, CalibrationSet, CcdsOptions, CcdsSampler, Corpus,
    Embedder, HiddenStateEmbedder, MiniLm, MiniLmOptions, SplitRule, WindowOptions, WIKIPEDIA_TOPICS,
};
use std::collections::BTreeMap;

fn smollm2_tokenizer() -> anyhow::Result<tokenizers::Tokenizer> {
    let gguf = evop_model::gguf::GgufFile::open(&evop_assets::AssetStore::from_env().smollm2_gguf()?)?;
    Ok(evop_model::tokenizer::tokenizer_from_gguf(&gguf)?)
}

fn leads() -> anyhow::Result<Corpus> {
    Ok(read_wikipedia_leads(&evop_assets::AssetStore::from_env().wikipedia_leads()?)?)
}

#[test]
fn leads_split_into_documented_calibration_and_evaluation_sets() -> anyhow::Result<()> {
    let corpus = leads()?;
    assert_eq!(corpus.len(), 10_033);
    assert_eq!(corpus.documents[0].meta.title.as_deref(), Some("20th-century classical music"));
    let mut topics: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &corpus.documents {
        *topics.entry(d.meta.topic.as_deref().unwrap_or("-")).or_default() += 1;
    }
    assert_eq!(topics.len(), 12);
    assert_eq!(topics["People"], 1828);
    assert_eq!(topics["Mathematics"], 256);
    assert!(WIKIPEDIA_TOPICS.iter().all(|t| topics.contains_key(t)));

    let split = SplitRule::default().split(&corpus)?;
    assert_eq!((split.evaluation.len(), split.calibration.len()), (1004, 9029));
    let text = split.evaluation_text();
    assert!(text.starts_with(&corpus.documents[0].text));
    assert!(text.contains(&format!("{}\n\n{}", corpus.documents[0].text, corpus.documents[10].text)));
    let by_topic = split.evaluation_texts_by_topic();
    assert_eq!(by_topic.len(), 12);
    Ok(())
}

#[test]
fn windows_point_back_at_their_tokens() -> anyhow::Result<()> {
    let tok = smollm2_tokenizer()?;
    let split = SplitRule::default().split(&leads()?)?;
    let slice = Corpus { name: split.calibration.name.clone(), documents: split.calibration.documents[..200].to_vec() };
    let tokens = tokenize_corpus(&slice, &tok)?;
    let opts = WindowOptions::new(128);
    let windows = make_windows(&slice, &tok, &opts)?;
    let expected: usize = tokens.iter().map(|t| t.len() / 128).sum();
    assert_eq!(windows.len(), expected);
    for w in &windows {
        let pos = slice.documents.iter().position(|d| d.meta.index == w.provenance.doc_index).unwrap();
        let off = w.provenance.token_offset;
        assert_eq!(&tokens[pos][off..off + 128], w.ids.as_slice());
        assert_eq!(slice.documents[pos].meta.title, w.provenance.title);
        assert!(w.provenance.doc_index % 10 != 0, "calibration windows never come from evaluation articles");
    }
    let across = make_windows(&slice, &tok, &opts.clone().boundary(Boundary::AcrossDocuments))?;
    assert!(across.len() > windows.len());
    assert!(across.iter().any(|w| w.provenance.doc_span > 1));
    Ok(())
}

#[test]
fn ccds_with_minilm_builds_a_reproducible_set_from_the_pool() -> anyhow::Result<()> {
    let tok = smollm2_tokenizer()?;
    let split = SplitRule::default().split(&leads()?)?;
    // Every 30th calibration article: a small pool spread over all topics.
    let docs = split.calibration.documents.iter().step_by(30).cloned().collect();
    let pool_corpus = Corpus { name: split.calibration.name.clone(), documents: docs };
    let opts = WindowOptions::new(64);
    let pool = make_windows(&pool_corpus, &tok, &opts)?;
    assert!(pool.len() >= 100, "{} windows", pool.len());
    let pool = &pool[..100];

    let minilm = MiniLm::load(&evop_assets::AssetStore::from_env().minilm_dir()?, MiniLmOptions::default())?
        .with_window_tokenizer(tok);
    let emb = minilm.embed(pool)?;
    let sampler = CcdsSampler::new(&minilm, CcdsOptions::seeded(9));
    let set = CalibrationSet::build(pool, 16, &sampler, opts.clone(), pool_corpus.name.clone())?
        .with_split(split.rule)
        .with_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
    let k = set.settings.sampler.k.unwrap();
    assert_eq!(k, evop_data::auto_k(100, 16));
    let mut counts = vec![0; k];
    set.group_labels().iter().for_each(|&c| counts[c] += 1);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    assert_eq!(set.token_windows().len(), 16);

    // Same seed, same set (embedding once more and reusing the embeddings give the same result).
    let again = evop_data::ccds_select(emb.view(), 16, &CcdsOptions::seeded(9))?;
    let chosen: Vec<_> = again.indices.iter().map(|&i| pool[i].clone()).collect();
    assert_eq!(chosen, set.windows);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("calibration.json");
    set.save(&path)?;
    assert_eq!(CalibrationSet::load(&path)?, set);
    Ok(())
}

#[test]
fn hidden_state_embedder_matches_the_model_boundary_states() -> anyhow::Result<()> {
    use candle_core::{DType, Tensor};
    let model = evop_model::load(&evop_assets::AssetStore::from_env().smollm2_gguf()?, &Default::default())?;
    let tok = model.tokenizer()?.clone();
    let corpus = Corpus::from_texts("t", &[&leads()?.documents[1].text]);
    let windows = make_windows(&corpus, &tok, &WindowOptions::new(16))?;
    let windows = &windows[..3];
    let block = 7;
    let emb = HiddenStateEmbedder::new(model.lm.clone(), block)?.batch_size(2).normalize(false).embed(windows)?;
    assert_eq!(emb.dim(), (3, 576));
    let ids: Vec<u32> = windows.iter().flat_map(|w| w.ids.clone()).collect();
    let ids = Tensor::from_vec(ids, (3, 16), &candle_core::Device::Cpu)?;
    let states = evop_model::hidden_states(model.lm.as_ref(), &ids)?;
    let want: Vec<Vec<f32>> = states[block].to_dtype(DType::F32)?.mean(1)?.to_vec2()?;
    for (r, row) in want.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            assert!((emb[[r, j]] - v).abs() <= 1e-4 * (1.0 + v.abs()), "row {r} col {j}: {} vs {v}", emb[[r, j]]);
        }
    }
    assert!(HiddenStateEmbedder::new(model.lm.clone(), 31).is_err());
    Ok(())
}

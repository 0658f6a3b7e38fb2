//! Fast fitness evaluation end to end: a whole seeded EvoP search and SLEB give the same answer
//! with every evaluator setting (naive full forwards, per-call reuse, the persistent prefix cache
//! with stacking, a tight cache budget), with fewer block forwards; screening is wired through
//! the search job. The model is a 16-block random Llama (hidden 32, vocabulary 96) written to a
//! temporary directory, with weights large enough that blocks matter (no near-ties).
use evop::baselines::{Pruner, Sleb, Trace};
use evop::model::{load, BlockLm, EvaluatorOptions, LoadOptions};
use evop::{Screening, SearchJob, SearchSpec, StrategyKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

const BLOCKS: usize = 16;

fn splitmix(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// A random Llama written as a Hugging Face directory and loaded back.
fn model(seed: u64) -> Arc<dyn BlockLm> {
    let dir: PathBuf = std::env::temp_dir().join(format!("evop-fast-fitness-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": BLOCKS, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut state = seed;
    let mut w: HashMap<String, candle_core::Tensor> = HashMap::new();
    let mut put = |w: &mut HashMap<String, candle_core::Tensor>, name: String, shape: &[usize], std: f32| {
        let a = std * 3f32.sqrt();
        let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| (2.0 * splitmix(&mut state) - 1.0) * a).collect();
        w.insert(name, candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap());
    };
    put(&mut w, "model.embed_tokens.weight".into(), &[96, 32], 1.0);
    put(&mut w, "lm_head.weight".into(), &[96, 32], 0.2);
    for i in 0..BLOCKS {
        for (n, shape) in [
            ("self_attn.q_proj", [32, 32]),
            ("self_attn.k_proj", [16, 32]),
            ("self_attn.v_proj", [16, 32]),
            ("self_attn.o_proj", [32, 32]),
            ("mlp.gate_proj", [64, 32]),
            ("mlp.up_proj", [64, 32]),
            ("mlp.down_proj", [32, 64]),
        ] {
            put(&mut w, format!("model.layers.{i}.{n}.weight"), &shape, 0.2);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(format!("model.layers.{i}.{n}.weight"), candle_core::Tensor::ones(32, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
        }
    }
    w.insert("model.norm.weight".into(), candle_core::Tensor::ones(32, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    let lm = load(&dir, &LoadOptions::default()).unwrap().lm;
    std::fs::remove_dir_all(&dir).ok();
    lm
}

/// Seeded windows over the 96-token vocabulary.
fn windows(count: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed;
    (0..count).map(|_| (0..len).map(|_| (splitmix(&mut s) * 96.0) as u32 % 96).collect()).collect()
}

/// Evaluator settings compared: the reference first. Batch size 4 with 3 windows, so the
/// optimised path stacks candidates.
fn settings() -> Vec<(&'static str, EvaluatorOptions)> {
    let state = 3 * 24 * 32 * 4;
    vec![
        ("naive", EvaluatorOptions::naive(4)),
        ("per-call", EvaluatorOptions::per_call(4)),
        ("reuse", EvaluatorOptions { batch_size: 4, ..Default::default() }),
        ("tight budget", EvaluatorOptions { batch_size: 4, cache_budget: Some(10 * state), ..Default::default() }),
    ]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs()
}

#[test]
fn a_seeded_evop_search_ends_on_the_same_mask_with_every_evaluator() {
    let lm = model(11);
    let w = windows(3, 24, 5);
    let mut reports = Vec::new();
    for (name, opts) in settings() {
        let job = SearchJob {
            search: SearchSpec { population: 10, generations: 8, stalled: None, ..Default::default() },
            evaluator: opts,
            ..SearchJob::new(5, 3)
        };
        reports.push((name, job.run(lm.clone(), &w, None).unwrap()));
    }
    let reference = &reports[0].1;
    for (name, r) in &reports {
        assert_eq!(r.removed, reference.removed, "{name}");
        assert!(close(r.objective_value, reference.objective_value), "{name}: {} vs {}", r.objective_value, reference.objective_value);
        assert_eq!(r.history.len(), reference.history.len());
        for (a, b) in r.history.iter().zip(&reference.history) {
            assert!(close(a.best.unwrap(), b.best.unwrap()), "{name}: generation {}", a.generation);
            assert_eq!(a.best_mask, b.best_mask, "{name}: generation {}", a.generation);
        }
        assert_eq!(r.counts.candidates, reference.counts.candidates, "{name}");
    }
    let blocks: Vec<u64> = reports.iter().map(|(_, r)| r.counts.block_forwards).collect();
    assert!(blocks[2] < blocks[1] && blocks[1] < blocks[0], "{blocks:?}");
    assert!(blocks[2] <= blocks[3] && blocks[3] < blocks[0], "{blocks:?}");

    // The naive path of the measurements: the memo cache off too, so every request is evaluated.
    let job = SearchJob {
        search: SearchSpec { population: 10, generations: 8, stalled: None, memoize: false, ..Default::default() },
        evaluator: EvaluatorOptions::naive(4),
        ..SearchJob::new(5, 3)
    };
    let r = job.run(lm.clone(), &w, None).unwrap();
    assert_eq!((&r.removed, r.objective_value.to_bits()), (&reports[0].1.removed, reports[0].1.objective_value.to_bits()));
    let bests = |r: &evop::PruneReport| r.history.iter().map(|g| (g.best.map(f64::to_bits), g.best_mask.clone())).collect::<Vec<_>>();
    assert_eq!(bests(&r), bests(&reports[0].1));
    assert_eq!(r.cache_hits, 0);
    assert!(reference.cache_hits > 0, "a 10 x 8 search over C(26, 5) masks repeats some");
    assert_eq!(r.counts.candidates, reference.counts.candidates + reference.cache_hits);
}

#[test]
fn sleb_takes_the_same_steps_with_every_evaluator() {
    let lm = model(12);
    let w = windows(3, 24, 6);
    let mut runs = Vec::new();
    for (name, opts) in settings() {
        let r = Sleb { evaluator: opts, ..Sleb::default() }.prune(&lm, &w, 5).unwrap();
        let Trace::Sleb(t) = r.trace else { panic!("sleb trace") };
        runs.push((name, t, r.counts));
    }
    let reference = &runs[0].1;
    for (name, t, _) in &runs {
        assert_eq!(t.removal_order, reference.removal_order, "{name}");
        for (a, b) in t.steps.iter().zip(&reference.steps) {
            for (x, y) in a.candidates.iter().zip(&b.candidates) {
                assert!(x.block == y.block && close(x.loss, y.loss), "{name}: {x:?} vs {y:?}");
            }
        }
    }
    let blocks: Vec<u64> = runs.iter().map(|r| r.2.block_forwards).collect();
    assert!(blocks[2] < blocks[1] && blocks[1] < blocks[0], "{blocks:?}");
}

#[test]
fn screened_searches_report_full_fidelity_values_and_check_their_settings() {
    let lm = model(13);
    let w = windows(4, 24, 7);
    let full = evop::CalibrationFitness::new(lm.clone(), &w, None, evop::Objective::MeanNll, EvaluatorOptions::default()).unwrap();
    let cases = [
        (StrategyKind::Ga, Screening { windows: 2, tokens: None, position_stride: 2, finalists: 3 }),
        (StrategyKind::Ga, Screening { windows: 4, tokens: Some(8), position_stride: 1, finalists: 3 }),
        (StrategyKind::OnePlusLambda, Screening { windows: 2, tokens: None, position_stride: 2, finalists: 3 }),
    ];
    for (strategy, screening) in cases {
        let screening = Some(screening);
        let job = SearchJob {
            search: SearchSpec { strategy, population: 8, generations: 4, stalled: None, screening, ..Default::default() },
            ..SearchJob::new(4, 1)
        };
        let r = job.run(lm.clone(), &w, None).unwrap();
        assert_eq!(r.removed.len(), 4);
        // The reported value is the answer's full-fidelity objective.
        let (value, _) = full.score_mask(&r.mask().unwrap()).unwrap();
        assert!(close(r.objective_value, value), "{strategy:?}: {} vs {value}", r.objective_value);
    }
    // Nothing screened away, no window, no finalist, too many windows, tokens out of range or
    // with (1+lambda).
    let bad = [
        (StrategyKind::Ga, 4, None, 2),
        (StrategyKind::Ga, 0, None, 2),
        (StrategyKind::Ga, 2, None, 0),
        (StrategyKind::Ga, 5, Some(8), 2),
        (StrategyKind::Ga, 2, Some(1), 2),
        (StrategyKind::Ga, 2, Some(25), 2),
        (StrategyKind::OnePlusLambda, 4, None, 2),
        (StrategyKind::OnePlusLambda, 2, Some(8), 2),
    ];
    for (strategy, windows, tokens, finalists) in bad {
        let screening = Some(Screening { windows, tokens, position_stride: 1, finalists });
        let job = SearchJob { search: SearchSpec { strategy, screening, ..Default::default() }, ..SearchJob::new(4, 1) };
        assert!(job.run(lm.clone(), &w, None).is_err(), "{strategy:?} windows {windows}, tokens {tokens:?}, finalists {finalists}");
    }
}

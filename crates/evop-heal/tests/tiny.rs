//! The linear patch on a tiny random-weight Llama: a removed block that is exactly the identity
//! gets `T = I`; folding a patch makes the block's MLP output exactly `M T`; the ridge pulls the
//! patch to the identity; settings and data are checked.
use candle_core::{DType, Device, Tensor};
use evop_heal::fold::{folded_weights, patch_tensor};
use evop_heal::{HealData, Healer, LinearPatch, RunDecision};
use evop_model::{load, AttnContext, BlockMask, LoadOptions, LoadedModel};
use ndarray::Array2;
use std::collections::HashMap;

fn tiny() -> LoadedModel {
    load(std::path::Path::new("synthetic:tiny"), &LoadOptions::default()).unwrap()
}

fn windows(n: usize, len: usize, salt: u32) -> Vec<Vec<u32>> {
    (0..n).map(|w| (0..len).map(|t| ((w as u32 * 31 + t as u32 * 7 + salt) * 2654435761u32 >> 8) % 256).collect()).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Zeroes block `i`'s attention output and MLP output projections: the block is the identity.
fn make_identity(model: &mut LoadedModel, i: usize) {
    let mut zero = HashMap::new();
    for name in [format!("model.layers.{i}.self_attn.o_proj.weight"), format!("model.layers.{i}.mlp.down_proj.weight")] {
        let w = &model.weights[&name];
        zero.insert(name.clone(), Tensor::zeros(w.dims(), DType::F32, &Device::Cpu).unwrap());
    }
    model.replace_weights(zero).unwrap();
}

#[test]
fn an_identity_block_gets_the_identity_patch() {
    let mut model = tiny();
    make_identity(&mut model, 3);
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &[3]).unwrap();
    let data = HealData { fit: windows(6, 32, 1), guard: windows(2, 32, 2) };
    let healer = LinearPatch { ridge: 1e-9, guard: false, ..Default::default() };
    let healing = healer.heal(&model, &mask, &data).unwrap();
    assert_eq!(healing.runs.len(), 1);
    let run = &healing.runs[0];
    assert_eq!(run.patched_block, Some(2));
    assert_eq!(run.fit_tokens, 6 * 32);
    assert!((run.explained.unwrap() - 1.0).abs() < 1e-6, "explained {:?}", run.explained);
    assert!((run.explained_unpatched.unwrap() - 1.0).abs() < 1e-6);
    let w = &model.weights["model.layers.2.mlp.down_proj.weight"];
    let healed = &healing.replacements["model.layers.2.mlp.down_proj.weight"];
    assert!(max_abs_diff(w, healed) < 1e-4, "T = I leaves the weight: {}", max_abs_diff(w, healed));
}

#[test]
fn a_folded_patch_maps_the_mlp_output_exactly() {
    let model = tiny();
    let h = model.lm.info().hidden_size;
    let t = Array2::from_shape_fn((h, h), |(i, j)| if i == j { 0.8 } else { ((i * 7 + j * 3) % 11) as f64 * 0.01 - 0.05 });
    let patched = model.rebuilt_with(folded_weights(&model, 2, &t).unwrap()).unwrap();
    let ids = Tensor::new(windows(2, 16, 3).concat(), &Device::Cpu).unwrap().reshape((2, 16)).unwrap();
    let ctx = AttnContext::new(model.lm.info(), 16, 0).unwrap();
    let x = model.lm.embed(&ids, 0).unwrap();
    let before = model.lm.block_parts(2, &x, &ctx).unwrap();
    let after = patched.block_parts(2, &x, &ctx).unwrap();
    let expected = before.mlp_out.flatten_to(1).unwrap().to_dtype(DType::F64).unwrap().matmul(&patch_tensor(&t).unwrap()).unwrap();
    let got = after.mlp_out.flatten_to(1).unwrap().to_dtype(DType::F64).unwrap();
    let err = max_abs_diff(&expected.to_dtype(DType::F32).unwrap(), &got.to_dtype(DType::F32).unwrap());
    assert!(err < 1e-4, "max |M T - patched M| = {err}");
    assert!(max_abs_diff(&before.after_attention, &after.after_attention) == 0.0, "attention untouched");
    // The block's output is the sum of its parts.
    let out = model.lm.block(2, &x, &ctx, None).unwrap();
    let sum = (&before.after_attention + &before.mlp_out).unwrap();
    assert!(max_abs_diff(&out, &sum) < 1e-5);
}

#[test]
fn a_huge_ridge_leaves_the_model_as_it_was() {
    let model = tiny();
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &[2, 3]).unwrap();
    let data = HealData { fit: windows(4, 32, 4), guard: vec![] };
    let healing = LinearPatch { ridge: 1e12, guard: false, ..Default::default() }.heal(&model, &mask, &data).unwrap();
    let w = &model.weights["model.layers.1.mlp.down_proj.weight"];
    let healed = &healing.replacements["model.layers.1.mlp.down_proj.weight"];
    assert!(max_abs_diff(w, healed) < 1e-6);
}

#[test]
fn runs_at_block_zero_and_single_runs_are_skipped_with_a_reason() {
    let model = tiny();
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &[0, 3]).unwrap();
    let data = HealData { fit: windows(4, 16, 5), guard: windows(2, 16, 6) };
    let healing = LinearPatch { single_block_runs: false, ..Default::default() }.heal(&model, &mask, &data).unwrap();
    assert!(matches!(&healing.runs[0].decision, RunDecision::Skipped(why) if why.contains("block 0")));
    assert!(matches!(&healing.runs[1].decision, RunDecision::Skipped(why) if why.contains("single-block")));
    assert!(healing.replacements.is_empty());
}

#[test]
fn bad_settings_and_data_are_errors() {
    let model = tiny();
    let mask = BlockMask::from_removed(model.lm.num_blocks(), &[3]).unwrap();
    let ok = HealData { fit: windows(2, 16, 7), guard: windows(1, 16, 8) };
    let e = LinearPatch { ridge: -1.0, ..Default::default() }.heal(&model, &mask, &ok).unwrap_err();
    assert!(e.to_string().contains("ridge"), "{e}");
    let e = LinearPatch::default().heal(&model, &mask, &HealData { fit: vec![], guard: ok.guard.clone() }).unwrap_err();
    assert!(e.to_string().contains("no fit windows"), "{e}");
    let e = LinearPatch::default().heal(&model, &mask, &HealData { fit: ok.fit.clone(), guard: vec![] }).unwrap_err();
    assert!(e.to_string().contains("no guard windows"), "{e}");
    let short = BlockMask::from_removed(3, &[1]).unwrap();
    assert!(LinearPatch::default().heal(&model, &short, &ok).is_err());
}

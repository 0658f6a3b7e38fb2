//! candle's GGUF dequantisers (what `io/gguf.rs` uses to load Qwen2.5-Coder and SmolLM2) against an
//! independent reference, per quantisation type: `tests/fixtures/gguf_dequant/quants.gguf` holds Q4_K,
//! Q5_0, Q6_K, Q8_0 and Q4_1 tensors, `expected.safetensors` what the `gguf` Python package's
//! `gguf.quants.dequantize` (a NumPy port of ggml's) gives for them (`scripts/gguf_dequant_fixture.py`).
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_dequant")
}

fn ggml_type(name: &str) -> GgmlDType {
    match name {
        "Q4_K" => GgmlDType::Q4K,
        "Q5_0" => GgmlDType::Q5_0,
        "Q6_K" => GgmlDType::Q6K,
        "Q8_0" => GgmlDType::Q8_0,
        "Q4_1" => GgmlDType::Q4_1,
        other => panic!("fixture type {other} not mapped"),
    }
}

#[test]
fn every_quant_type_dequantises_exactly_like_the_gguf_reference() {
    let dir = fixture_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let path = dir.join("quants.gguf");
    let mut f = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut f).unwrap();

    let want_tensors = meta["tensors"].as_object().unwrap();
    assert_eq!(content.tensor_infos.len(), want_tensors.len(), "tensor count");
    let mut types_seen = std::collections::BTreeSet::new();
    for (name, info) in want_tensors {
        let ty = ggml_type(info["type"].as_str().unwrap());
        let shape: Vec<usize> = info["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        // The type in the file's directory and the type of the tensor read from it: a silent
        // conversion (to F32, say) would make the value check below vacuous.
        let ti = content.tensor_infos.get(name).unwrap_or_else(|| panic!("{name} missing from quants.gguf"));
        assert_eq!(ti.ggml_dtype, ty, "{name}: type in the GGUF directory");
        assert_eq!(ti.shape.dims(), shape.as_slice(), "{name}: shape in the GGUF directory");
        let q = content.tensor(&mut f, name, &Device::Cpu).unwrap();
        assert_eq!(q.dtype(), ty, "{name}: type of the QTensor read");
        assert_eq!(q.shape().dims(), shape.as_slice(), "{name}: QTensor shape");
        let got = q.dequantize(&Device::Cpu).unwrap();
        assert_eq!(got.dtype(), candle_core::DType::F32);
        let want = &expected[name];
        assert_eq!(got.dims(), want.dims(), "{name}: dequantised shape");
        let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        let mut mismatches = 0usize;
        let mut max_abs = 0f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // Exact: both sides form each value as f32(f16 scale) * f32(small integer) (minus an f32
            // product for the min) with one rounding per operation in the same order.
            if a != b {
                if mismatches < 5 {
                    eprintln!("{name}[{i}]: candle {a:e}, reference {b:e}");
                }
                mismatches += 1;
                max_abs = max_abs.max((a - b).abs());
            }
        }
        assert!(want.iter().any(|&v| v != 0.0), "{name}: reference is all zero");
        assert_eq!(mismatches, 0, "{name}: {mismatches} of {} values differ (max |diff| {max_abs:e})", want.len());
        types_seen.insert(format!("{ty:?}"));
    }
    assert_eq!(types_seen.len(), 5, "types covered: {types_seen:?}");
}

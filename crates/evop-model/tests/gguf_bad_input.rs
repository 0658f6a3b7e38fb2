//! A GGUF file of an architecture evop does not implement is refused with an error naming the
//! architecture, the file and the supported ones, before any tensor is read.
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

fn write_gguf(path: &std::path::Path, arch: &str) {
    let t = QTensor::quantize(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(), candle_core::quantized::GgmlDType::F32).unwrap();
    let arch_value = Value::String(arch.to_string());
    let blocks = Value::U32(2);
    let key = format!("{arch}.block_count");
    let metadata: Vec<(&str, &Value)> = vec![("general.architecture", &arch_value), (key.as_str(), &blocks)];
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &metadata, &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma3-tiny.gguf");
    write_gguf(&path, "gemma3");
    let err = evop_model::load(&path, &Default::default()).err().expect("gemma3 is not supported").to_string();
    assert!(err.contains("unsupported architecture `gemma3`"), "{err}");
    assert!(err.contains("gemma3-tiny.gguf"), "{err}");
    assert!(err.contains("qwen2"), "the error lists the supported architectures: {err}");
}

#[test]
fn a_supported_architecture_with_missing_metadata_names_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen2-no-heads.gguf");
    write_gguf(&path, "qwen2");
    let err = evop_model::load(&path, &Default::default()).err().expect("metadata is missing").to_string();
    assert!(err.contains("missing metadata key `"), "{err}");
    assert!(err.contains("qwen2-no-heads.gguf"), "{err}");
}

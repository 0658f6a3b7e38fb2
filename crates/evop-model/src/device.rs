//! Choosing a device by name: `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`, and the process-wide
//! settings that go with a device (TF32 on CUDA, how the host allocator keeps freed memory).
//!
//! Backends are cargo features forwarded to candle; asking for one that is not compiled in is an
//! error that says which feature to enable.
use crate::error::{ModelError, Result};
use candle_core::Device;

/// Parses a device name and opens the device.
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |message: String| ModelError::Device { spec: spec.to_string(), message };
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n: usize = n.parse().map_err(|_| err(format!("`{n}` is not a device number")))?;
            (k, n)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err(err("this build has no CUDA support; rebuild with `--features cuda`".into()));
            }
            Device::new_cuda(ordinal).map_err(|e| err(e.to_string()))
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(err("this build has no Metal support; rebuild with `--features metal`".into()));
            }
            Device::new_metal(ordinal).map_err(|e| err(e.to_string()))
        }
        other => Err(err(format!("unknown device kind `{other}` (expected cpu, cuda[:N] or metal[:N])"))),
    }
}

/// Lets f32 matrix products on CUDA use TF32 tensor cores (10-bit mantissa inputs, f32
/// accumulation) instead of full-precision f32 GEMMs. Process-wide; off by default. No effect on
/// other devices or dtypes.
pub fn allow_tf32(on: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(on);
}

/// Free memory of a CUDA device in bytes, `None` on other devices (or if the driver does not say).
pub fn free_device_memory(device: &Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, _total)| free);
    }
    let _ = device;
    None
}

/// Parses a dtype name: `f32`, `f16`, `bf16`.
pub fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    match name {
        "f32" | "float32" => Ok(candle_core::DType::F32),
        "f16" | "float16" => Ok(candle_core::DType::F16),
        "bf16" | "bfloat16" => Ok(candle_core::DType::BF16),
        other => Err(ModelError::Input(format!("unknown dtype `{other}` (expected f32, f16 or bf16)"))),
    }
}

/// The device named by the environment variable `EVOP_TEST_DEVICE` (default `cpu`): the test
/// suites that compare against reference logits run on it, so the same tests check a GPU build.
pub fn test_device() -> Result<Device> {
    match std::env::var("EVOP_TEST_DEVICE") {
        Ok(spec) if !spec.is_empty() => parse_device(&spec),
        _ => Ok(Device::Cpu),
    }
}

/// The f32 logit tolerance against a reference: 1e-4 on the CPU, 1e-3 on accelerators (other
/// kernels reassociate sums differently).
pub fn logit_tolerance(device: &Device) -> f32 {
    if device.is_cpu() {
        1e-4
    } else {
        1e-3
    }
}

/// Keeps memory that a CPU forward frees for its next allocations instead of handing it back to
/// the operating system (glibc's malloc on Linux; a no-op elsewhere). Process-wide; evop's
/// binaries call it at start, a library user may.
///
/// A CPU forward allocates and frees tens of MB per operation (8 x 512 tokens of SmolLM2: 25 MB
/// per gate or up projection). glibc gives the top of its heap back once more than its trim
/// threshold is free and serves large requests with fresh `mmap`s, so the same memory is returned
/// and then faulted in and zeroed again by the kernel: about a tenth of a CPU forward's time at
/// that shape went to page faults (`perf`, docs/performance.md). This fixes the mmap threshold at
/// glibc's largest (32 MiB: larger blocks, such as a full vocabulary's logits, are still mapped
/// and unmapped), never trims the heap, and grows it 512 MiB at a time. The price: a process
/// keeps its peak heap until it exits. Returns whether every setting was accepted.
pub fn retain_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 512 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_fail() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda").unwrap_err().to_string().contains("--features cuda"));
        assert!(parse_dtype("f8").is_err());
    }
}

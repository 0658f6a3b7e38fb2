//! With the `cuda` feature, compiles evop-model's CUDA kernels (`kernels/*.cu`) to PTX with nvcc, for
//! the compute capability in `CUDA_COMPUTE_CAP` (as candle-kernels does; default: what
//! `nvidia-smi` reports). Without the feature this does nothing.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["masked_softmax", "flash_attention", "block_ops", "token_nll"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = compute_cap();
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    for name in KERNELS {
        let src = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("evop-model: cannot run nvcc ({}): {e}; set CUDA_HOME or PATH", nvcc.display()));
        assert!(status.success(), "evop-model: nvcc failed on {src}");
    }
}

fn compute_cap() -> String {
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        return cap.replace('.', "");
    }
    let out = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().replace('.', ""),
        _ => panic!("evop-model: set CUDA_COMPUTE_CAP (for example 90 for H100/H200): no nvidia-smi to ask"),
    }
}

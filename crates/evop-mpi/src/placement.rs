//! Where a rank runs: whether a launcher (mpirun, mpiexec, srun) started the process, the rank's
//! number among the ranks of its node (the launcher's environment), the GPUs it can see, and the
//! device it takes: `cuda` becomes `cuda:{local_rank % visible_gpus}`.
//!
//! Every launcher exports the local rank under its own name; these are read in order, the first
//! present wins: `OMPI_COMM_WORLD_LOCAL_RANK` (Open MPI's mpirun), `MPI_LOCALRANKID` (MPICH's Hydra),
//! `MV2_COMM_WORLD_LOCAL_RANK` (MVAPICH), `SLURM_LOCALID` (srun). Slurm's name comes last because a
//! batch script's environment carries `SLURM_LOCALID=0` into an mpirun started inside it. Without
//! any of them the MPI transport falls back to a shared-memory split of the world communicator.

use std::path::Path;

/// Local-rank variables, in the order they are read.
pub const LOCAL_RANK_VARS: [&str; 4] = ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"];

/// Variables whose presence says a launcher started this process with a process-management
/// interface MPI can initialise from: Open MPI's mpirun, PMIx (srun --mpi=pmix, prterun), PMI-1/2
/// (srun --mpi=pmi2, Hydra).
pub const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"];

/// Overrides launcher detection: `EVOP_MPI=0` never initialises MPI, `EVOP_MPI=1` always does.
pub const OVERRIDE_VAR: &str = "EVOP_MPI";

/// A placement setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// An environment variable holds something else than expected.
    #[error("environment variable {var}={value:?}: {expected}")]
    Env { var: &'static str, value: String, expected: &'static str },
    /// `cuda` was asked for but no GPU is visible.
    #[error("device `cuda` for local rank {local_rank}: no GPU is visible to this rank ({why})")]
    NoGpu { local_rank: usize, why: String },
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Whether to initialise MPI: [`OVERRIDE_VAR`] if set (`0`/`1`), else whether any of
/// [`LAUNCHER_VARS`] is set. A process started by hand stays a plain single process, so a binary
/// built with MPI support needs no launcher for ordinary runs.
pub fn launched_by_mpi() -> Result<bool, PlacementError> {
    launched_with(env)
}

fn launched_with(get: impl Fn(&str) -> Option<String>) -> Result<bool, PlacementError> {
    if let Some(v) = get(OVERRIDE_VAR) {
        return match v.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(PlacementError::Env { var: OVERRIDE_VAR, value: v, expected: "0 (never initialise MPI) or 1 (always)" }),
        };
    }
    Ok(LAUNCHER_VARS.iter().any(|v| get(v).is_some()))
}

/// The rank's number on its node from the launcher's environment ([`LOCAL_RANK_VARS`]), if any.
pub fn local_rank_from_env() -> Result<Option<usize>, PlacementError> {
    local_rank_with(env)
}

fn local_rank_with(get: impl Fn(&str) -> Option<String>) -> Result<Option<usize>, PlacementError> {
    for var in LOCAL_RANK_VARS {
        if let Some(v) = get(var) {
            return v.trim().parse().map(Some).map_err(|_| PlacementError::Env { var, value: v, expected: "a non-negative integer" });
        }
    }
    Ok(None)
}

/// The GPUs this process can see and how that was decided: `CUDA_VISIBLE_DEVICES` if set (its
/// comma-separated entries; empty, `NoDevFiles` or `-1` mean none), else the NVIDIA driver's GPU
/// list in `/proc/driver/nvidia/gpus`, else the `/dev/nvidiaN` device files.
pub fn visible_gpus() -> (usize, String) {
    if let Some(v) = env("CUDA_VISIBLE_DEVICES") {
        return (count_visible(&v), format!("CUDA_VISIBLE_DEVICES={v:?}"));
    }
    let count = |dir: &Path, keep: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).filter(|e| keep(&e.file_name().to_string_lossy())).count()).ok()
    };
    if let Some(n) = count(Path::new("/proc/driver/nvidia/gpus"), &|_| true) {
        return (n, format!("{n} in /proc/driver/nvidia/gpus"));
    }
    let n = count(Path::new("/dev"), &|name| name.strip_prefix("nvidia").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())))
        .unwrap_or(0);
    (n, format!("{n} /dev/nvidiaN device files, no NVIDIA driver in /proc"))
}

fn count_visible(v: &str) -> usize {
    let v = v.trim();
    if v.is_empty() || v == "NoDevFiles" {
        return 0;
    }
    // CUDA stops at the first invalid entry (e.g. -1).
    v.split(',').map(str::trim).take_while(|e| !e.is_empty() && !e.starts_with('-')).count()
}

/// The device a rank takes: `cuda` (no ordinal) becomes `cuda:{local_rank % gpus}`; any other
/// name, including an explicit `cuda:N`, is kept as given.
pub fn device_for_rank(spec: &str, local_rank: usize, gpus: usize, why: &str) -> Result<String, PlacementError> {
    if spec.trim() != "cuda" {
        return Ok(spec.to_string());
    }
    if gpus == 0 {
        return Err(PlacementError::NoGpu { local_rank, why: why.to_string() });
    }
    Ok(format!("cuda:{}", local_rank % gpus))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launcher_detection_and_override() {
        assert!(!launched_with(getter(&[])).unwrap());
        assert!(launched_with(getter(&[("OMPI_COMM_WORLD_SIZE", "3")])).unwrap());
        assert!(launched_with(getter(&[("PMIX_RANK", "0")])).unwrap());
        assert!(!launched_with(getter(&[("PMIX_RANK", "0"), ("EVOP_MPI", "0")])).unwrap());
        assert!(launched_with(getter(&[("EVOP_MPI", "1")])).unwrap());
        let e = launched_with(getter(&[("EVOP_MPI", "yes")])).unwrap_err().to_string();
        assert!(e.contains("EVOP_MPI=\"yes\""), "{e}");
    }

    #[test]
    fn local_rank_prefers_the_mpi_launcher_over_slurm() {
        assert_eq!(local_rank_with(getter(&[])).unwrap(), None);
        assert_eq!(local_rank_with(getter(&[("SLURM_LOCALID", "2")])).unwrap(), Some(2));
        assert_eq!(local_rank_with(getter(&[("SLURM_LOCALID", "0"), ("OMPI_COMM_WORLD_LOCAL_RANK", "3")])).unwrap(), Some(3));
        let e = local_rank_with(getter(&[("MPI_LOCALRANKID", "x")])).unwrap_err().to_string();
        assert!(e.contains("MPI_LOCALRANKID=\"x\"") && e.contains("non-negative integer"), "{e}");
    }

    #[test]
    fn visible_device_lists() {
        assert_eq!(count_visible(""), 0);
        assert_eq!(count_visible("NoDevFiles"), 0);
        assert_eq!(count_visible("0,1,2,3"), 4);
        assert_eq!(count_visible("2"), 1);
        assert_eq!(count_visible("1,-1,2"), 1);
        assert_eq!(count_visible("GPU-8f2a,GPU-11bb"), 2);
    }

    #[test]
    fn ranks_map_round_robin_onto_gpus() {
        let d: Vec<String> = (0..6).map(|r| device_for_rank("cuda", r, 4, "test").unwrap()).collect();
        assert_eq!(d, ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]);
        assert_eq!(device_for_rank("cuda:2", 5, 4, "test").unwrap(), "cuda:2");
        assert_eq!(device_for_rank("cpu", 5, 0, "test").unwrap(), "cpu");
        let e = device_for_rank("cuda", 1, 0, "CUDA_VISIBLE_DEVICES=\"\"").unwrap_err().to_string();
        assert!(e.contains("local rank 1") && e.contains("CUDA_VISIBLE_DEVICES"), "{e}");
    }
}

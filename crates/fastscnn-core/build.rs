//! With the `cuda` feature, compiles every CUDA kernel of `src/ops` (`*.cu`, each beside the op
//! it runs) to PTX in `OUT_DIR`, which the op embeds and the driver compiles for the GPU it meets
//! (see docs/cuda.md for why PTX from nvcc rather than NVRTC at run time).
//!
//! nvcc is found where candle's kernels find theirs, so that both are compiled by one toolkit:
//! `$NVCC`, else the `nvcc` on `PATH`, else `bin/nvcc` under `$CUDA_HOME`, `$CUDA_PATH`,
//! `$CUDA_ROOT` or `/usr/local/cuda`. The PTX targets `compute_$CUDA_COMPUTE_CAP` (the variable
//! candle's kernels read, e.g. `90` or `90a`), by default compute_75, the oldest architecture
//! CUDA 13 compiles for, which every newer GPU runs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_DIR: &str = "src/ops";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // A directory: cargo looks at every file in it, so a kernel or header added, renamed or
    // edited counts (and so does any other file there: the kernels take seconds to compile).
    println!("cargo::rerun-if-changed={KERNEL_DIR}");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let arch = match env::var("CUDA_COMPUTE_CAP") {
        Ok(cap) => {
            let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
            let digits = cap.trim_end_matches(['a', 'f']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                panic!("CUDA_COMPUTE_CAP={cap:?}: expected a compute capability such as 90 or 90a");
            }
            cap
        }
        Err(_) => "75".to_string(),
    };
    let mut sources: Vec<PathBuf> = std::fs::read_dir(KERNEL_DIR)
        .unwrap_or_else(|e| panic!("{KERNEL_DIR}: {e}"))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for source in &sources {
        compile(&nvcc, source, &arch, &out_dir);
    }
}

fn nvcc() -> PathBuf {
    if let Some(path) = env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    let on_path = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let roots = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .into_iter()
        .filter_map(env::var_os)
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/cuda")])
        .map(|root| root.join("bin"));
    on_path
        .into_iter()
        .chain(roots)
        .map(|dir| dir.join("nvcc"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"))
}

/// `source` to `OUT_DIR/<stem>.ptx`. Multiply-adds stay two roundings (`--fmad=false`), as the
/// CPU resize computes them, so that the resize and the fused argmax give the CPU ops' values
/// and labels to the last bit.
fn compile(nvcc: &Path, source: &Path, arch: &str, out_dir: &Path) {
    let stem = source.file_stem().expect("a .cu file has a stem");
    let ptx = out_dir.join(stem).with_extension("ptx");
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "--fmad=false"])
        .arg(format!("--gpu-architecture=compute_{arch}"))
        .arg("-I")
        .arg(KERNEL_DIR)
        .arg("-o")
        .arg(&ptx)
        .arg(source)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): the `cuda` feature needs nvcc (set NVCC or CUDA_ROOT, or \
                 put it on PATH)",
                nvcc.display()
            )
        });
    if !status.success() {
        panic!(
            "{} failed on {} ({status})",
            nvcc.display(),
            source.display()
        );
    }
}

//! The Rust side of the kernel emulation: compiling a `.cu` file of `src/ops` as C++ with
//! `cuda_emulation.h`, loading it, finding its kernels and launching them through
//! `cuda_emulation.cpp`'s `emu_launch`.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Where CUDA's headers are, if anywhere.
fn cuda_include() -> Option<PathBuf> {
    let has_headers = |dir: &Path| dir.join("cuda_fp16.h").is_file();
    if let Some(dir) = std::env::var_os("FASTSCNN_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir)).filter(|d| has_headers(d));
    }
    let beside_nvcc = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("nvcc").is_file())
            .and_then(|bin| Some(bin.parent()?.join("include")))
    });
    let homes = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(|v| Some(PathBuf::from(std::env::var_os(v)?).join("include")));
    beside_nvcc
        .into_iter()
        .chain(homes)
        .chain([PathBuf::from("/usr/local/cuda/include")])
        .find(|d| has_headers(d))
}

/// A kernel file compiled for the host and loaded.
pub struct Library(*mut c_void);

// SAFETY: the handle is only passed to dlsym, which may be called from any thread.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

impl Library {
    /// The address of `symbol`, as the function type `F`.
    ///
    /// # Safety
    /// `F` must be the `unsafe extern "C" fn` type of the symbol's C declaration.
    pub unsafe fn function<F: Copy>(&self, symbol: &str) -> F {
        assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
        let name = CString::new(symbol).unwrap();
        // SAFETY: a handle from dlopen and a NUL-terminated name.
        let address = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        assert!(!address.is_null(), "{symbol}: not in the library");
        // SAFETY: the caller's `F` is the function pointer type of the symbol's declaration.
        unsafe { std::mem::transmute_copy(&address) }
    }
}

/// Why the emulation cannot run here, said once per test; a failure where it is required.
fn skipped(why: &str) -> Option<&'static Library> {
    assert!(
        std::env::var_os("FASTSCNN_REQUIRE_EMULATION").is_none(),
        "FASTSCNN_REQUIRE_EMULATION is set, but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// `src/ops/<name>.cu` compiled with the emulation, once per test process.
pub fn library(name: &str) -> Option<&'static Library> {
    static LIBRARIES: OnceLock<Mutex<HashMap<String, Option<&'static Library>>>> = OnceLock::new();
    let mut libraries = LIBRARIES.get_or_init(Default::default).lock().unwrap();
    if let Some(found) = libraries.get(name) {
        return found.or_else(|| skipped("the kernels did not build (see the first test)"));
    }
    let built = build(name);
    libraries.insert(name.to_string(), built);
    built
}

fn build(name: &str) -> Option<&'static Library> {
    let Some(include) = cuda_include() else {
        return skipped("no CUDA headers (cuda_fp16.h) to compile the kernels with");
    };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let emulation = crate_dir.join("tests/emulation");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emulated-{name}.so"));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let status = Command::new(&compiler)
        .args(["-x", "c++", "-std=c++20", "-O2", "-ffp-contract=off"])
        .args(["-fPIC", "-shared", "-pthread", "-include"])
        .arg(emulation.join("cuda_emulation.h"))
        .arg("-I")
        .arg(crate_dir.join("src/ops"))
        .arg("-I")
        .arg(&include)
        .arg(crate_dir.join(format!("src/ops/{name}.cu")))
        .arg(emulation.join("cuda_emulation.cpp"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{compiler} failed on {name}.cu ({s})"),
        Err(e) => return skipped(&format!("no C++ compiler `{compiler}`: {e}")),
    }
    let path = CString::new(out.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path to the library just built.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "{}: dlopen failed", out.display());
    Some(Box::leak(Box::new(Library(handle))))
}

pub type Body<'a> = &'a (dyn Fn() + Sync);

extern "C" fn run_body(context: *mut c_void) {
    // SAFETY: `launch` passes a pointer to a `Body` that outlives the launch.
    let body = unsafe { *(context as *const Body) };
    body();
}

/// `body` (one kernel call) on every thread of a `grid` of blocks of `threads` threads.
pub fn launch(library: &Library, grid: (u32, u32), threads: u32, body: Body) {
    type Launcher = unsafe extern "C" fn(u32, u32, u32, extern "C" fn(*mut c_void), *mut c_void);
    // SAFETY: `Launcher` is `emu_launch`'s declaration in `cuda_emulation.cpp`.
    let emu_launch: Launcher = unsafe { library.function("emu_launch") };
    let context = &body as *const Body as *mut c_void;
    // SAFETY: `run_body` reads `context` as the `Body` it points to, within this call.
    unsafe { emu_launch(grid.0, grid.1, threads, run_body, context) };
}

/// The grid of an element-wise launch here: few enough threads to spawn, more than one block and
/// fewer threads than elements, so the grid-stride loops run.
pub const ELEMENTWISE: ((u32, u32), u32) = ((3, 1), 64);

/// The block size of the reducing kernels here: two warps, so that the block sums' second stage
/// adds warps' sums (the ops launch 256, `SUM_THREADS` of `src/ops/cuda.rs`; the kernels take
/// any multiple of 32), with a quarter of the threads to start.
pub const SUM_THREADS: u32 = 64;

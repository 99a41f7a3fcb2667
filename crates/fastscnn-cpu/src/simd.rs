//! Which vector instructions the kernels are compiled for, chosen once at run time.
//!
//! The default Rust target for x86-64 stops at SSE2, so a kernel written as plain loops would use
//! a quarter of an AVX-512 machine's vector width and no fused multiply-add. Each kernel body is
//! written once, generic over [`MulAdd`], inlined into copies compiled with `target_feature`
//! for AVX-512 and AVX2+FMA, and the copy to run is picked from what the processor reports. On
//! aarch64 NEON and FMA are part of the base target, so the portable copy already uses them; what
//! [`Isa::Neon`] adds there is this crate's NEON matrix kernel and the fused blocks built on it.

use std::cell::Cell;
use std::sync::OnceLock;

/// The instruction sets a kernel has a compiled copy for, best first. More may come (SVE, say),
/// so a `match` outside this crate needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Isa {
    /// x86-64 with AVX-512F (512-bit vectors) and FMA.
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// aarch64 with NEON (every aarch64 Linux, macOS and Windows target): the NEON matrix
    /// kernel, so the 1x1 convs and the fused blocks run as on x86-64.
    Neon,
    /// Whatever the build target offers, with the `gemm` crate's matrix products and the blocks
    /// layer by layer: SSE2 on x86-64, NEON (through the compiler) on aarch64.
    Portable,
}

impl Isa {
    /// The best instruction set this processor supports: what runs outside any
    /// [`crate::ExecutionContext`]. Another is chosen by running in a context of it.
    pub fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| Self::available()[0])
    }

    /// The instruction set the kernels running on this thread use: that of the
    /// [`crate::ExecutionContext`] whose pool the thread belongs to, else [`Isa::detected`].
    #[inline]
    pub fn current() -> Isa {
        POOL_ISA.with(Cell::get).unwrap_or_else(Isa::detected)
    }

    /// Every instruction set this processor can run the kernels on, best first (the portable
    /// code last, always there).
    pub fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            // Each checked on its own: a virtual machine may hide AVX2 and show AVX-512F.
            let fma = is_x86_feature_detected!("fma");
            if fma && is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if fma && is_x86_feature_detected!("avx2") {
                isas.push(Isa::Avx2);
            }
        }
        if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
            isas.push(Isa::Neon);
        }
        isas.push(Isa::Portable);
        isas
    }

    /// The set `name` (`avx512`, `avx2`, `neon`, `portable`) names.
    pub fn from_name(name: &str) -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable]
            .into_iter()
            .find(|isa| isa.name() == name)
    }

    /// The set's short name, which [`Isa::from_name`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }
}

thread_local! {
    /// The instruction set of the execution context whose pool this thread is a worker of.
    static POOL_ISA: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// Marks this thread as running kernels on `isa`: each worker of an execution context's pool,
/// as it starts.
pub(crate) fn set_thread_isa(isa: Isa) {
    POOL_ISA.with(|cell| cell.set(Some(isa)));
}

/// `a * b + c`, fused into one instruction where the compiled copy has FMA, two otherwise (a fused
/// multiply-add without hardware support is a slow library call).
pub trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: the FMA instruction.
pub struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings: a multiply then an add.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub struct Unfused;

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The [`MulAdd`] of the portable copy: fused where the base target has FMA (aarch64).
#[cfg(target_arch = "aarch64")]
pub type PortableMulAdd = Fused;
#[cfg(not(target_arch = "aarch64"))]
pub type PortableMulAdd = Unfused;

/// Defines `$name(args)` that runs `$body::<M>(args)` compiled for the best [`Isa`] available.
/// `$body` must be `#[inline(always)]` so each copy is vectorised for its own instruction set.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body::<$crate::simd::Fused>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body::<$crate::simd::Fused>($($arg),*)
                }
                match $crate::simd::Isa::current() {
                    // SAFETY: `Isa::current` is `Isa::detected` or a context's set, which
                    // `ExecutionContext::new` checks against `Isa::available`.
                    $crate::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Isa::Neon | $crate::simd::Isa::Portable => {}
                }
            }
            $body::<$crate::simd::PortableMulAdd>($($arg),*)
        }
    };
}

pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(always)]
    fn axpy_body<M: MulAdd>(a: f32, x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = M::mul_add(a, x, *y);
        }
    }

    dispatch!(fn axpy(a: f32, x: &[f32], y: &mut [f32]) => axpy_body);

    #[test]
    fn every_copy_computes_the_same_thing() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let mut y = vec![1.0; 37];
        axpy(2.0, &x, &mut y);
        let expected: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        assert_eq!(y, expected);
    }

    /// The instruction set is one of the build target's, the best of those available.
    #[test]
    fn the_detected_instruction_set_belongs_to_the_build_target() {
        let isa = Isa::detected();
        assert_eq!(Some(&isa), Isa::available().first());
        let arch = match isa {
            Isa::Avx512 | Isa::Avx2 => Some("x86_64"),
            Isa::Neon => Some("aarch64"),
            Isa::Portable => None,
        };
        if let Some(arch) = arch {
            assert_eq!(arch, std::env::consts::ARCH, "{isa:?}");
        }
        if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
            assert_eq!(isa, Isa::Neon);
        }
    }
}

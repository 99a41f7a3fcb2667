//! The fused CPU path on the AVX2 + FMA kernels (chosen over AVX-512 where the processor has
//! both), on golden fixtures. Elsewhere `FASTSCNN_ISA=avx2` changes nothing and the test checks
//! the processor's own kernels again.

mod common;

#[test]
fn avx2_kernels_reproduce_the_golden_outputs() {
    common::check_golden_parity_with("avx2");
}

//! The fused CPU path on the AVX2 + FMA kernels (the `gemm` crate for the 1x1 convs, blocks run
//! layer by layer), on golden fixtures.

mod common;

#[test]
fn avx2_kernels_reproduce_the_golden_outputs() {
    common::check_golden_parity_with("avx2");
}

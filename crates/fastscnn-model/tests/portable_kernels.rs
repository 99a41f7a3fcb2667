//! The CPU path on the portable kernels (what runs without AVX2 or NEON: the `gemm` crate for the
//! 1x1 convs, blocks layer by layer), on golden fixtures.

mod common;

#[test]
fn portable_kernels_reproduce_the_golden_outputs() {
    common::check_golden_parity_with("portable");
}

//! The fused CPU path on the portable kernels (what runs without AVX2), on golden fixtures.

mod common;

#[test]
fn portable_kernels_reproduce_the_golden_outputs() {
    common::check_golden_parity_with("portable");
}

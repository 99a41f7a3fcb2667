//! The fused CPU path on the NEON kernels, on golden fixtures: what aarch64 runs by default,
//! asked for by name. Elsewhere `FASTSCNN_ISA=neon` changes nothing and the test checks the
//! processor's own kernels again.

mod common;

#[test]
fn neon_kernels_reproduce_the_golden_outputs() {
    common::check_golden_parity_with("neon");
}

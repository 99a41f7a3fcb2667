//! What follows a GEMM on each output row: the bias, an optional shortcut and the ReLU, in one
//! vectorised pass over a row that is still in cache.

use super::simd::{dispatch, MulAdd};

#[inline(always)]
fn finish_row_body<M: MulAdd>(row: &mut [f32], bias: f32, residual: Option<&[f32]>, relu: bool) {
    // `v > 0 ? v : 0` rather than `f32::max`, whose NaN rule keeps the compiler from a plain
    // vector max; a NaN still becomes 0 either way.
    match (residual, relu) {
        (Some(shortcut), true) => {
            for (o, &r) in row.iter_mut().zip(shortcut) {
                let v = *o + bias + r;
                *o = if v > 0.0 { v } else { 0.0 };
            }
        }
        (Some(shortcut), false) => {
            for (o, &r) in row.iter_mut().zip(shortcut) {
                *o = *o + bias + r;
            }
        }
        (None, true) => {
            for o in row.iter_mut() {
                let v = *o + bias;
                *o = if v > 0.0 { v } else { 0.0 };
            }
        }
        (None, false) => {
            for o in row.iter_mut() {
                *o += bias;
            }
        }
    }
}

dispatch!(
    /// `row = relu?(row + bias + residual)`; `residual`, when given, is as long as `row`.
    pub(crate) fn finish_row(
        row: &mut [f32],
        bias: f32,
        residual: Option<&[f32]>,
        relu: bool,
    ) => finish_row_body
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_every_isa;

    #[test]
    fn adds_bias_and_shortcut_then_rectifies() {
        on_every_isa(|_| {
            let mut row = vec![1.0, -3.0, 0.5, f32::NAN];
            finish_row(&mut row, 1.0, Some(&[0.0, 1.0, -2.0, 0.0]), true);
            assert_eq!(row, [2.0, 0.0, 0.0, 0.0]);
            let mut row = vec![1.0, -3.0];
            finish_row(&mut row, -1.0, None, false);
            assert_eq!(row, [0.0, -4.0]);
        });
    }
}

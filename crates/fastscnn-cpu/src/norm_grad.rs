//! The per-channel sums of training BatchNorm's backward pass, on f32 planes.
//!
//! Per channel the backward needs Σ dy and Σ dy·(x − mean), with dy the output gradient through
//! the ReLU that follows (zero where the output is not positive). Both are summed in f64, over
//! independent partial sums that the instruction set's widest f64 vectors hold, so the pass runs
//! at the speed of its loads (`fastscnn bench --mode train`).

use super::simd::{dispatch, MulAdd};

/// Partial sums per reduction: two AVX-512 vectors of f64, four AVX2 ones.
const LANES: usize = 16;

#[inline(always)]
fn grad_sums_body<M: MulAdd>(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    mean: f64,
    relu: bool,
    sums: &mut [f64; 2],
) {
    let (mut first, mut second) = ([0f64; LANES], [0f64; LANES]);
    let len = x.len().min(dy.len()).min(y.len());
    let (x, dy, y) = (&x[..len], &dy[..len], &y[..len]);
    let body = len - len % LANES;
    let chunks = x[..body]
        .chunks_exact(LANES)
        .zip(dy[..body].chunks_exact(LANES))
        .zip(y[..body].chunks_exact(LANES));
    for ((x, dy), y) in chunks {
        for lane in 0..LANES {
            let g = if !relu || y[lane] > 0.0 {
                dy[lane]
            } else {
                0.0
            } as f64;
            first[lane] += g;
            second[lane] += g * (x[lane] as f64 - mean);
        }
    }
    let (mut sum, mut centred) = (first.iter().sum::<f64>(), second.iter().sum::<f64>());
    for i in body..len {
        let g = if !relu || y[i] > 0.0 { dy[i] } else { 0.0 } as f64;
        sum += g;
        centred += g * (x[i] as f64 - mean);
    }
    sums[0] += sum;
    sums[1] += centred;
}

dispatch!(
    fn grad_sums_dispatch(
        x: &[f32],
        dy: &[f32],
        y: &[f32],
        mean: f64,
        relu: bool,
        sums: &mut [f64; 2],
    ) => grad_sums_body
);

/// Adds one plane's Σ dy and Σ dy·(x − mean) to `sums`, in f64: `x` is the BatchNorm's input,
/// `dy` its output's gradient and `y` its output, whose ReLU (with `relu`) passes the gradient
/// only where `y > 0`. The slices must have one length.
///
/// # Panics
/// If the slices' lengths differ.
pub fn batch_norm_grad_sums(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    mean: f64,
    relu: bool,
    sums: &mut [f64; 2],
) {
    assert!(
        x.len() == dy.len() && x.len() == y.len(),
        "batch_norm_grad_sums: {} inputs, {} gradients, {} outputs",
        x.len(),
        dy.len(),
        y.len()
    );
    grad_sums_dispatch(x, dy, y, mean, relu, sums);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_every_isa;

    #[test]
    fn sums_match_the_definition_on_every_instruction_set() {
        // Lengths below, at and past the partial sums' width, with values of both signs.
        for len in [0, 1, 15, 16, 17, 100] {
            let value = |i: usize, k: usize| ((i * k + 3) % 17) as f32 / 4.0 - 2.0;
            let x: Vec<f32> = (0..len).map(|i| value(i, 5)).collect();
            let dy: Vec<f32> = (0..len).map(|i| value(i, 7)).collect();
            let y: Vec<f32> = (0..len).map(|i| value(i, 11)).collect();
            for relu in [false, true] {
                let mut expected = [0f64; 2];
                for i in 0..len {
                    let g = if !relu || y[i] > 0.0 {
                        dy[i] as f64
                    } else {
                        0.0
                    };
                    expected[0] += g;
                    expected[1] += g * (x[i] as f64 - 0.25);
                }
                on_every_isa(|isa| {
                    let mut sums = [1.0, -1.0];
                    batch_norm_grad_sums(&x, &dy, &y, 0.25, relu, &mut sums);
                    let want = [expected[0] + 1.0, expected[1] - 1.0];
                    for (a, b) in sums.iter().zip(want) {
                        assert!(
                            (a - b).abs() < 1e-9,
                            "{isa:?} len {len} relu {relu}: {a} vs {b}"
                        );
                    }
                });
            }
        }
    }
}

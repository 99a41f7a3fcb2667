//! Training BatchNorm's passes over f32 planes: the batch statistics, the normalisation, the
//! backward pass's per-channel sums and its input gradient, all but the normalisation in f64.
//!
//! Per channel the statistics are Σ x and Σ (x − mean)², and the backward needs Σ dy and
//! Σ dy·(x − mean), with dy the output gradient through the ReLU that follows (zero where the
//! output is not positive). All are summed in f64, over independent partial sums that the
//! instruction set's widest f64 vectors hold, and the input gradient is computed in f64, under the
//! dispatched target features, so the passes run at the speed of their loads
//! (`fastscnn bench --mode train`). The passes that write a plane write it into memory not yet
//! written (an [`output_vec`](crate::output_vec)'s), every element, so that no one clears it first.

use std::mem::MaybeUninit;

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

#[inline(always)]
fn moment_body<M: MulAdd>(x: &[f32], centre: f64, power: u32, sum: &mut f64) {
    let mut acc = [0f64; LANES];
    let body = x.len() - x.len() % LANES;
    let term = |v: f32| {
        let d = v as f64 - centre;
        if power == 1 {
            d
        } else {
            d * d
        }
    };
    for chunk in x[..body].chunks_exact(LANES) {
        for lane in 0..LANES {
            acc[lane] += term(chunk[lane]);
        }
    }
    *sum += acc.iter().sum::<f64>() + x[body..].iter().map(|&v| term(v)).sum::<f64>();
}

dispatch!(
    fn moment_dispatch(x: &[f32], centre: f64, power: u32, sum: &mut f64) => moment_body
);

/// Adds Σ (x − centre)^power to `sum`, in f64, for `power` 1 or 2: a plane's share of a channel's
/// mean (centre 0) and of its variance (centre the mean).
///
/// # Panics
/// If `power` is neither 1 nor 2.
pub fn batch_norm_moment(x: &[f32], centre: f64, power: u32, sum: &mut f64) {
    assert!(power == 1 || power == 2, "batch_norm_moment: power {power}");
    moment_dispatch(x, centre, power, sum);
}

/// The per-channel terms of BatchNorm's input gradient,
/// `dx = k·(dy − mean_dy) − slope·(x − mean)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputGradTerms {
    /// The channel's batch mean.
    pub mean: f64,
    /// γ/σ.
    pub k: f64,
    /// Σ dy / M.
    pub mean_dy: f64,
    /// γ/σ² · Σ dy·x̂ / M.
    pub slope: f64,
}

#[inline(always)]
fn input_grad_body<M: MulAdd>(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    terms: InputGradTerms,
    relu: bool,
    dx: &mut [MaybeUninit<f32>],
) {
    let InputGradTerms {
        mean,
        k,
        mean_dy,
        slope,
    } = terms;
    for (((o, &g), &v), &y) in dx.iter_mut().zip(dy).zip(x).zip(y) {
        let g = if !relu || y > 0.0 { g } else { 0.0 } as f64;
        o.write((k * (g - mean_dy) - slope * (v as f64 - mean)) as f32);
    }
}

dispatch!(
    fn input_grad_dispatch(
        x: &[f32],
        dy: &[f32],
        y: &[f32],
        terms: InputGradTerms,
        relu: bool,
        dx: &mut [MaybeUninit<f32>],
    ) => input_grad_body
);

/// Writes every element of one plane's input gradient `dx` from its input `x`, output gradient
/// `dy` and output `y` (whose ReLU, with `relu`, passes the gradient only where `y > 0`),
/// computed in f64.
///
/// # Panics
/// If the slices' lengths differ.
pub fn batch_norm_input_grad(
    x: &[f32],
    dy: &[f32],
    y: &[f32],
    terms: InputGradTerms,
    relu: bool,
    dx: &mut [MaybeUninit<f32>],
) {
    assert!(
        x.len() == dy.len() && x.len() == y.len() && x.len() == dx.len(),
        "batch_norm_input_grad: slices of {}, {}, {} and {} values",
        x.len(),
        dy.len(),
        y.len(),
        dx.len()
    );
    input_grad_dispatch(x, dy, y, terms, relu, dx);
}

#[inline(always)]
fn normalize_body<M: MulAdd>(
    x: &[f32],
    scale: f32,
    shift: f32,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) {
    // `x·scale + shift` with two roundings: the generic pass's arithmetic in f32.
    if relu {
        for (o, &v) in y.iter_mut().zip(x) {
            let t = v * scale + shift;
            o.write(if t > 0.0 { t } else { 0.0 });
        }
    } else {
        for (o, &v) in y.iter_mut().zip(x) {
            o.write(v * scale + shift);
        }
    }
}

dispatch!(
    fn normalize_dispatch(
        x: &[f32],
        scale: f32,
        shift: f32,
        relu: bool,
        y: &mut [MaybeUninit<f32>],
    ) => normalize_body
);

/// Writes every element of one plane's BatchNorm output `y = x·scale + shift` (`scale` γ/σ and
/// `shift` β − mean·γ/σ), with `relu` followed by the ReLU (`y > 0`, else 0).
///
/// # Panics
/// If the slices' lengths differ.
pub fn batch_norm_normalize(
    x: &[f32],
    scale: f32,
    shift: f32,
    relu: bool,
    y: &mut [MaybeUninit<f32>],
) {
    assert_eq!(x.len(), y.len(), "batch_norm_normalize: input and output");
    normalize_dispatch(x, scale, shift, relu, y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::as_uninit;
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

    #[test]
    fn moments_and_input_gradient_match_the_definition_on_every_instruction_set() {
        for len in [0, 1, 15, 16, 17, 100] {
            let value = |i: usize, k: usize| ((i * k + 3) % 17) as f32 / 4.0 - 2.0;
            let x: Vec<f32> = (0..len).map(|i| value(i, 5)).collect();
            let dy: Vec<f32> = (0..len).map(|i| value(i, 7)).collect();
            let y: Vec<f32> = (0..len).map(|i| value(i, 11)).collect();
            let terms = InputGradTerms {
                mean: 0.25,
                k: 1.5,
                mean_dy: -0.125,
                slope: 0.75,
            };
            for relu in [false, true] {
                let expected: Vec<f32> = (0..len)
                    .map(|i| {
                        let g = if !relu || y[i] > 0.0 {
                            dy[i] as f64
                        } else {
                            0.0
                        };
                        (1.5 * (g + 0.125) - 0.75 * (x[i] as f64 - 0.25)) as f32
                    })
                    .collect();
                on_every_isa(|isa| {
                    let mut dx = vec![f32::NAN; len];
                    // SAFETY: the kernel only writes values.
                    batch_norm_input_grad(&x, &dy, &y, terms, relu, unsafe { as_uninit(&mut dx) });
                    assert_eq!(dx, expected, "{isa:?} len {len} relu {relu}");
                    let (scale, shift) = (1.25f32, -0.5f32);
                    let expected: Vec<f32> = x
                        .iter()
                        .map(|&v| v * scale + shift)
                        .map(|t| if relu && t <= 0.0 { 0.0 } else { t })
                        .collect();
                    let mut out = vec![f32::NAN; len];
                    // SAFETY: the kernel only writes values.
                    batch_norm_normalize(&x, scale, shift, relu, unsafe { as_uninit(&mut out) });
                    assert_eq!(out, expected, "{isa:?} len {len} relu {relu}: normalised");
                });
            }
            let sum: f64 = x.iter().map(|&v| v as f64).sum();
            let squares: f64 = x.iter().map(|&v| (v as f64 - 0.5).powi(2)).sum();
            on_every_isa(|isa| {
                let (mut s, mut q) = (2.0, 0.0);
                batch_norm_moment(&x, 0.0, 1, &mut s);
                batch_norm_moment(&x, 0.5, 2, &mut q);
                assert!((s - 2.0 - sum).abs() < 1e-9, "{isa:?} len {len}: {s}");
                assert!((q - squares).abs() < 1e-9, "{isa:?} len {len}: {q}");
            });
        }
    }
}

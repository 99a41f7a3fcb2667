//! Softmax over the class planes of a (C, H, W) map, in place: the paper's "prob" output.
//!
//! Through candle's ops a softmax over dim 1 is five passes over the full-resolution scores, each
//! with a fresh 90 MB tensor at 768x1536. Here each block of pixels is copied into a small
//! buffer and finished there while it is in cache: the maximum over classes, the exponentials and
//! their sum, the division. `f32::exp` is a library call the compiler cannot vectorise, so
//! [`exp`] is a polynomial it can.

use rayon::prelude::*;

use super::simd::{dispatch, MulAdd};

/// Pixels a task normalises at a time: 19 class planes of them are 38 KB, in L2 (in L1 on cores
/// with 48 KB of it).
const BLOCK: usize = 512;

/// `e^x` to within a few ulp, in a form the compiler vectorises: `e^x = 2^n · e^r` with
/// `n = round(x / ln 2)`, `r = x - n·ln 2` split in two parts for precision (Cody–Waite), `e^r` by
/// its degree-6 Taylor polynomial on |r| ≤ ln2/2 (error about 1e-7 relative), and `2^n` built in
/// the exponent bits. Clamped to [-87, 88], where f32 stays normal.
#[inline(always)]
pub(crate) fn exp<M: MulAdd>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, x));
    let mut p = 1.0 / 720.0;
    p = M::mul_add(p, r, 1.0 / 120.0);
    p = M::mul_add(p, r, 1.0 / 24.0);
    p = M::mul_add(p, r, 1.0 / 6.0);
    p = M::mul_add(p, r, 0.5);
    p = M::mul_add(p, r, 1.0);
    p = M::mul_add(p, r, 1.0);
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn softmax_block_body<M: MulAdd>(
    planes: &mut [f32],
    classes: usize,
    plane: usize,
    start: usize,
    len: usize,
    max: &mut [f32],
    sum: &mut [f32],
) {
    let (max, sum) = (&mut max[..len], &mut sum[..len]);
    max.copy_from_slice(&planes[start..start + len]);
    for c in 1..classes {
        let row = &planes[c * plane + start..c * plane + start + len];
        // `f32::max`, stored whole: `if v > m { v } else { m }` compiles to masked stores, slow
        // on AMD. They differ only where `m` is NaN, whose pixel comes out NaN either way.
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v);
        }
    }
    sum.fill(0.0);
    for c in 0..classes {
        let row = &mut planes[c * plane + start..c * plane + start + len];
        for ((v, &m), s) in row.iter_mut().zip(max.iter()).zip(sum.iter_mut()) {
            *v = exp::<M>(*v - m);
            *s += *v;
        }
    }
    for s in sum.iter_mut() {
        *s = 1.0 / *s;
    }
    for c in 0..classes {
        let row = &mut planes[c * plane + start..c * plane + start + len];
        for (v, &inv) in row.iter_mut().zip(sum.iter()) {
            *v *= inv;
        }
    }
}

dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn softmax_block(
        planes: &mut [f32],
        classes: usize,
        plane: usize,
        start: usize,
        len: usize,
        max: &mut [f32],
        sum: &mut [f32],
    ) => softmax_block_body
);

/// Replaces the (classes, pixels) scores of one image by their softmax over classes.
pub fn softmax_planes(scores: &mut [f32], classes: usize, pixels: usize) {
    assert_eq!(scores.len(), classes * pixels, "softmax scores");
    if classes == 0 || pixels == 0 {
        return;
    }
    let base = super::SendPtr(scores.as_mut_ptr());
    (0..pixels.div_ceil(BLOCK)).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; classes * BLOCK],
                vec![0f32; BLOCK],
                vec![0f32; BLOCK],
            )
        },
        |(block, max, sum), b| {
            let start = b * BLOCK;
            let len = BLOCK.min(pixels - start);
            // Pixels start..start + len of class plane `c`: no other block touches them.
            let row = |c: usize| {
                // SAFETY: in bounds (c < classes, start + len <= pixels), and disjoint from every
                // other block's rows; one such slice is alive at a time.
                unsafe { std::slice::from_raw_parts_mut(base.get().add(c * pixels + start), len) }
            };
            let block = &mut block[..classes * len];
            for c in 0..classes {
                block[c * len..(c + 1) * len].copy_from_slice(row(c));
            }
            softmax_block(block, classes, len, 0, len, max, sum);
            for c in 0..classes {
                row(c).copy_from_slice(&block[c * len..(c + 1) * len]);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_every_isa;
    use crate::simd::Unfused;

    #[test]
    fn exp_is_within_a_few_ulp_of_the_library() {
        for i in 0..=20_000 {
            let x = -87.0 + i as f32 * (95.0 / 20_000.0);
            let (ours, theirs) = (exp::<Unfused>(x), x.exp());
            assert!(
                ((ours - theirs) / theirs).abs() < 4e-7,
                "exp({x}) = {ours}, not {theirs}"
            );
        }
        // Far below the range: clamped, a tiny positive number, never NaN or negative.
        let tiny = exp::<Unfused>(-1000.0);
        assert!(tiny > 0.0 && ((tiny - (-87f32).exp()) / tiny).abs() < 4e-7);
    }

    #[test]
    fn rows_sum_to_one_and_match_the_definition() {
        on_every_isa(|_| {
            let (classes, pixels) = (19, 1500);
            let scores: Vec<f32> = (0..classes * pixels)
                .map(|i| ((i * 7919 % 1009) as f32 / 50.0) - 10.0)
                .collect();
            let mut probs = scores.clone();
            softmax_planes(&mut probs, classes, pixels);
            for p in 0..pixels {
                let column: Vec<f64> = (0..classes)
                    .map(|c| scores[c * pixels + p] as f64)
                    .collect();
                let max = column.iter().cloned().fold(f64::MIN, f64::max);
                let total: f64 = column.iter().map(|v| (v - max).exp()).sum();
                for (c, v) in column.iter().enumerate() {
                    let expected = (v - max).exp() / total;
                    let got = probs[c * pixels + p] as f64;
                    assert!(
                        (got - expected).abs() < 1e-6,
                        "pixel {p} class {c}: {got} vs {expected}"
                    );
                }
            }
        });
    }
}

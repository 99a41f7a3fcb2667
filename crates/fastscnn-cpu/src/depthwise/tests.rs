use super::*;
use crate::on_every_isa;

fn naive(conv: &DepthwiseConv, x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = conv.output_size(h, w);
    let mut out = Vec::new();
    for c in 0..conv.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = conv.bias[c] as f64;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * conv.stride + ky) as isize - 1;
                        let ix = (ox * conv.stride + kx) as isize - 1;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            acc += conv.weight[c * 9 + ky * 3 + kx] as f64
                                * x[c * h * w + iy as usize * w + ix as usize] as f64;
                        }
                    }
                }
                out.push(if conv.relu { acc.max(0.0) } else { acc } as f32);
            }
        }
    }
    out
}

#[test]
fn a_band_of_rows_from_a_partial_plane_equals_those_rows_of_the_whole() {
    on_every_isa(|_| {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        // Both sides of the AVX-512 kernels' width limit and of the AVX2 stride-2 kernel's.
        for ((h, w), stride) in [(11, 13), (11, 157), (11, 1030)]
            .into_iter()
            .flat_map(|s| [(s, 1), (s, 2)])
        {
            let conv = DepthwiseConv::new((0..9).map(value).collect(), vec![0.25], 1, stride, true);
            let x: Vec<f32> = (0..h * w).map(|i| value(i + 40)).collect();
            let (oh, ow) = conv.output_size(h, w);
            let mut whole = vec![0f32; oh * ow];
            conv.run(&x, h, w, &mut whole);
            let mut scratch = Vec::new();
            for (oy0, oy1) in [(0, 2), (2, 5), (0, 4), (3, oh), (oh - 1, oh)] {
                // Only the input rows the band reads, with the first one's image row.
                let r0 = (oy0 * stride).saturating_sub(1);
                let r1 = ((oy1 - 1) * stride + 2).min(h);
                let mut band = vec![0f32; (oy1 - oy0) * ow];
                conv.run_rows(
                    0,
                    &x[r0 * w..r1 * w],
                    r0,
                    h,
                    w,
                    oy0,
                    &mut band,
                    &mut scratch,
                );
                assert_eq!(
                    band,
                    whole[oy0 * ow..oy1 * ow],
                    "stride {stride} rows {oy0}..{oy1}"
                );
            }
        }
    });
}

#[test]
fn matches_the_naive_convolution_for_both_strides_and_odd_sizes() {
    on_every_isa(|_| {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        for (h, w) in [
            (1, 1),
            (2, 3),
            (5, 8),
            (3, 9),
            (4, 16),
            (9, 17),
            (3, 24),
            (16, 33),
            (7, 64),
            (6, 95),
            (3, 128),
            (5, 150),
            (4, 261),
            // Past the AVX2 stride-2 kernel's widest row.
            (3, 1030),
        ] {
            for stride in [1, 2] {
                for relu in [false, true] {
                    let c = 3;
                    let conv = DepthwiseConv::new(
                        (0..c * 9).map(|i| value(i + 11)).collect(),
                        (0..c).map(|i| value(i + 5)).collect(),
                        c,
                        stride,
                        relu,
                    );
                    let x: Vec<f32> = (0..c * h * w).map(value).collect();
                    let (oh, ow) = conv.output_size(h, w);
                    let mut out = vec![f32::NAN; c * oh * ow];
                    conv.run(&x, h, w, &mut out);
                    let expected = naive(&conv, &x, h, w);
                    for (a, b) in out.iter().zip(&expected) {
                        assert!((a - b).abs() < 1e-5, "{h}x{w} stride {stride}: {a} vs {b}");
                    }
                }
            }
        }
    });
}

/// The kernels written for f32 and f64 against the vectorised ones and the naive sum, on a batch
/// of planes (plane `p` is channel `p % channels`), both strides, maps narrow and wide.
#[test]
fn the_generic_forward_equals_the_vectorised_kernels() {
    on_every_isa(|_| {
        let value = |i: usize| ((i * 7919 % 263) as f32 / 131.0) - 1.0;
        let channels = 3;
        for ((h, w), stride) in [(1, 1), (2, 3), (9, 17), (12, 130)]
            .into_iter()
            .flat_map(|s| [(s, 1), (s, 2)])
        {
            let weight: Vec<f32> = (0..channels * 9).map(|i| value(i + 3)).collect();
            let conv =
                DepthwiseConv::new(weight.clone(), vec![0.0; channels], channels, stride, false);
            let x: Vec<f32> = (0..2 * channels * h * w).map(|i| value(i + 11)).collect();
            let generic = depthwise_forward(&x, channels, (h, w), &weight, stride);
            let (oh, ow) = conv.output_size(h, w);
            assert_eq!(generic.len(), 2 * channels * oh * ow);
            for (image, got) in x
                .chunks_exact(channels * h * w)
                .zip(generic.chunks_exact(channels * oh * ow))
            {
                let mut vectorised = vec![0f32; channels * oh * ow];
                conv.run(image, h, w, &mut vectorised);
                let expected = naive(&conv, image, h, w);
                for ((&g, &v), &e) in got.iter().zip(&vectorised).zip(&expected) {
                    assert!(
                        (g - e).abs() < 1e-5 && (v - e).abs() < 1e-5,
                        "{h}x{w} /{stride}"
                    );
                }
            }
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let w64: Vec<f64> = weight.iter().map(|&v| v as f64).collect();
            let generic64 = depthwise_forward(&x64, channels, (h, w), &w64, stride);
            for (a, b) in generic64.iter().zip(&generic) {
                assert!((a - *b as f64).abs() < 1e-5, "f64 {h}x{w} /{stride}");
            }
        }
    });
}

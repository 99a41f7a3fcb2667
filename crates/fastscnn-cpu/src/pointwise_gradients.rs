//! 1x1 convolution written once for f32 and f64, with both its gradients, as products on the NCHW
//! layout: what training runs for every pointwise convolution (the f32 forward is
//! [`PointwiseConv`]'s).
//!
//! An image's (in, pixels) plane is already the right-hand matrix of `W · X`, so no pass needs a
//! transpose or an im2col: the forward is `Y = W · X`, the weight gradient `dW = Σ dY · Xᵀ` and
//! the input gradient `dX = Wᵀ · dY`, each cut into column chunks that run in parallel.
//!
//! [`PointwiseConv`]: crate::PointwiseConv

use rayon::prelude::*;

use crate::dense_gradients::{product, sum_in_order};
use crate::{Real, SendPtr};

/// Pixels per task: enough columns that a product amortises its packing, few enough that every
/// thread gets several tasks at the network's 1/8 and 1/4 resolutions.
const CHUNK_PIXELS: usize = 4096;

/// `(image, first pixel, pixels)` of every task over `batch` images of `pixels` columns.
fn chunks(batch: usize, pixels: usize) -> Vec<(usize, usize, usize)> {
    (0..batch)
        .flat_map(|b| {
            (0..pixels)
                .step_by(CHUNK_PIXELS)
                .map(move |start| (b, start, CHUNK_PIXELS.min(pixels - start)))
        })
        .collect()
}

/// Checks the lengths of the inputs `x`, output gradients `g` and weights given, for `batch`
/// images: the products read them through raw pointers.
fn check(
    geometry: &PointwiseGeometry,
    batch: usize,
    x: Option<usize>,
    g: Option<usize>,
    weight: Option<usize>,
) {
    let PointwiseGeometry {
        in_channels: cin,
        out_channels: cout,
        pixels,
    } = *geometry;
    let expected = [
        (x, batch * cin * pixels, "input"),
        (g, batch * cout * pixels, "output gradient"),
        (weight, cout * cin, "weight"),
    ];
    for (len, want, what) in expected {
        if let Some(len) = len {
            assert_eq!(len, want, "pointwise conv {what} of {geometry:?}");
        }
    }
}

/// The shape of a 1x1 convolution over one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointwiseGeometry {
    /// Channels of the input map.
    pub in_channels: usize,
    /// Channels of the output map.
    pub out_channels: usize,
    /// Pixels per plane (height times width).
    pub pixels: usize,
}

/// `W · X` for `batch` images of (in, pixels): (batch, out, pixels). `weight` is (out, in).
///
/// # Panics
/// If `x` or `weight` does not hold what `batch` and `geometry` say.
pub fn pointwise_forward<T: Real>(
    x: &[T],
    batch: usize,
    geometry: &PointwiseGeometry,
    weight: &[T],
) -> Vec<T> {
    check(geometry, batch, Some(x.len()), None, Some(weight.len()));
    let PointwiseGeometry {
        in_channels: cin,
        out_channels: cout,
        pixels,
    } = *geometry;
    image_products(weight, (cin, 1), (cout, cin), x, batch, pixels)
}

/// The gradient with respect to the (out, in) weight, `Σ dY · Xᵀ` over every image and pixel:
/// each chunk's product summed in f64 in a fixed order, so every run gives the same bits.
///
/// # Panics
/// If `x` or `g` does not hold what `batch` and `geometry` say.
pub fn pointwise_weight_grad<T: Real>(
    x: &[T],
    g: &[T],
    batch: usize,
    geometry: &PointwiseGeometry,
) -> Vec<T> {
    check(geometry, batch, Some(x.len()), Some(g.len()), None);
    let PointwiseGeometry {
        in_channels: cin,
        out_channels: cout,
        pixels,
    } = *geometry;
    let partials: Vec<Vec<T>> = chunks(batch, pixels)
        .into_par_iter()
        .map(|(b, start, width)| {
            let mut partial = vec![T::ZERO; cout * cin];
            // SAFETY: dY's chunk is (cout, width) with row stride pixels, Xᵀ's (width, cin) read
            // from X's (cin, pixels) rows with strides (1, pixels); partial is (cout, cin).
            unsafe {
                product(
                    (cout, cin, width),
                    partial.as_mut_ptr(),
                    cin,
                    false,
                    g.as_ptr().add(b * cout * pixels + start),
                    (pixels, 1),
                    x.as_ptr().add(b * cin * pixels + start),
                    (1, pixels),
                );
            }
            partial
        })
        .collect();
    sum_in_order(&partials, cout * cin)
}

/// The gradient with respect to the input, `Wᵀ · dY`: (batch, in, pixels).
///
/// # Panics
/// If `g` or `weight` does not hold what `batch` and `geometry` say.
pub fn pointwise_input_grad<T: Real>(
    g: &[T],
    batch: usize,
    geometry: &PointwiseGeometry,
    weight: &[T],
) -> Vec<T> {
    check(geometry, batch, None, Some(g.len()), Some(weight.len()));
    let PointwiseGeometry {
        in_channels: cin,
        out_channels: cout,
        pixels,
    } = *geometry;
    image_products(weight, (1, cin), (cin, cout), g, batch, pixels)
}

/// `A · X` for each of `batch` images `X` (k, pixels) of `x`: (batch, m, pixels), `a` the (m, k)
/// matrix read with row and column strides `a_strides`. The forward (`A = W`) and the input
/// gradient (`A = Wᵀ`), a product per column chunk in parallel.
///
/// # Panics
/// If `x` or `a` is shorter than those sizes say.
fn image_products<T: Real>(
    a: &[T],
    a_strides: (usize, usize),
    (m, k): (usize, usize),
    x: &[T],
    batch: usize,
    pixels: usize,
) -> Vec<T> {
    assert_eq!(x.len(), batch * k * pixels, "pointwise product input");
    let a_end = if m * k == 0 {
        0
    } else {
        (m - 1) * a_strides.0 + (k - 1) * a_strides.1 + 1
    };
    assert!(a.len() >= a_end, "pointwise product matrix");
    let mut out = vec![T::ZERO; batch * m * pixels];
    let dst = SendPtr(out.as_mut_ptr());
    chunks(batch, pixels)
        .into_par_iter()
        .for_each(|(b, start, width)| {
            // SAFETY: this task writes columns start..start + width of image b's (m, pixels)
            // output, which no other task writes; A is (m, k) under `a_strides` (checked above),
            // X's chunk (k, width) with row stride pixels.
            unsafe {
                product(
                    (m, width, k),
                    dst.get().add(b * m * pixels + start),
                    pixels,
                    false,
                    a.as_ptr(),
                    a_strides,
                    x.as_ptr().add(b * k * pixels + start),
                    (pixels, 1),
                );
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1009) as f64 / 504.5 - 1.0)
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_their_definitions() {
        // Pixel counts below, at and across the chunk size.
        for (cin, cout, pixels) in [
            (3, 5, 7),
            (4, 2, CHUNK_PIXELS),
            (2, 3, CHUNK_PIXELS * 2 + 5),
        ] {
            let geometry = PointwiseGeometry {
                in_channels: cin,
                out_channels: cout,
                pixels,
            };
            let batch = 2;
            let x = values(batch * cin * pixels, 1);
            let weight = values(cout * cin, 2);
            let g = values(batch * cout * pixels, 3);
            let (mut y, mut dw, mut dx) = (
                vec![0.0; g.len()],
                vec![0.0; weight.len()],
                vec![0.0; x.len()],
            );
            for b in 0..batch {
                for o in 0..cout {
                    for i in 0..cin {
                        for p in 0..pixels {
                            let (xi, yi) =
                                ((b * cin + i) * pixels + p, (b * cout + o) * pixels + p);
                            y[yi] += weight[o * cin + i] * x[xi];
                            dw[o * cin + i] += g[yi] * x[xi];
                            dx[xi] += weight[o * cin + i] * g[yi];
                        }
                    }
                }
            }
            let close = |a: &[f64], b: &[f64], what: &str| {
                assert_eq!(a.len(), b.len(), "{what} {geometry:?}");
                for (u, v) in a.iter().zip(b) {
                    assert!(
                        (u - v).abs() < 1e-9 * (1.0 + v.abs()),
                        "{what} {geometry:?}: {u} vs {v}"
                    );
                }
            };
            close(
                &pointwise_forward(&x, batch, &geometry, &weight),
                &y,
                "forward",
            );
            close(
                &pointwise_weight_grad(&x, &g, batch, &geometry),
                &dw,
                "weight gradient",
            );
            close(
                &pointwise_input_grad(&g, batch, &geometry, &weight),
                &dx,
                "input gradient",
            );
        }
    }
}

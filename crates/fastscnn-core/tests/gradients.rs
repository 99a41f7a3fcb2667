//! The backward passes of the custom ops: against central finite differences in f64 (relative
//! error ≤ 1e-4) and against the gradients candle computes through its own ops (grouped conv2d,
//! the composite resize and pooling).

use candle_core::{DType, Result, Tensor, Var};
use fastscnn_core::ops::{
    adaptive_avg_pool2d, adaptive_avg_pool2d_composite, batch_norm_train, batch_norm_train_act,
    batch_norm_train_composite, depthwise_conv2d, depthwise_conv2d_grouped, resize_bilinear,
    resize_bilinear_composite,
};
use fastscnn_core::testing::{max_abs_diff, random_tensor};

fn random64(shape: &[usize], seed: u64) -> Tensor {
    random_tensor(shape, seed)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// A scalar that weighs every output differently, so no gradient can hide in a symmetric sum.
fn weighted_sum(y: &Tensor, seed: u64) -> Result<Tensor> {
    (y * random64(y.dims(), seed))?.sum_all()
}

/// ∂loss/∂inputs[which] by central differences.
fn numeric_gradient(
    loss: &dyn Fn(&[Tensor]) -> Result<f64>,
    inputs: &[Tensor],
    which: usize,
) -> Tensor {
    let eps = 1e-6;
    let base: Vec<f64> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
    let grad: Vec<f64> = (0..base.len())
        .map(|i| {
            let at = |delta: f64| {
                let mut values = base.clone();
                values[i] += delta;
                let mut moved = inputs.to_vec();
                moved[which] =
                    Tensor::from_vec(values, inputs[which].dims(), inputs[which].device()).unwrap();
                loss(&moved).unwrap()
            };
            (at(eps) - at(-eps)) / (2.0 * eps)
        })
        .collect();
    Tensor::from_vec(grad, inputs[which].dims(), inputs[which].device()).unwrap()
}

/// Gradients of `loss(op(inputs))` with respect to every input, by candle's backprop.
fn autograd(op: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], seed: u64) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = weighted_sum(&op(&tensors).unwrap(), seed)
        .unwrap()
        .backward()
        .unwrap();
    vars.iter()
        .map(|v| grads.get(v).expect("a gradient for every input").clone())
        .collect()
}

fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    max_abs_diff(a, b) / scale
}

/// Checks every input's autograd gradient against finite differences.
fn check_against_finite_differences(
    what: &str,
    op: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) {
    let seed = 99;
    let grads = autograd(op, inputs, seed);
    let loss = |xs: &[Tensor]| weighted_sum(&op(xs)?, seed)?.to_scalar::<f64>();
    for (i, grad) in grads.iter().enumerate() {
        let numeric = numeric_gradient(&loss, inputs, i);
        let err = relative_error(grad, &numeric);
        assert!(err <= 1e-4, "{what}, input {i}: relative error {err}");
    }
}

#[test]
fn depthwise_conv_gradients_match_finite_differences() {
    for (stride, (h, w)) in [
        (1, (5, 7)),
        (2, (5, 7)),
        (2, (6, 8)),
        (1, (1, 3)),
        (2, (2, 1)),
        (2, (1, 1)),
        (2, (3, 2)),
        (1, (2, 1)),
        (2, (7, 9)),
    ] {
        let x = random64(&[2, 3, h, w], 1);
        let k = random64(&[3, 1, 3, 3], 2);
        check_against_finite_differences(
            &format!("depthwise stride {stride} {h}x{w}"),
            &|xs| depthwise_conv2d(&xs[0], &xs[1], stride),
            &[x, k],
        );
    }
}

#[test]
fn depthwise_conv_gradients_match_candle_grouped_conv() {
    for stride in [1, 2] {
        // Even sizes: candle's own conv2d backward mis-sizes the input gradient of a strided
        // convolution over an odd width.
        let x = random64(&[2, 8, 16, 30], 3);
        let k = random64(&[8, 1, 3, 3], 4);
        let ours = autograd(
            &|xs| depthwise_conv2d(&xs[0], &xs[1], stride),
            &[x.clone(), k.clone()],
            5,
        );
        let candle = autograd(
            &|xs| depthwise_conv2d_grouped(&xs[0], &xs[1], stride),
            &[x, k],
            5,
        );
        for (name, a, b) in [
            ("input", &ours[0], &candle[0]),
            ("weight", &ours[1], &candle[1]),
        ] {
            let err = relative_error(a, b);
            assert!(err < 1e-10, "stride {stride} {name}: relative error {err}");
        }
    }
}

#[test]
fn resize_gradients_match_finite_differences_for_any_sizes() {
    for align_corners in [true, false] {
        for ((h, w), (oh, ow)) in [
            ((3, 4), (7, 9)),
            ((6, 5), (2, 3)),
            ((4, 4), (4, 9)),
            ((1, 2), (3, 1)),
        ] {
            let x = random64(&[1, 2, h, w], 6);
            check_against_finite_differences(
                &format!("resize {h}x{w} -> {oh}x{ow} align_corners={align_corners}"),
                &|xs| resize_bilinear(&xs[0], oh, ow, align_corners),
                &[x],
            );
        }
    }
}

#[test]
fn resize_gradients_match_the_composite() {
    for align_corners in [true, false] {
        for (oh, ow) in [(32, 64), (5, 9)] {
            let x = random64(&[2, 3, 8, 16], 7);
            let ours = autograd(
                &|xs| resize_bilinear(&xs[0], oh, ow, align_corners),
                std::slice::from_ref(&x),
                8,
            );
            let composite = autograd(
                &|xs| resize_bilinear_composite(&xs[0], oh, ow, align_corners),
                &[x],
                8,
            );
            let err = relative_error(&ours[0], &composite[0]);
            assert!(
                err < 1e-10,
                "{oh}x{ow} align_corners={align_corners}: {err}"
            );
        }
    }
}

#[test]
fn pooling_gradients_match_finite_differences_and_the_composite() {
    // An 8x16 map to the PPM's bins, including the uneven 3x3 and 6x6 windows.
    for bins in [1, 2, 3, 6] {
        let x = random64(&[1, 2, 8, 16], 9);
        check_against_finite_differences(
            &format!("pool 8x16 -> {bins}x{bins}"),
            &|xs| adaptive_avg_pool2d(&xs[0], bins, bins),
            std::slice::from_ref(&x),
        );
        let ours = autograd(
            &|xs| adaptive_avg_pool2d(&xs[0], bins, bins),
            std::slice::from_ref(&x),
            10,
        );
        let composite = autograd(
            &|xs| adaptive_avg_pool2d_composite(&xs[0], bins, bins),
            &[x],
            10,
        );
        assert!(
            relative_error(&ours[0], &composite[0]) < 1e-12,
            "bins {bins}"
        );
    }
}

#[test]
fn training_batch_norm_gradients_match_finite_differences_and_the_composite() {
    let x = random64(&[2, 3, 4, 5], 11).affine(2.0, 0.5).unwrap();
    let gamma = random64(&[3], 12);
    let beta = random64(&[3], 13);
    let inputs = [x, gamma, beta];
    check_against_finite_differences(
        "batch norm (training)",
        &|xs| batch_norm_train(&xs[0], &xs[1], &xs[2], 1e-5),
        &inputs,
    );
    let ours = autograd(
        &|xs| batch_norm_train(&xs[0], &xs[1], &xs[2], 1e-5),
        &inputs,
        14,
    );
    let composite = autograd(
        &|xs| batch_norm_train_composite(&xs[0], &xs[1], &xs[2], 1e-5),
        &inputs,
        14,
    );
    for (i, (a, b)) in ours.iter().zip(&composite).enumerate() {
        let err = relative_error(a, b);
        assert!(err < 1e-10, "input {i}: {err}");
    }
}

#[test]
fn training_batch_norm_with_relu_gradients_match_finite_differences_and_the_composite() {
    let x = random64(&[2, 3, 4, 5], 21).affine(2.0, 0.5).unwrap();
    let gamma = random64(&[3], 22);
    let beta = random64(&[3], 23);
    let inputs = [x, gamma, beta];
    let fused =
        |xs: &[Tensor]| Ok(batch_norm_train_act(&xs[0], &xs[1], &xs[2], 1e-5, true)?.output);
    check_against_finite_differences("batch norm + relu (training)", &fused, &inputs);
    let ours = autograd(&fused, &inputs, 24);
    let composite = autograd(
        &|xs| batch_norm_train_composite(&xs[0], &xs[1], &xs[2], 1e-5)?.relu(),
        &inputs,
        24,
    );
    for (i, (a, b)) in ours.iter().zip(&composite).enumerate() {
        let err = relative_error(a, b);
        assert!(err < 1e-10, "input {i}: {err}");
    }
}

/// The f32 gradients (the stride-1 input gradient on the vectorised forward kernels) equal the
/// f64 ones up to f32 rounding, over widths that reach the kernels' vector bodies and tails.
#[test]
fn depthwise_conv_f32_gradients_match_f64() {
    for stride in [1, 2] {
        for (h, w) in [(1, 1), (3, 5), (9, 17), (12, 40), (5, 67)] {
            let x = random64(&[2, 5, h, w], 31);
            let k = random64(&[5, 1, 3, 3], 32);
            let f64_grads = autograd(
                &|xs| depthwise_conv2d(&xs[0], &xs[1], stride),
                &[x.clone(), k.clone()],
                33,
            );
            let f32_grads = autograd(
                &|xs| depthwise_conv2d(&xs[0], &xs[1], stride)?.to_dtype(DType::F64),
                &[
                    x.to_dtype(DType::F32).unwrap(),
                    k.to_dtype(DType::F32).unwrap(),
                ],
                33,
            );
            for (name, a, b) in [
                ("input", &f32_grads[0], &f64_grads[0]),
                ("weight", &f32_grads[1], &f64_grads[1]),
            ] {
                let err = relative_error(&a.to_dtype(DType::F64).unwrap(), b);
                assert!(
                    err < 1e-5,
                    "stride {stride} {h}x{w} {name}: relative error {err}"
                );
            }
        }
    }
}

/// The f32 gradients (the sums on the vectorised kernel) equal the f64 ones up to f32 rounding,
/// with and without the ReLU, over planes that reach the kernel's vector body and its tail.
#[test]
fn training_batch_norm_f32_gradients_match_f64() {
    for relu in [false, true] {
        let x = random64(&[2, 3, 9, 21], 41).affine(2.0, 0.5).unwrap();
        let gamma = random64(&[3], 42);
        let beta = random64(&[3], 43);
        let op = |xs: &[Tensor]| {
            let y = batch_norm_train_act(&xs[0], &xs[1], &xs[2], 1e-5, relu)?.output;
            y.to_dtype(DType::F64)
        };
        let inputs64 = [x, gamma, beta];
        let inputs32 = inputs64.clone().map(|t| t.to_dtype(DType::F32).unwrap());
        let (f64_grads, f32_grads) = (autograd(&op, &inputs64, 44), autograd(&op, &inputs32, 44));
        for (i, (a, b)) in f32_grads.iter().zip(&f64_grads).enumerate() {
            let err = relative_error(&a.to_dtype(DType::F64).unwrap(), b);
            assert!(err < 1e-5, "relu {relu} input {i}: relative error {err}");
        }
    }
}

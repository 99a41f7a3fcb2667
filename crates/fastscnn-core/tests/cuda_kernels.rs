//! Every CUDA kernel against the CPU kernel of the same op: forwards within 1e-4 of the CPU's
//! largest value, gradients (through `backward`, so the ops' backward wiring too) within 1e-4,
//! label maps equal. The half-precision kernels of the memory-bound ops: exactly the f32
//! kernels' values on the same (rounded) inputs, rounded once to the half type; label maps equal.
//! Runs where a CUDA device is present in a build with `--features cuda`; elsewhere each test
//! says "skipped: no CUDA device" and passes.

use candle_core::{DType, Device, Result, Tensor, Var};
use fastscnn_core::ops::{
    adaptive_avg_pool2d, batch_norm_train_act, depthwise_conv2d, depthwise_conv2d_bias_act,
    resize_argmax, resize_bilinear, resize_cross_entropy, softmax_cross_entropy,
};
use fastscnn_core::testing::{cuda_device, max_abs, max_abs_diff, random_tensor};

/// max |a − b| over max |b| (at least 1), both brought to the CPU.
fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    max_abs_diff(&a, &b) / max_abs(&b).max(1.0)
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor) {
    let diff = relative_diff(gpu, cpu);
    assert!(diff <= 1e-4, "{what}: relative difference {diff}");
}

/// `f` of `inputs` on `device`: the output and every input's gradient of the sum of the output
/// weighted by a fixed random map (so that each output element's gradient differs, and a loss's
/// own gradient is not 1), the map rounded to `rounding` first.
fn run_on(
    device: &Device,
    inputs: &[Tensor],
    rounding: DType,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device).unwrap()).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).unwrap();
    let weights = random_tensor(out.dims(), 99)
        .and_then(|w| {
            w.to_dtype(rounding)?
                .to_dtype(out.dtype())?
                .to_device(device)
        })
        .unwrap();
    let grads = (&out * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads = vars
        .iter()
        .map(|v| grads.get(v).expect("every input has a gradient").clone())
        .collect();
    (out, grads)
}

/// [`run_on`] the CPU and on `gpu`, in f32.
fn both_devices(
    gpu: &Device,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> [(Tensor, Vec<Tensor>); 2] {
    [Device::Cpu, gpu.clone()].map(|device| run_on(&device, inputs, DType::F32, &f))
}

/// Compares what [`both_devices`] returned.
fn assert_same(what: &str, [(cpu, cpu_grads), (gpu, gpu_grads)]: &[(Tensor, Vec<Tensor>); 2]) {
    assert_close(&format!("{what}: output"), gpu, cpu);
    for (i, (g, c)) in gpu_grads.iter().zip(cpu_grads).enumerate() {
        assert_close(&format!("{what}: gradient of input {i}"), g, c);
    }
}

/// The half-precision types the memory-bound kernels run on.
const HALF_TYPES: [DType; 2] = [DType::F16, DType::BF16];

/// `t`'s values rounded to `dtype` (on the CPU: to nearest even), as f32.
fn rounded(t: &Tensor, dtype: DType) -> Vec<f32> {
    let t = t
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let t = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `t` as f32 values on the CPU.
fn values(t: &Tensor) -> Vec<f32> {
    let t = t
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `f` in `dtype` on `gpu`: its output and gradients are exactly those of `f` in f32 on `gpu`
/// on the same inputs (and output weights of [`run_on`]) rounded to `dtype`, each rounded once
/// to `dtype` (the half kernels compute in f32 in the f32 kernels' order and round on the store;
/// a double rounding or a fallback to candle's ops would not give these values); and those f32
/// values are the CPU's within 1e-4.
fn assert_half_matches(
    what: &str,
    gpu: &Device,
    dtype: DType,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let in_half: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
    let (half_out, half_grads) = run_on(gpu, &in_half, dtype, &f);
    assert_eq!(half_out.dtype(), dtype, "{what}: the output changed type");
    let exact: Vec<Tensor> = in_half
        .iter()
        .map(|t| t.to_dtype(DType::F32).unwrap())
        .collect();
    let (f32_out, f32_grads) = run_on(gpu, &exact, dtype, &f);
    let (cpu_out, cpu_grads) = run_on(&Device::Cpu, &exact, dtype, &f);
    let parts = std::iter::once((&half_out, &f32_out, &cpu_out)).chain(
        half_grads
            .iter()
            .zip(&f32_grads)
            .zip(&cpu_grads)
            .map(|((h, e), c)| (h, e, c)),
    );
    for (i, (half, exact, cpu)) in parts.enumerate() {
        let part = if i == 0 {
            format!("{what}: output")
        } else {
            format!("{what}: gradient of input {}", i - 1)
        };
        assert_close(&part, exact, cpu);
        assert!(
            values(half) == rounded(exact, dtype),
            "{part} in {dtype:?}: not the f32 kernel's values rounded once"
        );
    }
}

#[test]
fn depthwise_convolution_and_its_gradients() {
    let Some(gpu) = cuda_device() else { return };
    for (i, (h, w)) in [(1, 1), (5, 7), (16, 32), (33, 65)].into_iter().enumerate() {
        for stride in [1, 2] {
            let x = random_tensor(&[2, 8, h, w], i as u64).unwrap();
            let k = random_tensor(&[8, 1, 3, 3], 50 + i as u64).unwrap();
            let runs = both_devices(&gpu, &[x, k], |t| depthwise_conv2d(&t[0], &t[1], stride));
            assert_same(&format!("depthwise {h}x{w} stride {stride}"), &runs);
        }
    }
}

#[test]
fn depthwise_convolution_with_bias_and_relu() {
    let Some(gpu) = cuda_device() else { return };
    let x = random_tensor(&[2, 16, 24, 40], 1).unwrap();
    let k = random_tensor(&[16, 1, 3, 3], 2).unwrap();
    let bias = random_tensor(&[16], 3).unwrap();
    for stride in [1, 2] {
        for relu in [false, true] {
            let run = |device: &Device| {
                let [x, k, bias] = [&x, &k, &bias].map(|t| t.to_device(device).unwrap());
                depthwise_conv2d_bias_act(&x, &k, &bias, stride, relu).unwrap()
            };
            assert_close(
                &format!("depthwise + bias, stride {stride}, relu {relu}"),
                &run(&gpu),
                &run(&Device::Cpu),
            );
        }
    }
}

#[test]
fn adaptive_average_pooling_and_its_gradient() {
    let Some(gpu) = cuda_device() else { return };
    for (h, w) in [(8, 16), (7, 13), (32, 64)] {
        for out in [1, 2, 3, 6] {
            let x = random_tensor(&[2, 4, h, w], (h * w + out) as u64).unwrap();
            let runs = both_devices(&gpu, &[x], |t| adaptive_avg_pool2d(&t[0], out, out));
            assert_same(&format!("pool {h}x{w} to {out}x{out}"), &runs);
        }
    }
}

#[test]
fn bilinear_resize_and_its_gradient_in_both_corner_modes() {
    let Some(gpu) = cuda_device() else { return };
    let cases = [
        ((8, 16), (64, 128)),
        ((5, 7), (13, 3)),
        ((32, 64), (8, 16)),
        ((1, 1), (4, 5)),
    ];
    for ((h, w), (oh, ow)) in cases {
        for align_corners in [true, false] {
            let x = random_tensor(&[2, 3, h, w], (h + ow) as u64).unwrap();
            let runs = both_devices(&gpu, &[x], |t| {
                resize_bilinear(&t[0], oh, ow, align_corners)
            });
            assert_same(
                &format!("resize {h}x{w} to {oh}x{ow}, align {align_corners}"),
                &runs,
            );
        }
    }
}

#[test]
fn fused_resize_and_argmax_gives_the_cpu_labels() {
    let Some(gpu) = cuda_device() else { return };
    for align_corners in [true, false] {
        let scores = random_tensor(&[2, 19, 16, 32], 7).unwrap();
        let labels = |device: &Device| -> Vec<u32> {
            resize_argmax(&scores.to_device(device).unwrap(), 128, 256, align_corners)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (gpu_labels, cpu_labels) = (labels(&gpu), labels(&Device::Cpu));
        let same = gpu_labels
            .iter()
            .zip(&cpu_labels)
            .filter(|(a, b)| a == b)
            .count();
        assert_eq!(same, cpu_labels.len(), "align {align_corners}");
    }
}

#[test]
fn half_precision_depthwise_convolution_and_its_gradients() {
    let Some(gpu) = cuda_device() else { return };
    for half in HALF_TYPES {
        for stride in [1, 2] {
            let x = random_tensor(&[2, 8, 33, 65], 1).unwrap();
            let k = random_tensor(&[8, 1, 3, 3], 2).unwrap();
            assert_half_matches(
                &format!("depthwise stride {stride}"),
                &gpu,
                half,
                &[x, k],
                |t| depthwise_conv2d(&t[0], &t[1], stride),
            );
        }
        let x = random_tensor(&[2, 16, 24, 40], 3).unwrap();
        let k = random_tensor(&[16, 1, 3, 3], 4).unwrap();
        let bias = random_tensor(&[16], 5).unwrap();
        let run = |dtype: DType| {
            let [x, k, bias] =
                [&x, &k, &bias].map(|t| t.to_dtype(half).unwrap().to_dtype(dtype).unwrap());
            let [x, k, bias] = [x, k, bias].map(|t| t.to_device(&gpu).unwrap());
            depthwise_conv2d_bias_act(&x, &k, &bias, 2, true).unwrap()
        };
        assert!(
            values(&run(half)) == rounded(&run(DType::F32), half),
            "depthwise + bias in {half:?}: not the f32 kernel's values rounded once"
        );
    }
}

#[test]
fn half_precision_pooling_and_resize_and_their_gradients() {
    let Some(gpu) = cuda_device() else { return };
    for half in HALF_TYPES {
        for out in [1, 2, 3, 6] {
            let x = random_tensor(&[2, 4, 7, 13], out as u64).unwrap();
            assert_half_matches(&format!("pool to {out}x{out}"), &gpu, half, &[x], |t| {
                adaptive_avg_pool2d(&t[0], out, out)
            });
        }
        for align_corners in [true, false] {
            for ((h, w), (oh, ow)) in [((8, 16), (64, 128)), ((32, 64), (8, 16))] {
                let x = random_tensor(&[2, 3, h, w], (h + oh) as u64).unwrap();
                assert_half_matches(
                    &format!("resize {h}x{w} to {oh}x{ow}, align {align_corners}"),
                    &gpu,
                    half,
                    &[x],
                    |t| resize_bilinear(&t[0], oh, ow, align_corners),
                );
            }
        }
    }
}

/// Half-precision scores are blended in f32 without rounding: the labels are the f32 kernel's on
/// the same scores, exactly.
#[test]
fn half_precision_resize_and_argmax_gives_the_f32_labels() {
    let Some(gpu) = cuda_device() else { return };
    for dtype in HALF_TYPES {
        for align_corners in [true, false] {
            let scores = random_tensor(&[2, 19, 16, 32], 7)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let labels = |scores: &Tensor| -> Vec<u32> {
                resize_argmax(scores, 128, 256, align_corners)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let gpu_labels = labels(&scores.to_device(&gpu).unwrap());
            let cpu_labels = labels(&scores.to_dtype(DType::F32).unwrap());
            assert!(
                gpu_labels == cpu_labels,
                "{dtype:?}, align {align_corners}: the labels differ"
            );
        }
    }
}

#[test]
fn training_batch_norm_forward_backward_and_statistics() {
    let Some(gpu) = cuda_device() else { return };
    for relu in [false, true] {
        // Values far from zero: the statistics' sums must not lose the variance.
        let x = random_tensor(&[4, 6, 17, 33], 1)
            .unwrap()
            .affine(3.0, 20.0)
            .unwrap();
        let gamma = (random_tensor(&[6], 2).unwrap() + 1.5).unwrap();
        let beta = random_tensor(&[6], 3).unwrap();
        let stats: std::cell::RefCell<Vec<Tensor>> = Default::default();
        let runs = both_devices(&gpu, &[x, gamma, beta], |t| {
            let out = batch_norm_train_act(&t[0], &t[1], &t[2], 1e-5, relu)?;
            stats.borrow_mut().extend([out.mean, out.variance]);
            Ok(out.output)
        });
        assert_same(&format!("batch norm, relu {relu}"), &runs);
        let stats = stats.borrow();
        assert_close("batch mean", &stats[2], &stats[0]);
        assert_close("batch variance", &stats[3], &stats[1]);
    }
}

#[test]
fn cross_entropy_with_ignored_pixels_and_its_gradient() {
    let Some(gpu) = cuda_device() else { return };
    let (n, c, h, w) = (2, 19, 24, 40);
    let targets: Vec<u32> = (0..n * h * w).map(|i| (i * 7 % c) as u32).collect();
    let mask: Vec<bool> = (0..n * h * w).map(|i| i % 5 != 0).collect();
    let logits = (random_tensor(&[n, c, h, w], 4).unwrap() * 4.0).unwrap();
    let runs = both_devices(&gpu, &[logits], |t| {
        softmax_cross_entropy(&t[0], &targets, &mask)
    });
    assert_same("cross-entropy", &runs);
}

#[test]
fn loss_of_upsampled_scores_and_its_gradient() {
    let Some(gpu) = cuda_device() else { return };
    let (n, c, h, w, oh, ow) = (2, 19, 8, 16, 64, 128);
    let targets: Vec<u32> = (0..n * oh * ow).map(|i| (i * 3 % c) as u32).collect();
    let mask: Vec<bool> = (0..n * oh * ow).map(|i| i % 7 != 0).collect();
    let scores = (random_tensor(&[n, c, h, w], 5).unwrap() * 4.0).unwrap();
    for align_corners in [true, false] {
        let runs = both_devices(&gpu, std::slice::from_ref(&scores), |t| {
            resize_cross_entropy(&t[0], (oh, ow), align_corners, &targets, &mask)
        });
        assert_same(
            &format!("loss of upsampled scores, align {align_corners}"),
            &runs,
        );
    }
}

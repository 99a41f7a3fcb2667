//! The golden parity on a CUDA device: both public layouts, BatchNorm folded (inference, the
//! fused depthwise kernel) and unfolded, logits within 1e-3 of PyTorch's and argmax agreement
//! ≥ 99.9%, for `forward` and the label map of `predict`. In f16 and bf16 (folded, the
//! half-precision kernels), the bounds of `half_precision.rs` for f16 (logits within 1.5e-2 of
//! their largest value, agreement ≥ 99.5%), eight times looser for bf16's three fewer significand
//! bits. Runs where a CUDA device is present in a build with `--features cuda`; elsewhere it says
//! "skipped: no CUDA device" and passes. The fixtures are required under `CI=true`, as for the
//! CPU parity.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use fastscnn_core::testing::{
    argmax_agreement, cuda_device, label_agreement, max_abs_diff, relative_max_diff, shared_dir,
};
use fastscnn_model::{image_to_tensor, load_rgb_image, BatchNormMode, FastScnn, LoadOptions};

const TOLERANCE: f32 = 1e-3;

fn golden() -> Option<PathBuf> {
    Some(shared_dir()?.join("golden"))
}

/// `weights` loaded with `options` (a CUDA device) and run on the golden frame in their dtype:
/// the logits, checked to stay on the GPU in that dtype, as f32 on the CPU, and the label map of
/// `predict` on the CPU.
fn golden_run(golden: &Path, weights: &str, options: &LoadOptions) -> (Tensor, Tensor) {
    let model = FastScnn::from_file(golden.join(weights), options).unwrap();
    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &model.config().normalization, &options.device)
        .unwrap()
        .to_dtype(options.dtype)
        .unwrap();
    let logits = model.forward(&input).unwrap();
    assert_eq!(logits.dtype(), options.dtype);
    assert!(
        logits.device().is_cuda(),
        "{weights}: the logits left the GPU"
    );
    let logits = logits
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let labels = model
        .predict(&input)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    (logits, labels)
}

/// `weights` on `device`, run on the golden frame, against the expected logits of `expected`.
fn check(device: &Device, weights: &str, expected: &str) {
    let Some(golden) = golden() else { return };
    let expected = candle_core::safetensors::load(golden.join(expected), &Device::Cpu).unwrap();
    let expected = &expected["logits"];
    for batch_norm in [BatchNormMode::Folded, BatchNormMode::Unfolded] {
        let options = LoadOptions {
            batch_norm,
            device: device.clone(),
            ..Default::default()
        };
        let (logits, labels) = golden_run(&golden, weights, &options);
        let d = max_abs_diff(&logits, expected);
        eprintln!("{weights} {batch_norm:?} on CUDA: max |diff| = {d:e}");
        assert!(
            d <= TOLERANCE,
            "{weights} {batch_norm:?}: max |diff| {d} > {TOLERANCE}"
        );
        let agreement = argmax_agreement(&logits, expected);
        assert!(
            agreement >= 0.999,
            "{weights} {batch_norm:?}: argmax agreement {agreement}"
        );
        let agreement = label_agreement(&labels, expected);
        assert!(
            agreement >= 0.999,
            "{weights} {batch_norm:?}: label agreement {agreement}"
        );
    }
}

#[test]
fn reference_layout_on_cuda_matches_pytorch() {
    let Some(device) = cuda_device() else { return };
    check(
        &device,
        "fastscnn_seed0_c19.safetensors",
        "seed0_c19_256x512_expected.safetensors",
    );
}

#[test]
fn openmmlab_layout_on_cuda_matches_pytorch() {
    let Some(device) = cuda_device() else { return };
    check(
        &device,
        "mmseg_fastscnn_c19.pth",
        "mmseg_c19_256x512_expected.safetensors",
    );
}

/// `weights` in `dtype` on `device` against PyTorch's f32 logits of `expected`: logits within
/// `bound.0` of their largest value, argmax and label map agreement ≥ `bound.1`.
fn check_half(device: &Device, weights: &str, expected: &str, dtype: DType, bound: (f32, f64)) {
    let Some(golden) = golden() else { return };
    let expected = candle_core::safetensors::load(golden.join(expected), &Device::Cpu).unwrap();
    let expected = &expected["logits"];
    let options = LoadOptions {
        dtype,
        device: device.clone(),
        ..Default::default()
    };
    let (logits, labels) = golden_run(&golden, weights, &options);
    let diff = relative_max_diff(&logits, expected);
    let agreement = argmax_agreement(&logits, expected);
    let labels = label_agreement(&labels, expected);
    eprintln!(
        "{weights} {dtype:?} on CUDA: relative diff {diff:e}, argmax {agreement}, labels {labels}"
    );
    assert!(diff <= bound.0, "{weights} {dtype:?}: relative diff {diff}");
    assert!(
        agreement >= bound.1,
        "{weights} {dtype:?}: argmax agreement {agreement}"
    );
    assert!(
        labels >= bound.1,
        "{weights} {dtype:?}: label agreement {labels}"
    );
}

/// The half types with their bounds (see the top of the file).
const HALF_BOUNDS: [(DType, (f32, f64)); 2] =
    [(DType::F16, (1.5e-2, 0.995)), (DType::BF16, (1.2e-1, 0.96))];

#[test]
fn both_layouts_on_cuda_in_half_precision() {
    let Some(device) = cuda_device() else { return };
    for (dtype, bound) in HALF_BOUNDS {
        check_half(
            &device,
            "fastscnn_seed0_c19.safetensors",
            "seed0_c19_256x512_expected.safetensors",
            dtype,
            bound,
        );
        check_half(
            &device,
            "mmseg_fastscnn_c19.pth",
            "mmseg_c19_256x512_expected.safetensors",
            dtype,
            bound,
        );
    }
}

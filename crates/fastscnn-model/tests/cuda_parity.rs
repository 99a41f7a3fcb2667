//! The golden parity on a CUDA device: both public layouts, BatchNorm folded (inference, the
//! fused depthwise kernel) and unfolded, logits within 1e-3 of PyTorch's and argmax agreement
//! ≥ 99.9%, for `forward` and the label map of `predict`. Runs where a CUDA device is present in
//! a build with `--features cuda`; elsewhere it says "skipped: no CUDA device" and passes. The
//! fixtures are required under `CI=true`, as for the CPU parity.

use std::path::PathBuf;

use candle_core::{DType, Device, Module, Tensor};
use fastscnn_core::testing::{
    argmax_agreement, cuda_device, label_agreement, max_abs_diff, shared_dir,
};
use fastscnn_model::{image_to_tensor, load_rgb_image, BatchNormMode, FastScnn, LoadOptions};

const TOLERANCE: f32 = 1e-3;

fn golden() -> Option<PathBuf> {
    Some(shared_dir()?.join("golden"))
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
        let model = FastScnn::from_file(golden.join(weights), &options).unwrap();
        let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
        let input = image_to_tensor(&image, &model.config().normalization, device).unwrap();
        let logits = model.forward(&input).unwrap();
        assert!(
            logits.device().is_cuda(),
            "{weights}: the logits left the GPU"
        );
        let logits = logits
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
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
        let labels: Tensor = model
            .predict(&input)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
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

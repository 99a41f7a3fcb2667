//! Parity with the reference PyTorch implementation on the golden fixtures: every intermediate and
//! the logits within 1e-3, argmax agreement ≥ 99.9%, with BatchNorm folded and unfolded.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use fastscnn_core::testing::{argmax_agreement, argmax_labels, max_abs_diff, shared_dir};
use fastscnn_model::{image_to_tensor, load_rgb_image, BatchNormMode, FastScnn, LoadOptions};

const TOLERANCE: f32 = 1e-3;

fn load_model(golden: &Path, batch_norm: BatchNormMode) -> FastScnn {
    let options = LoadOptions {
        batch_norm,
        ..Default::default()
    };
    FastScnn::from_safetensors(golden.join("fastscnn_seed0_c19.safetensors"), &options).unwrap()
}

fn expected(golden: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        golden.join("seed0_c19_256x512_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn check_parity(batch_norm: BatchNormMode) {
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    let model = load_model(&golden, batch_norm);
    assert_eq!(model.num_classes(), 19);
    assert!(model.has_aux_head());
    let expected = expected(&golden);

    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
    let d = max_abs_diff(&input, &expected["input"]);
    assert!(
        d <= 1e-6,
        "preprocessing differs from the fixture's input by {d}"
    );

    let stages = model.forward_stages(&input, true).unwrap();
    let aux = stages
        .aux_logits
        .clone()
        .expect("aux logits were asked for");
    for (name, ours) in [
        ("higher_res", &stages.higher_res),
        ("global", &stages.global),
        ("fused", &stages.fused),
        ("classifier", &stages.classifier),
        ("logits", &stages.logits),
        ("aux_logits", &aux),
    ] {
        let d = max_abs_diff(ours, &expected[name]);
        eprintln!("{batch_norm:?} {name}: max |diff| = {d:e}");
        assert!(
            d <= TOLERANCE,
            "{name}: max |diff| {d} > {TOLERANCE} ({batch_norm:?})"
        );
    }
    let agreement = argmax_agreement(&stages.logits, &expected["logits"]);
    assert!(
        agreement >= 0.999,
        "argmax agreement {agreement} ({batch_norm:?})"
    );
}

#[test]
fn golden_parity_with_folded_batch_norm() {
    check_parity(BatchNormMode::Folded);
}

#[test]
fn golden_parity_with_unfolded_batch_norm() {
    check_parity(BatchNormMode::Unfolded);
}

#[test]
fn outputs_are_consistent_and_sizes_need_not_be_multiples_of_32() {
    let Some(shared) = shared_dir() else { return };
    let model = load_model(&shared.join("golden"), BatchNormMode::Folded);
    let input = Tensor::randn(0f32, 1.0, (1, 3, 250, 500), &Device::Cpu).unwrap();
    let logits = model.forward(&input).unwrap();
    assert_eq!(logits.dims(), &[1, 19, 250, 500]);

    let labels = model.predict(&input).unwrap();
    assert_eq!(labels.dims(), &[1, 250, 500]);
    assert_eq!(labels.dtype(), DType::U32);
    assert_eq!(
        labels.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        argmax_labels(&logits)
    );

    let probs = model.probabilities(&input).unwrap();
    assert_eq!(probs.dims(), &[1, 19, 250, 500]);
    let sums = probs.sum(1).unwrap();
    let off = (sums - 1.0)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(off < 1e-5, "probabilities sum to 1 ± {off}");

    // Smaller and odd sizes: the low-resolution branch follows the high-resolution one.
    for (h, w) in [(97, 131), (64, 64), (33, 47)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap();
        assert_eq!(model.forward(&x).unwrap().dims(), &[2, 19, h, w]);
    }
}

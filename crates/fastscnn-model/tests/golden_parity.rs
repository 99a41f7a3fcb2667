//! Parity with both public PyTorch implementations on the golden fixtures: every intermediate and
//! the logits within 1e-3, argmax agreement ≥ 99.9%, with BatchNorm folded and unfolded, from
//! safetensors and straight from the PyTorch checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use fastscnn_core::testing::{
    argmax_agreement, argmax_labels, label_agreement, max_abs_diff, shared_dir,
};
use fastscnn_model::{
    image_to_tensor, load_rgb_image, AuxSource, BatchNormMode, FastScnn, FastScnnStages,
    LoadOptions, WeightFile, WeightFormat, WeightLayout,
};

const TOLERANCE: f32 = 1e-3;

/// A fixture tensor's name and the stage of ours it must equal.
type StageCheck = (&'static str, fn(&FastScnnStages) -> &Tensor);

fn golden() -> Option<PathBuf> {
    Some(shared_dir()?.join("golden"))
}

fn load_model(path: &Path, batch_norm: BatchNormMode) -> FastScnn {
    let options = LoadOptions {
        batch_norm,
        ..Default::default()
    };
    FastScnn::from_file(path, &options).unwrap()
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Runs `model` on the golden input and compares each named stage with the fixture's tensor.
fn check_stages(
    model: &FastScnn,
    expected: &HashMap<String, Tensor>,
    names: &[StageCheck],
    label: &str,
) {
    let golden = golden().unwrap();
    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
    let d = max_abs_diff(&input, &expected["input"]);
    assert!(
        d <= 1e-6,
        "preprocessing differs from the fixture's input by {d}"
    );

    let stages = model.forward_stages(&input, true).unwrap();
    for (name, stage) in names {
        let d = max_abs_diff(stage(&stages), &expected[*name]);
        eprintln!("{label} {name}: max |diff| = {d:e}");
        assert!(
            d <= TOLERANCE,
            "{label} {name}: max |diff| {d} > {TOLERANCE}"
        );
    }
    let agreement = argmax_agreement(&stages.logits, &expected["logits"]);
    assert!(agreement >= 0.999, "{label}: argmax agreement {agreement}");

    // Folded models take the fused CPU path in `forward` and `predict`: the same bar.
    assert_eq!(
        model.uses_cpu_kernels(),
        model.is_batch_norm_folded(),
        "{label}"
    );
    if model.uses_cpu_kernels() {
        let logits = model.forward(&input).unwrap();
        let d = max_abs_diff(&logits, &expected["logits"]);
        eprintln!("{label} logits (CPU kernels): max |diff| = {d:e}");
        assert!(
            d <= TOLERANCE,
            "{label} CPU kernels: max |diff| {d} > {TOLERANCE}"
        );
        let labels = model.predict(&input).unwrap();
        let agreement = label_agreement(&labels, &expected["logits"]);
        assert!(
            agreement >= 0.999,
            "{label} CPU kernels: argmax agreement {agreement}"
        );
    }
}

fn check_reference_parity(weights: &str, batch_norm: BatchNormMode) {
    let Some(golden) = golden() else { return };
    let model = load_model(&golden.join(weights), batch_norm);
    assert_eq!(model.num_classes(), 19);
    assert_eq!(model.config().layout, WeightLayout::Reference);
    assert_eq!(model.aux_heads(), [AuxSource::HigherRes]);
    let expected = load_tensors(&golden.join("seed0_c19_256x512_expected.safetensors"));
    check_stages(
        &model,
        &expected,
        &[
            ("higher_res", |s| &s.higher_res),
            ("global", |s| &s.global),
            ("fused", |s| &s.fused),
            ("classifier", |s| &s.classifier),
            ("logits", |s| &s.logits),
            ("aux_logits", |s| &s.aux_logits[0]),
        ],
        &format!("{weights} {batch_norm:?}"),
    );
}

fn check_openmmlab_parity(path: &Path, batch_norm: BatchNormMode) {
    let golden = golden().unwrap();
    let model = load_model(path, batch_norm);
    assert_eq!(model.num_classes(), 19);
    assert_eq!(model.config().layout, WeightLayout::OpenMmlab);
    assert_eq!(model.aux_heads(), [AuxSource::Global, AuxSource::HigherRes]);
    let expected = load_tensors(&golden.join("mmseg_c19_256x512_expected.safetensors"));
    check_stages(
        &model,
        &expected,
        &[
            ("backbone_out0", |s| &s.higher_res),
            ("backbone_out1", |s| &s.global),
            ("backbone_out2", |s| &s.fused),
            ("decode_head", |s| &s.classifier),
            ("logits", |s| &s.logits),
        ],
        &format!("{} {batch_norm:?}", path.display()),
    );
}

#[test]
fn golden_parity_with_folded_batch_norm() {
    check_reference_parity("fastscnn_seed0_c19.safetensors", BatchNormMode::Folded);
}

#[test]
fn golden_parity_with_unfolded_batch_norm() {
    check_reference_parity("fastscnn_seed0_c19.safetensors", BatchNormMode::Unfolded);
}

#[test]
fn golden_parity_from_the_pytorch_checkpoint() {
    check_reference_parity("fastscnn_seed0_c19.pth", BatchNormMode::Folded);
}

#[test]
fn pytorch_checkpoint_holds_the_safetensors_tensors_without_step_counters() {
    let Some(golden) = golden() else { return };
    let pth = WeightFile::open(golden.join("fastscnn_seed0_c19.pth")).unwrap();
    let st = WeightFile::open(golden.join("fastscnn_seed0_c19.safetensors")).unwrap();
    assert_eq!(pth.format(), WeightFormat::PyTorch);
    assert_eq!(st.format(), WeightFormat::Safetensors);
    assert_eq!(pth.len(), 231);
    assert_eq!(pth.len(), st.len());
    for (key, tensor) in st.tensors() {
        let other = pth
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from the .pth"));
        assert_eq!(max_abs_diff(tensor, other), 0.0, "{key}");
    }
    // The fixture's README counts the network without its auxiliary head (64·32·9 + 2·32 + 32·19 +
    // 19 = 19,123 more), as the paper's 1.11M does.
    let auxiliary = st.auxiliary_parameter_count().unwrap();
    assert_eq!(auxiliary, 19_123);
    assert_eq!(st.parameter_count() - auxiliary, 1_138_051);
}

#[test]
fn openmmlab_parity_from_the_pytorch_checkpoint() {
    let Some(golden) = golden() else { return };
    for batch_norm in [BatchNormMode::Folded, BatchNormMode::Unfolded] {
        check_openmmlab_parity(&golden.join("mmseg_fastscnn_c19.pth"), batch_norm);
    }
}

#[test]
fn openmmlab_parity_after_conversion_to_safetensors() {
    let Some(golden) = golden() else { return };
    let source = golden.join("mmseg_fastscnn_c19.pth");
    let dir = tempfile::tempdir().unwrap();
    let converted = dir.path().join("mmseg.safetensors");
    let weights = WeightFile::open(&source).unwrap();
    weights.save_safetensors(&converted).unwrap();
    let reread = WeightFile::open(&converted).unwrap();
    assert_eq!(reread.metadata()["layout"], "openmmlab");
    assert_eq!(reread.metadata()["classes"], "19");
    assert_eq!(reread.metadata()["source"], "mmseg_fastscnn_c19.pth");
    assert!(reread.keys().all(|k| !k.ends_with("num_batches_tracked")));
    check_openmmlab_parity(&converted, BatchNormMode::Folded);
}

#[test]
fn openmmlab_auxiliary_heads_classify_their_own_features() {
    let Some(golden) = golden() else { return };
    let model = load_model(
        &golden.join("mmseg_fastscnn_c19.pth"),
        BatchNormMode::Folded,
    );
    let x = Tensor::randn(0f32, 1.0, (1, 3, 128, 256), &Device::Cpu).unwrap();
    let stages = model.forward_stages(&x, true).unwrap();
    assert_eq!(stages.aux_logits.len(), 2);
    for aux in &stages.aux_logits {
        assert_eq!(aux.dims(), &[1, 19, 128, 256]);
    }
    assert!(max_abs_diff(&stages.aux_logits[0], &stages.aux_logits[1]) > 0.0);
    assert!(model
        .forward_stages(&x, false)
        .unwrap()
        .aux_logits
        .is_empty());
}

#[test]
fn outputs_are_consistent_and_sizes_need_not_be_multiples_of_32() {
    let Some(golden) = golden() else { return };
    let model = load_model(
        &golden.join("fastscnn_seed0_c19.safetensors"),
        BatchNormMode::Folded,
    );
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

#[test]
fn cpu_kernels_match_candle_ops_at_odd_sizes_in_batches_for_both_layouts() {
    let Some(golden) = golden() else { return };
    for file in ["fastscnn_seed0_c19.safetensors", "mmseg_fastscnn_c19.pth"] {
        let fast = load_model(&golden.join(file), BatchNormMode::Folded);
        assert!(fast.uses_cpu_kernels(), "{file}");
        let plain = fast.clone().with_cpu_kernels(false).unwrap();
        assert!(!plain.uses_cpu_kernels());
        for (n, h, w) in [
            (2, 97, 131),
            (1, 256, 512),
            (1, 33, 47),
            (1, 5, 7),
            (1, 3, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, 3, h, w), &Device::Cpu).unwrap();
            let expected = plain.forward(&x).unwrap();
            let d = max_abs_diff(&fast.forward(&x).unwrap(), &expected);
            assert!(d <= TOLERANCE, "{file} {n}x{h}x{w}: max |diff| {d}");
            let probs = candle_nn::ops::softmax(&expected, 1).unwrap();
            let d = max_abs_diff(&fast.probabilities(&x).unwrap(), &probs);
            assert!(
                d <= TOLERANCE,
                "{file} {n}x{h}x{w}: probabilities max |diff| {d}"
            );
            let agreement = label_agreement(&fast.predict(&x).unwrap(), &expected);
            assert!(
                agreement >= 0.999,
                "{file} {n}x{h}x{w}: agreement {agreement}"
            );
        }
        // Below the stem's window both paths refuse the input; the padded stem takes 2x2.
        let x = Tensor::randn(0f32, 1.0, (1, 3, 2, 2), &Device::Cpu).unwrap();
        assert_eq!(
            fast.forward(&x).is_ok(),
            plain.forward(&x).is_ok(),
            "{file} 2x2"
        );
        if let Ok(expected) = plain.forward(&x) {
            assert!(max_abs_diff(&fast.forward(&x).unwrap(), &expected) <= TOLERANCE);
        }
    }
}

#[test]
fn inputs_the_network_cannot_take_are_errors_not_panics() {
    let Some(golden) = golden() else { return };
    let model = load_model(
        &golden.join("fastscnn_seed0_c19.safetensors"),
        BatchNormMode::Folded,
    );
    for model in [model.clone(), model.with_cpu_kernels(false).unwrap()] {
        let tiny = Tensor::zeros((1, 3, 2, 40), DType::F32, &Device::Cpu).unwrap();
        let messages = [
            model.forward(&tiny).unwrap_err().to_string(),
            model.predict(&tiny).unwrap_err().to_string(),
        ];
        for message in messages {
            assert!(
                message.contains("2x40 input is smaller than the stem's 3x3 window"),
                "{message}"
            );
        }
        let gray = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
        let message = model.predict(&gray).unwrap_err().to_string();
        assert!(
            message.contains("takes 3 input channels; got a batch of shape [1, 1, 64, 64]"),
            "{message}"
        );
    }
}

#[test]
fn profiled_prediction_is_the_prediction_with_every_stage_timed() {
    let Some(golden) = golden() else { return };
    let model = load_model(
        &golden.join("mmseg_fastscnn_c19.pth"),
        BatchNormMode::Folded,
    );
    let x = Tensor::randn(0f32, 1.0, (1, 3, 128, 256), &Device::Cpu).unwrap();
    let mut stages = Vec::new();
    let profiled = model
        .predict_profiled(&x, |name, _| stages.push(name))
        .unwrap();
    let plain = model.predict(&x).unwrap();
    assert_eq!(
        profiled.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        plain.flatten_all().unwrap().to_vec1::<u32>().unwrap()
    );
    assert_eq!(
        stages,
        [
            "learning to downsample",
            "bottleneck group 1",
            "bottleneck group 2",
            "bottleneck group 3",
            "pyramid pooling",
            "feature fusion",
            "classifier",
            "resize + argmax"
        ]
    );
}

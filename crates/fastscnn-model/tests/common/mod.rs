//! Parity of the fused CPU path with one instruction set forced through `FASTSCNN_ISA`: each
//! caller is its own test binary, so its process picks the set before anything runs a kernel.

use candle_core::{Device, Module};
use fastscnn_core::testing::{label_agreement, max_abs_diff, shared_dir};
use fastscnn_cpu::Isa;
use fastscnn_model::{image_to_tensor, load_rgb_image, FastScnn, LoadOptions};

/// Forces `isa` (no effect past what the processor has) and checks both public layouts against
/// their golden logits: within 1e-3, labels agreeing on ≥ 99.9% of pixels.
pub fn check_golden_parity_with(isa: &str) {
    // Before anything in this test binary has run a kernel (the choice is made once).
    std::env::set_var("FASTSCNN_ISA", isa);
    let expected_isa = match isa {
        "portable" => Some(Isa::Portable),
        "avx2" if cfg!(target_arch = "x86_64") && Isa::detected() != Isa::Portable => {
            Some(Isa::Avx2)
        }
        "neon" if cfg!(all(target_arch = "aarch64", target_feature = "neon")) => Some(Isa::Neon),
        _ => None,
    };
    if let Some(expected) = expected_isa {
        assert_eq!(Isa::detected(), expected);
    }
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    for (weights, expected) in [
        (
            "fastscnn_seed0_c19.safetensors",
            "seed0_c19_256x512_expected.safetensors",
        ),
        (
            "mmseg_fastscnn_c19.pth",
            "mmseg_c19_256x512_expected.safetensors",
        ),
    ] {
        let model = FastScnn::from_file(golden.join(weights), &LoadOptions::default()).unwrap();
        assert!(model.uses_cpu_kernels());
        let expected = candle_core::safetensors::load(golden.join(expected), &Device::Cpu).unwrap();
        let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
        let input = image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
        let logits = model.forward(&input).unwrap();
        let d = max_abs_diff(&logits, &expected["logits"]);
        assert!(d <= 1e-3, "{isa} {weights}: max |diff| {d}");
        let agreement = label_agreement(&model.predict(&input).unwrap(), &expected["logits"]);
        assert!(agreement >= 0.999, "{isa} {weights}: agreement {agreement}");
    }
}

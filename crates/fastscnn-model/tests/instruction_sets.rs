//! Parity of the fused CPU path on every instruction set this processor runs (AVX-512, AVX2,
//! NEON, the portable code), each in an execution context of its own, all in this one process:
//! both public layouts against their golden logits, within 1e-3, labels agreeing on ≥ 99.9% of
//! pixels.

use candle_core::{Device, Module};
use fastscnn_core::testing::{label_agreement, max_abs_diff, shared_dir};
use fastscnn_model::{
    image_to_tensor, load_rgb_image, ExecutionContext, FastScnn, Isa, LoadOptions,
};

#[test]
fn every_instruction_set_reproduces_the_golden_outputs() {
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    let isas = Isa::available();
    assert_eq!(isas.last(), Some(&Isa::Portable));
    for isa in isas {
        let context = ExecutionContext::new(isa, None).unwrap();
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
            let options = LoadOptions {
                context: Some(context.clone()),
                ..LoadOptions::default()
            };
            let model = FastScnn::from_file(golden.join(weights), &options).unwrap();
            assert!(model.uses_cpu_kernels());
            let expected =
                candle_core::safetensors::load(golden.join(expected), &Device::Cpu).unwrap();
            let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
            let input =
                image_to_tensor(&image, &model.config().normalization, &Device::Cpu).unwrap();
            let logits = model.forward(&input).unwrap();
            let d = max_abs_diff(&logits, &expected["logits"]);
            assert!(d <= 1e-3, "{isa:?} {weights}: max |diff| {d}");
            let labels = model.predict(&input).unwrap();
            let agreement = label_agreement(&labels, &expected["logits"]);
            assert!(
                agreement >= 0.999,
                "{isa:?} {weights}: agreement {agreement}"
            );
        }
    }
}

/// Two contexts in one process, one model each: the same weights give the same labels on two
/// instruction sets side by side, with no switch to flip between them.
#[test]
fn two_instruction_sets_side_by_side() {
    let Some(shared) = shared_dir() else { return };
    let golden = shared.join("golden");
    let isas = Isa::available();
    let (best, portable) = (isas[0], Isa::Portable);
    let load = |isa| {
        let options = LoadOptions {
            context: Some(ExecutionContext::new(isa, Some(2)).unwrap()),
            ..LoadOptions::default()
        };
        FastScnn::from_file(golden.join("fastscnn_seed0_c19.safetensors"), &options).unwrap()
    };
    let (a, b) = (load(best), load(portable));
    assert_eq!(a.execution_context().unwrap().isa(), best);
    let image = load_rgb_image(golden.join("seed0_c19_256x512_input0.png")).unwrap();
    let input = image_to_tensor(&image, &a.config().normalization, &Device::Cpu).unwrap();
    let (la, lb) = (a.forward(&input).unwrap(), b.forward(&input).unwrap());
    let d = max_abs_diff(&la, &lb);
    assert!(d <= 1e-3, "{best:?} against portable: {d}");
}

//! Inputs shared by the benchmarks: deterministic random tensors and a model whose weights do not
//! depend on any fixture, so the benches run on a fresh checkout.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use fastscnn_core::layers::NormOptions;
pub use fastscnn_core::testing::random_tensor;
use fastscnn_model::{FastScnn, FastScnnConfig};

/// The input sizes (height, width) of the paper's Table 7: Cityscapes at full, half and quarter
/// resolution.
pub const MODEL_SIZES: [(usize, usize); 3] = [(1024, 2048), (512, 1024), (256, 512)];

/// The reference Fast-SCNN (19 classes, BN folded, on the fused CPU kernels as a loaded model
/// is) with constant weights: the arithmetic, and so the time, of a forward pass does not depend
/// on the values.
pub fn reference_model() -> anyhow::Result<FastScnn> {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let config = FastScnnConfig {
        aux_heads: vec![],
        ..FastScnnConfig::reference(19)
    };
    Ok(FastScnn::new(&config, NormOptions::default(), vb)?.with_cpu_kernels(true)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    #[test]
    fn inputs_are_deterministic_and_the_model_runs() {
        let a = random_tensor(&[1, 3, 64, 64], 5).unwrap();
        let b = random_tensor(&[1, 3, 64, 64], 5).unwrap();
        assert_eq!(fastscnn_core::testing::max_abs_diff(&a, &b), 0.0);
        let model = reference_model().unwrap();
        assert!(model.uses_cpu_kernels());
        let logits = model.forward(&a).unwrap();
        assert_eq!(logits.dims(), &[1, 19, 64, 64]);
    }
}

//! Inputs shared by the benchmarks: deterministic random tensors and a model whose weights do not
//! depend on any fixture, so the benches run on a fresh checkout.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::NormOptions;
use fastscnn_model::{FastScnn, FastScnnConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A (shape)-sized f32 tensor of uniform values in [-1, 1), the same for the same seed.
pub fn random_tensor(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// The reference Fast-SCNN (19 classes, BN folded) with constant weights: the arithmetic, and so
/// the time, of a forward pass does not depend on the values.
pub fn reference_model() -> Result<FastScnn> {
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    FastScnn::new(
        &FastScnnConfig::reference(19),
        false,
        NormOptions::default(),
        vb,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    #[test]
    fn inputs_are_deterministic_and_the_model_runs() {
        let a = random_tensor(&[1, 3, 64, 64], 5).unwrap();
        let b = random_tensor(&[1, 3, 64, 64], 5).unwrap();
        let diff: f32 = (a.clone() - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
        let logits = reference_model().unwrap().forward(&a).unwrap();
        assert_eq!(logits.dims(), &[1, 19, 64, 64]);
    }
}

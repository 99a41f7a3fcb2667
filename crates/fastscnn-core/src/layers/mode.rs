//! Inference or training: what BatchNorm and dropout do in a forward pass.

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Mode {
    /// BatchNorm uses its running statistics; dropout is the identity.
    #[default]
    Inference,
    /// BatchNorm normalises with the batch's statistics and updates its running ones; every
    /// dropout zeroes with probability `dropout`, its masks drawn from `dropout_seed`, so a
    /// training step is reproducible bit for bit (candle's own dropout draws from an unseedable
    /// thread RNG).
    Training {
        /// Probability, in [0, 1), that a dropout zeroes an element; 0 turns dropout off.
        dropout: f32,
        /// Seed of this step's dropout masks.
        dropout_seed: u64,
    },
}

/// The dropout probability of the public implementations' heads, and of a training run unless
/// it says otherwise.
pub const DEFAULT_DROPOUT: f32 = 0.1;

impl Mode {
    /// Whether this is [`Mode::Training`].
    pub fn is_training(self) -> bool {
        matches!(self, Mode::Training { .. })
    }
}

/// Inverted dropout at the training mode's probability `p`: each element is zeroed with
/// probability `p` and the rest scaled by `1 / (1 - p)`; the identity at inference. `site` tells
/// the dropout layers of one network apart, so they draw different masks from the same step seed.
pub fn dropout(x: &Tensor, mode: Mode, site: u64) -> Result<Tensor> {
    let Mode::Training {
        dropout: p,
        dropout_seed,
    } = mode
    else {
        return Ok(x.clone());
    };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(dropout_seed);
    rng.set_stream(site);
    let keep = 1.0 - p;
    let scale = 1.0 / keep;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_is_identity_at_inference_and_seeded_in_training() {
        let x = Tensor::ones((4, 1000), DType::F32, &Device::Cpu).unwrap();
        let same = dropout(&x, Mode::Inference, 0).unwrap();
        assert_eq!(same.sum_all().unwrap().to_scalar::<f32>().unwrap(), 4000.0);

        let train = Mode::Training {
            dropout: 0.1,
            dropout_seed: 7,
        };
        let a: Vec<f32> = dropout(&x, train, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = dropout(&x, train, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let other_site: Vec<f32> = dropout(&x, train, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other_site);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!(
            (300..500).contains(&zeros),
            "{zeros} of 4000 dropped at p = 0.1"
        );
        let kept = a.iter().find(|v| **v != 0.0).unwrap();
        assert!((kept - 1.0 / 0.9).abs() < 1e-6);
    }
}

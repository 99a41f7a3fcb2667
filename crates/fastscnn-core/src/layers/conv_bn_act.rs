//! Convolution + BatchNorm + optional ReLU, the unit every Fast-SCNN block is made of.

use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::{batch_norm, BatchNorm, BatchNormConfig, ModuleT, VarBuilder};

use super::conv::{Conv2d, ConvConfig};
use super::Mode;
use crate::ops::{
    batch_norm_train_act, conv_batch_norm_train_act, depthwise_conv2d_bias_act,
    BatchNormTrainOutput, ConvKind,
};

/// How BatchNorm is run at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNormMode {
    /// Folded into the preceding convolution when the weights are loaded: one op less per layer and
    /// the same numbers up to rounding. The default for inference.
    #[default]
    Folded,
    /// Kept as a separate layer with its own statistics, as training needs; also lets tests check
    /// the folding against the plain computation.
    Unfolded,
}

/// What every layer needs to know about normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormOptions {
    /// Whether BatchNorm is folded into the convolution or kept as a separate layer.
    pub mode: BatchNormMode,
    /// Added to the variance before its square root, as `eps` in PyTorch's `BatchNorm2d`.
    pub eps: f64,
}

impl Default for NormOptions {
    fn default() -> Self {
        Self {
            mode: BatchNormMode::Folded,
            eps: 1e-5,
        }
    }
}

/// A convolution followed by BatchNorm and an optional ReLU. In [`BatchNormMode::Folded`] the
/// BatchNorm is part of the convolution's weights and bias.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    conv: Conv2d,
    /// Present only in [`BatchNormMode::Unfolded`].
    bn: Option<BatchNorm>,
    relu: bool,
}

impl ConvBnAct {
    /// The convolution's tensors come from `conv_vb`, the BatchNorm's from `bn_vb`: PyTorch modules
    /// name the two by their position in an `nn.Sequential`, which differs from block to block.
    pub fn new(
        conv: ConvConfig,
        relu: bool,
        norm: NormOptions,
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
    ) -> Result<Self> {
        let bn_config = BatchNormConfig {
            eps: norm.eps,
            ..Default::default()
        };
        let dtype = conv_vb.dtype();
        Ok(match norm.mode {
            // Folded from the weights read in f32 (f64 for an f64 network), then rounded once to
            // the network's dtype: folded in f16 or bf16, σ²+ε, its root and each product would
            // be rounded in turn, and a small variance would lose its digits.
            BatchNormMode::Folded => {
                let wide = if dtype == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                };
                let conv_layer = Conv2d::new(conv, conv_vb.set_dtype(wide))?;
                let bn = batch_norm(conv.out_channels, bn_config, bn_vb.set_dtype(wide))?;
                Self {
                    conv: conv_layer.fold_batch_norm(&bn)?.to_dtype(dtype)?,
                    bn: None,
                    relu,
                }
            }
            BatchNormMode::Unfolded => Self {
                conv: Conv2d::new(conv, conv_vb)?,
                bn: Some(batch_norm(conv.out_channels, bn_config, bn_vb)?),
                relu,
            },
        })
    }

    /// The common `nn.Sequential(Conv2d, BatchNorm2d[, ReLU])` whose children are named `0` and `1`.
    pub fn sequential(
        conv: ConvConfig,
        relu: bool,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new(conv, relu, norm, vb.pp("0"), vb.pp("1"))
    }

    /// The convolution; when folded, it includes the BatchNorm's scale and shift.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// Whether the BatchNorm is folded into the convolution ([`BatchNormMode::Folded`]).
    pub fn is_folded(&self) -> bool {
        self.bn.is_none()
    }

    /// Whether a ReLU follows the BatchNorm.
    pub fn relu(&self) -> bool {
        self.relu
    }
}

impl ConvBnAct {
    /// In [`Mode::Training`] an unfolded BatchNorm uses batch statistics and updates its running
    /// ones; a folded one has no statistics left to train.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match &self.bn {
            Some(bn) if mode.is_training() => self.batch_norm_training(bn, x),
            Some(bn) => self.activate(bn.forward_t(&self.conv.forward(x)?, false)?),
            None => match (self.conv.kind(), self.conv.bias()) {
                // A depthwise layer with its BatchNorm folded in: one kernel on CUDA.
                (ConvKind::Depthwise { stride }, Some(bias)) => {
                    depthwise_conv2d_bias_act(x, self.conv.weight(), bias, stride, self.relu)
                }
                _ => self.activate(self.conv.forward(x)?),
            },
        }
    }

    fn activate(&self, y: Tensor) -> Result<Tensor> {
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// The convolution, BatchNorm in training mode and the ReLU, if any, through the fused ops
    /// (one op for all three where the convolution has no bias, as every convolution before a
    /// BatchNorm of the network), with PyTorch's running-statistics update: momentum 0.1
    /// (candle's default, as PyTorch's) and the unbiased batch variance, computed in the
    /// statistics' type (f64 from the CPU kernel).
    fn batch_norm_training(&self, bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
        let Some((gamma, beta)) = bn.weight_and_bias() else {
            return self.activate(bn.forward_t(&self.conv.forward(x)?, true)?);
        };
        let BatchNormTrainOutput {
            output,
            mean,
            variance,
        } = match self.conv.bias() {
            None => conv_batch_norm_train_act(
                x,
                self.conv.weight(),
                self.conv.kind(),
                (gamma, beta),
                bn.eps(),
                self.relu,
            )?,
            Some(_) => {
                let y = self.conv.forward(x)?;
                batch_norm_train_act(&y, gamma, beta, bn.eps(), self.relu)?
            }
        };
        let (n, _, h, w) = output.dims4()?;
        let count = (n * h * w) as f64;
        let unbiased = variance.affine(count / (count - 1.0).max(1.0), 0.0)?;
        let m = bn.momentum();
        for (running, batch) in [(bn.running_mean(), mean), (bn.running_var(), unbiased)] {
            let previous = running.to_dtype(batch.dtype())?;
            let updated = (previous.affine(1.0 - m, 0.0)? + batch.affine(m, 0.0)?)?;
            Var::from_tensor(running)?.set(&updated.to_dtype(running.dtype())?)?;
        }
        Ok(output)
    }
}

impl Module for ConvBnAct {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn training_mode_normalises_by_the_batch_and_updates_running_statistics_like_pytorch() {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        let norm = NormOptions {
            mode: BatchNormMode::Unfolded,
            eps: 1e-5,
        };
        let layer = ConvBnAct::sequential(ConvConfig::pointwise(1, 1), false, norm, vb).unwrap();
        varmap
            .set_one(
                "0.weight",
                Tensor::ones((1, 1, 1, 1), DType::F64, &Device::Cpu).unwrap(),
            )
            .unwrap();
        // One channel, values 1..=4 over a batch of 2 images of 1x2.
        let x = Tensor::new(&[[[[1f64, 2.]]], [[[3., 4.]]]], &Device::Cpu).unwrap();
        let y = layer
            .forward_mode(
                &x,
                Mode::Training {
                    dropout: 0.0,
                    dropout_seed: 0,
                },
            )
            .unwrap();
        let y: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
        // Batch mean 2.5, biased variance 1.25 for the normalisation.
        let expected: Vec<f64> = [1., 2., 3., 4.]
            .iter()
            .map(|v| (v - 2.5) / (1.25f64 + 1e-5).sqrt())
            .collect();
        for (a, b) in y.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-12, "{y:?}");
        }
        let stat = |name: &str| {
            varmap.data().lock().unwrap()[name]
                .as_tensor()
                .to_vec1::<f64>()
                .unwrap()[0]
        };
        // Momentum 0.1, unbiased variance 5/3 for the running estimate.
        assert!((stat("1.running_mean") - 0.25).abs() < 1e-12);
        assert!((stat("1.running_var") - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-12);
        // Inference uses the running statistics and leaves them alone.
        let before = stat("1.running_mean");
        layer.forward(&x).unwrap();
        assert_eq!(stat("1.running_mean"), before);
    }
}

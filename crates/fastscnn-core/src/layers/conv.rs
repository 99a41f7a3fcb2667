//! A 2D convolution that routes each shape Fast-SCNN uses to its fastest path.
//!
//! Fast-SCNN has three kinds of convolution: one dense 3x3 (the stem and the auxiliary head),
//! depthwise 3x3 and pointwise 1x1, each served by its own custom op; a 1x1 convolution is a
//! matrix product over the flattened plane and needs no im2col at all.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::{BatchNorm, VarBuilder};

use crate::ops::{add_channel_bias, ConvKind};

/// The shape of a convolution, as PyTorch's `nn.Conv2d` arguments describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvConfig {
    /// Channels of the input map.
    pub in_channels: usize,
    /// Channels of the output map.
    pub out_channels: usize,
    /// Side of the square kernel, in pixels.
    pub kernel: usize,
    /// Step between kernel positions, the same along both axes.
    pub stride: usize,
    /// Zeros added on each side of the input, in pixels.
    pub padding: usize,
    /// One 3x3 filter per channel (`groups == in_channels == out_channels`).
    pub depthwise: bool,
    /// Whether a bias, one value per output channel, is added after the convolution.
    pub bias: bool,
}

impl ConvConfig {
    /// A dense `kernel`x`kernel` convolution without bias.
    pub fn dense(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            depthwise: false,
            bias: false,
        }
    }

    /// A 1x1 convolution without bias.
    pub fn pointwise(in_channels: usize, out_channels: usize) -> Self {
        Self::dense(in_channels, out_channels, 1, 1, 0)
    }

    /// A depthwise 3x3 convolution with padding 1, without bias.
    pub fn depthwise(channels: usize, stride: usize) -> Self {
        Self {
            depthwise: true,
            ..Self::dense(channels, channels, 3, stride, 1)
        }
    }

    /// The same convolution with a bias.
    pub fn with_bias(self) -> Self {
        Self { bias: true, ..self }
    }

    /// The weight shape PyTorch stores: (out, in / groups, k, k).
    pub fn weight_shape(&self) -> (usize, usize, usize, usize) {
        let per_group = if self.depthwise { 1 } else { self.in_channels };
        (self.out_channels, per_group, self.kernel, self.kernel)
    }

    /// A 1x1 convolution over every pixel: a matrix product over the flattened plane.
    pub fn is_pointwise(&self) -> bool {
        !self.depthwise && self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// A 2D convolution with an optional bias, run on the fastest path for its shape: the depthwise op,
/// the pointwise op for 1x1, or the dense op for the rest.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvConfig,
}

impl Conv2d {
    /// Loads `weight` (and `bias` when the config has one) from `vb`.
    pub fn new(config: ConvConfig, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(config.weight_shape(), "weight")?;
        let bias = if config.bias {
            Some(vb.get(config.out_channels, "bias")?)
        } else {
            None
        };
        Self::from_parts(weight, bias, config)
    }

    /// Builds the convolution from tensors already in memory. Fails if `weight` does not have the
    /// shape `config.weight_shape()`, or if a depthwise `config` is not 3x3 with padding 1 and as
    /// many output as input channels. `bias`, when given, holds one value per output channel.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>, config: ConvConfig) -> Result<Self> {
        if config.depthwise
            && (config.in_channels != config.out_channels
                || config.kernel != 3
                || config.padding != 1)
        {
            bail!("depthwise convolutions must be 3x3, padding 1, channels in == out: {config:?}")
        }
        let expected = config.weight_shape();
        if weight.dims4()? != expected {
            bail!(
                "convolution weight has shape {:?}, expected {expected:?}",
                weight.dims()
            )
        }
        Ok(Self {
            weight,
            bias,
            config,
        })
    }

    /// The shape of this convolution.
    pub fn config(&self) -> &ConvConfig {
        &self.config
    }

    /// The weights, in (out, in / groups, k, k) order.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The same convolution with its weight and bias converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let bias = self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?;
        Self::from_parts(self.weight.to_dtype(dtype)?, bias, self.config)
    }

    /// The bias, one value per output channel, if the convolution has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Which op runs the convolution (without its bias).
    pub fn kind(&self) -> ConvKind {
        let c = &self.config;
        if c.depthwise {
            ConvKind::Depthwise { stride: c.stride }
        } else if c.is_pointwise() {
            ConvKind::Pointwise
        } else {
            ConvKind::Dense {
                stride: c.stride,
                padding: c.padding,
            }
        }
    }

    /// This convolution followed by eval-mode `bn`, as one convolution with a bias:
    /// `w' = w·γ/√(σ²+ε)` and `b' = (b − μ)·γ/√(σ²+ε) + β`.
    pub fn fold_batch_norm(&self, bn: &BatchNorm) -> Result<Self> {
        let scale = (bn.running_var() + bn.eps())?.sqrt()?.recip()?;
        let (scale, shift) = match bn.weight_and_bias() {
            Some((gamma, beta)) => (scale.mul(gamma)?, beta.clone()),
            None => (scale.clone(), scale.zeros_like()?),
        };
        let weight =
            self.weight
                .broadcast_mul(&scale.reshape((self.config.out_channels, 1, 1, 1))?)?;
        let centred = match &self.bias {
            Some(b) => (b - bn.running_mean())?,
            None => bn.running_mean().neg()?,
        };
        let bias = (centred.mul(&scale)? + shift)?;
        Self::from_parts(weight, Some(bias), self.config.with_bias())
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.kind().apply(x, &self.weight)?;
        match &self.bias {
            Some(b) => add_channel_bias(&y, b),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Device};
    use candle_nn::ModuleT;

    /// Each call draws the next seed, so successive tensors differ.
    fn random(shape: &[usize], seed: &mut u64) -> Tensor {
        *seed += 1;
        random_tensor(shape, *seed).unwrap()
    }

    #[test]
    fn pointwise_path_matches_generic_conv2d() {
        let mut rng = 0u64;
        let cfg = ConvConfig::pointwise(6, 4).with_bias();
        let conv = Conv2d::from_parts(
            random(&[4, 6, 1, 1], &mut rng),
            Some(random(&[4], &mut rng)),
            cfg,
        )
        .unwrap();
        let x = random(&[2, 6, 5, 7], &mut rng);
        let reference = x
            .conv2d(conv.weight(), 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&conv.bias().unwrap().reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_diff(&conv.forward(&x).unwrap(), &reference) < 1e-5);
    }

    #[test]
    fn folding_batch_norm_matches_conv_then_bn() {
        let mut rng = 1000u64;
        for cfg in [
            ConvConfig::dense(3, 8, 3, 2, 0),
            ConvConfig::depthwise(8, 1),
            ConvConfig::pointwise(8, 8).with_bias(),
        ] {
            let (o, i, k, _) = cfg.weight_shape();
            let bias = cfg.bias.then(|| random(&[o], &mut rng));
            let conv = Conv2d::from_parts(random(&[o, i, k, k], &mut rng), bias, cfg).unwrap();
            let var = random(&[o], &mut rng)
                .abs()
                .unwrap()
                .affine(1.0, 0.1)
                .unwrap();
            let bn = BatchNorm::new(
                o,
                random(&[o], &mut rng),
                var,
                random(&[o], &mut rng),
                random(&[o], &mut rng),
                1e-5,
            )
            .unwrap();
            let x = random(&[1, cfg.in_channels, 9, 10], &mut rng);
            let unfolded = bn.forward_t(&conv.forward(&x).unwrap(), false).unwrap();
            let folded = conv.fold_batch_norm(&bn).unwrap().forward(&x).unwrap();
            assert!(max_abs_diff(&unfolded, &folded) < 1e-5, "{cfg:?}");
        }
    }

    #[test]
    fn rejects_wrong_weight_shape() {
        let w = Tensor::zeros((4, 6, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(Conv2d::from_parts(w, None, ConvConfig::pointwise(6, 4)).is_err());
    }
}

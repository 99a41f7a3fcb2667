//! Depthwise-separable convolution: depthwise 3x3 + BN (+ ReLU), then pointwise 1x1 + BN + ReLU.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ConvBnAct, ConvConfig, Mode, NormOptions};

/// A depthwise-separable convolution: depthwise 3x3 + BatchNorm (+ ReLU), then pointwise 1x1 +
/// BatchNorm + ReLU.
#[derive(Debug, Clone)]
pub struct DSConv {
    depthwise: ConvBnAct,
    pointwise: ConvBnAct,
}

impl DSConv {
    /// Reads the reference layout `conv.{0,1,3,4}` (ReLUs at `.2` and `.5` hold no tensors).
    /// `depthwise_relu` is false where OpenMMLab's learning-to-downsample leaves the depthwise
    /// output linear (`dw_act_cfg=None`); the reference implementation always has it.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        depthwise_relu: bool,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            depthwise: ConvBnAct::new(
                ConvConfig::depthwise(in_channels, stride),
                depthwise_relu,
                norm,
                vb.pp("0"),
                vb.pp("1"),
            )?,
            pointwise: ConvBnAct::new(
                ConvConfig::pointwise(in_channels, out_channels),
                true,
                norm,
                vb.pp("3"),
                vb.pp("4"),
            )?,
        })
    }
}

impl DSConv {
    /// The depthwise 3x3 stage, which applies the stride.
    pub fn depthwise(&self) -> &ConvBnAct {
        &self.depthwise
    }

    /// The pointwise 1x1 stage, which maps the input channels to the output channels.
    pub fn pointwise(&self) -> &ConvBnAct {
        &self.pointwise
    }

    /// Runs both stages, with BatchNorm as [`ConvBnAct::forward_mode`] runs it in `mode`.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.pointwise
            .forward_mode(&self.depthwise.forward_mode(x, mode)?, mode)
    }
}

impl Module for DSConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

//! Learning to downsample: a 3x3/2 conv and two DSConv 3x3/2, to 1/8 of the input resolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{ConvBnAct, ConvConfig, DSConv, Mode, NormOptions};

use crate::FastScnnConfig;

/// Learning to downsample: a 3x3/2 convolution and two depthwise-separable 3x3/2 convolutions,
/// from the normalised image to the higher-resolution features at 1/8 of its size.
#[derive(Debug, Clone)]
pub struct LearningToDownsample {
    conv: ConvBnAct,
    dsconv1: DSConv,
    dsconv2: DSConv,
}

impl LearningToDownsample {
    /// Reads `conv.conv.{0,1}`, `dsconv1` and `dsconv2`.
    pub fn new(cfg: &FastScnnConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        let [c1, c2, c3] = cfg.downsample_channels;
        let stem = ConvConfig::dense(cfg.in_channels, c1, 3, 2, cfg.stem_padding);
        let dw_relu = cfg.downsample_depthwise_relu;
        Ok(Self {
            conv: ConvBnAct::sequential(stem, true, norm, vb.pp("conv").pp("conv"))?,
            dsconv1: DSConv::new(c1, c2, 2, dw_relu, norm, vb.pp("dsconv1"))?,
            dsconv2: DSConv::new(c2, c3, 2, dw_relu, norm, vb.pp("dsconv2"))?,
        })
    }
}

impl LearningToDownsample {
    /// The 3x3/2 stem convolution (BatchNorm, ReLU), whose padding depends on the layout.
    pub fn stem(&self) -> &ConvBnAct {
        &self.conv
    }

    /// The first depthwise-separable 3x3/2 convolution.
    pub fn dsconv1(&self) -> &DSConv {
        &self.dsconv1
    }

    /// The second depthwise-separable 3x3/2 convolution, whose output is the higher-resolution
    /// features.
    pub fn dsconv2(&self) -> &DSConv {
        &self.dsconv2
    }

    /// Runs the three convolutions on a normalised (N, in_channels, H, W) batch in `mode`, to
    /// about H/8 by W/8.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.conv.forward_mode(x, mode)?;
        let x = self.dsconv1.forward_mode(&x, mode)?;
        self.dsconv2.forward_mode(&x, mode)
    }
}

impl Module for LearningToDownsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

//! Learning to downsample: a 3x3/2 conv and two DSConv 3x3/2, to 1/8 of the input resolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use fastscnn_core::layers::{ConvBnAct, ConvConfig, DSConv, Mode, NormOptions};

use crate::FastScnnConfig;

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
    pub fn stem(&self) -> &ConvBnAct {
        &self.conv
    }

    pub fn dsconv1(&self) -> &DSConv {
        &self.dsconv1
    }

    pub fn dsconv2(&self) -> &DSConv {
        &self.dsconv2
    }

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

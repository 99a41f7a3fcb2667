//! The heads that turn features into per-class scores.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use fastscnn_core::layers::{dropout, Conv2d, ConvBnAct, ConvConfig, DSConv, Mode, NormOptions};

/// The paper's classifier: two DSConv, dropout (training only) and a 1x1 convolution to the
/// classes.
#[derive(Debug, Clone)]
pub struct Classifier {
    dsconv1: DSConv,
    dsconv2: DSConv,
    conv: Conv2d,
}

impl Classifier {
    /// Reads `dsconv1`, `dsconv2` and `conv.1` (`conv.0` is the dropout).
    pub fn new(
        channels: usize,
        num_classes: usize,
        depthwise_relu: bool,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let dsconv = |name| DSConv::new(channels, channels, 1, depthwise_relu, norm, vb.pp(name));
        Ok(Self {
            dsconv1: dsconv("dsconv1")?,
            dsconv2: dsconv("dsconv2")?,
            conv: Conv2d::new(
                ConvConfig::pointwise(channels, num_classes).with_bias(),
                vb.pp("conv").pp("1"),
            )?,
        })
    }
}

impl Classifier {
    /// The first depthwise-separable convolution, keeping the width.
    pub fn dsconv1(&self) -> &DSConv {
        &self.dsconv1
    }

    /// The second depthwise-separable convolution, keeping the width.
    pub fn dsconv2(&self) -> &DSConv {
        &self.dsconv2
    }

    /// The final 1x1 convolution (with bias, no BatchNorm) from the features to the class scores.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The class scores (N, classes, H, W) of the fused features (N, C, H, W), at their
    /// resolution; dropout applies only in training `mode`.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.dsconv1.forward_mode(x, mode)?;
        let x = self.dsconv2.forward_mode(&x, mode)?;
        self.conv.forward(&dropout(&x, mode, 0)?)
    }
}

impl Module for Classifier {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference)
    }
}

/// An auxiliary head for the 0.4-weighted auxiliary loss in training: 3x3 conv + BN + ReLU,
/// dropout, 1x1 to the classes. The reference implementation has one on the learning-to-downsample
/// output; OpenMMLab's `FCNHead`s are the same block, one there and one on the global features.
#[derive(Debug, Clone)]
pub struct AuxHead {
    conv: ConvBnAct,
    classify: Conv2d,
}

impl AuxHead {
    /// Reads the `nn.Sequential` children `0` (conv), `1` (BN) and `4` (classes).
    pub fn new(
        in_channels: usize,
        hidden: usize,
        num_classes: usize,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: ConvBnAct::new(
                ConvConfig::dense(in_channels, hidden, 3, 1, 1),
                true,
                norm,
                vb.pp("0"),
                vb.pp("1"),
            )?,
            classify: Conv2d::new(
                ConvConfig::pointwise(hidden, num_classes).with_bias(),
                vb.pp("4"),
            )?,
        })
    }
}

impl AuxHead {
    /// `site` keeps the dropout masks of several heads apart.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode, site: u64) -> Result<Tensor> {
        let hidden = self.conv.forward_mode(x, mode)?;
        self.classify.forward(&dropout(&hidden, mode, site)?)
    }
}

impl Module for AuxHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_mode(x, Mode::Inference, 0)
    }
}

//! MobileNet-V2 inverted residual ("linear bottleneck"): expand 1x1, depthwise 3x3, project 1x1.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ConvBnAct, ConvConfig, NormOptions};

#[derive(Debug, Clone)]
pub struct LinearBottleneck {
    expand: ConvBnAct,
    depthwise: ConvBnAct,
    /// No ReLU after the projection: the "linear" of the name, which keeps the low-dimensional
    /// representation from losing information.
    project: ConvBnAct,
    shortcut: bool,
}

impl LinearBottleneck {
    /// Reads `block.{0,1,2,3}`: `0.conv.{0,1}` expand, `1.conv.{0,1}` depthwise, `2` projection
    /// conv and `3` its BatchNorm.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        expansion: usize,
        stride: usize,
        norm: NormOptions,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("block");
        let hidden = in_channels * expansion;
        Ok(Self {
            expand: ConvBnAct::sequential(
                ConvConfig::pointwise(in_channels, hidden),
                true,
                norm,
                vb.pp("0").pp("conv"),
            )?,
            depthwise: ConvBnAct::sequential(
                ConvConfig::depthwise(hidden, stride),
                true,
                norm,
                vb.pp("1").pp("conv"),
            )?,
            project: ConvBnAct::new(
                ConvConfig::pointwise(hidden, out_channels),
                false,
                norm,
                vb.pp("2"),
                vb.pp("3"),
            )?,
            shortcut: stride == 1 && in_channels == out_channels,
        })
    }

    pub fn has_shortcut(&self) -> bool {
        self.shortcut
    }
}

impl Module for LinearBottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .project
            .forward(&self.depthwise.forward(&self.expand.forward(x)?)?)?;
        if self.shortcut {
            y + x
        } else {
            Ok(y)
        }
    }
}

//! Pyramid pooling module: pooled context at several grid sizes, concatenated with the input.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ConvBnAct, ConvConfig, NormOptions};
use crate::ops::{adaptive_avg_pool2d, resize_bilinear};

/// The choices in which the public Fast-SCNN implementations differ.
#[derive(Debug, Clone, PartialEq)]
pub struct PyramidPoolingConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Output grid of each branch's adaptive average pooling; the paper uses 1, 2, 3, 6.
    pub bins: Vec<usize>,
    /// Kernel of the convolution over the concatenation: 1 in the reference implementation, 3
    /// (padding 1) in OpenMMLab's.
    pub out_kernel: usize,
    pub align_corners: bool,
}

#[derive(Debug, Clone)]
pub struct PyramidPooling {
    branches: Vec<(usize, ConvBnAct)>,
    out: ConvBnAct,
    align_corners: bool,
}

impl PyramidPooling {
    /// Reads `conv{1..n}.conv.{0,1}` for the branches and `out.conv.{0,1}`.
    pub fn new(cfg: &PyramidPoolingConfig, norm: NormOptions, vb: VarBuilder) -> Result<Self> {
        let inter = cfg.in_channels / 4;
        let branches = cfg
            .bins
            .iter()
            .enumerate()
            .map(|(i, &bin)| {
                let conv = ConvConfig::pointwise(cfg.in_channels, inter);
                let layer = ConvBnAct::sequential(
                    conv,
                    true,
                    norm,
                    vb.pp(format!("conv{}", i + 1)).pp("conv"),
                )?;
                Ok((bin, layer))
            })
            .collect::<Result<Vec<_>>>()?;
        let concat = cfg.in_channels + inter * cfg.bins.len();
        let out_conv = ConvConfig::dense(
            concat,
            cfg.out_channels,
            cfg.out_kernel,
            1,
            cfg.out_kernel / 2,
        );
        Ok(Self {
            branches,
            out: ConvBnAct::sequential(out_conv, true, norm, vb.pp("out").pp("conv"))?,
            align_corners: cfg.align_corners,
        })
    }
}

impl Module for PyramidPooling {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let mut parts = Vec::with_capacity(self.branches.len() + 1);
        parts.push(x.clone());
        for (bin, conv) in &self.branches {
            let pooled = conv.forward(&adaptive_avg_pool2d(x, *bin, *bin)?)?;
            parts.push(resize_bilinear(&pooled, h, w, self.align_corners)?);
        }
        self.out.forward(&Tensor::cat(&parts, 1)?)
    }
}

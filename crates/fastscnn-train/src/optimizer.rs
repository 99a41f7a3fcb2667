//! SGD with momentum and selective weight decay, with PyTorch's update rule so that recipes carry
//! over: `d = g + wd·p`, `buf = momentum·buf + d` (`buf = d` on the first step), `p -= lr·buf`.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// What weight decay applies to. The paper: L2 on every weight except the depthwise ones. This
/// project also leaves BatchNorm's scale and shift and all biases undecayed: they hold no
/// capacity worth regularising (decaying BN scales fights the normalisation), as is standard
/// since Goyal et al. 2017 and in OpenMMLab's configs (`norm_decay_mult=0`).
pub fn decays(name: &str, shape: &[usize]) -> bool {
    let is_conv_weight = name.ends_with(".weight") && shape.len() == 4;
    let is_depthwise = is_conv_weight && shape[1] == 1 && shape[2] * shape[3] > 1;
    is_conv_weight && !is_depthwise
}

/// One trained tensor.
#[derive(Debug, Clone)]
pub struct Param {
    /// The variable's canonical name, which keys its momentum buffer.
    pub name: String,
    /// The variable, updated in place.
    pub var: Var,
    /// Whether weight decay applies to it (see [`decays`]).
    pub decay: bool,
}

/// SGD with momentum and weight decay on the parameters marked for it, following PyTorch's
/// update rule (see the module documentation).
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
    /// Momentum buffers by parameter name; absent until a parameter's first step.
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// `params` in a fixed order (the update is per tensor, but a fixed order keeps logs stable).
    pub fn new(params: Vec<Param>, momentum: f64, weight_decay: f64) -> Self {
        Self {
            params,
            momentum,
            weight_decay,
            buffers: BTreeMap::new(),
        }
    }

    /// The parameters it updates, in the order given to [`Sgd::new`].
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update at learning rate `lr`; parameters without a gradient (frozen, unused) are left
    /// alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for param in &self.params {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            let value = param.var.as_tensor();
            let d = if param.decay && self.weight_decay != 0.0 {
                (grad + value.affine(self.weight_decay, 0.0)?)?
            } else {
                grad.clone()
            };
            let buffer = match self.buffers.get(&param.name) {
                Some(buf) if self.momentum != 0.0 => (buf.affine(self.momentum, 0.0)? + d)?,
                _ => d,
            };
            param.var.set(&(value - buffer.affine(lr, 0.0)?)?)?;
            self.buffers.insert(param.name.clone(), buffer.detach());
        }
        Ok(())
    }

    /// The momentum buffers, for checkpoints.
    pub fn buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restores buffers saved by [`Sgd::buffers`]; a name that is not a parameter or a shape
    /// that differs is an error naming it.
    pub fn load_buffers(&mut self, buffers: BTreeMap<String, Tensor>) -> Result<()> {
        for (name, buffer) in &buffers {
            let Some(param) = self.params.iter().find(|p| &p.name == name) else {
                candle_core::bail!("optimizer state for `{name}`, which is not a parameter");
            };
            if param.var.dims() != buffer.dims() {
                candle_core::bail!(
                    "optimizer state for `{name}` has shape {:?}, the parameter {:?}",
                    buffer.dims(),
                    param.var.dims()
                );
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn decay_skips_depthwise_norm_and_bias() {
        assert!(decays("classifier.conv.1.weight", &[19, 128, 1, 1]));
        assert!(decays(
            "learning_to_downsample.conv.conv.0.weight",
            &[32, 3, 3, 3]
        ));
        assert!(!decays(
            "feature_fusion.dwconv.conv.0.weight",
            &[128, 1, 3, 3]
        ));
        assert!(!decays("feature_fusion.dwconv.conv.1.weight", &[128]));
        assert!(!decays("classifier.conv.1.bias", &[19]));
    }

    #[test]
    fn two_steps_follow_pytorch_sgd() {
        // p = 1, constant gradient 0.5, lr 0.1, momentum 0.9, weight decay 0.1.
        let var = Var::from_tensor(&Tensor::new(&[1f64], &Device::Cpu).unwrap()).unwrap();
        let param = Param {
            name: "w".into(),
            var: var.clone(),
            decay: true,
        };
        let mut sgd = Sgd::new(vec![param], 0.9, 0.1);
        let step = |sgd: &mut Sgd| {
            let loss = (var.as_tensor() * 0.5).unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        };
        step(&mut sgd);
        // d = 0.5 + 0.1·1 = 0.6; buf = 0.6; p = 1 - 0.06 = 0.94.
        let p1 = var.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((p1 - 0.94).abs() < 1e-15);
        step(&mut sgd);
        // d = 0.5 + 0.094 = 0.594; buf = 0.54 + 0.594 = 1.134; p = 0.94 - 0.1134.
        let p2 = var.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((p2 - (0.94 - 0.1134)).abs() < 1e-12, "{p2}");
        assert_eq!(sgd.buffers().len(), 1);
    }
}

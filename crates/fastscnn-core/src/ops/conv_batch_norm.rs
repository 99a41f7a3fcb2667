//! A convolution and the training BatchNorm (and ReLU) after it as one op.
//!
//! Between two ops candle hands every gradient through its gradient store: a zeroed tensor the
//! size of the map, and a sum into it, for each map between two ops. The conv's output is such a
//! map in every layer of the network (the stem's alone is 32 MB at 512x1024, batch 2). Here the
//! convolution runs inside the BatchNorm's op: its output is kept by the op for the backward
//! pass, which takes the BatchNorm's input gradient straight to the convolution's gradients.
//! The arithmetic is that of the two ops, [`dense_conv2d`], [`pointwise_conv2d`] or
//! [`depthwise_conv2d`] then [`batch_norm_train_act`], which run it elsewhere
//! (`fastscnn bench --mode train`).

use std::sync::OnceLock;

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor, WithDType,
};

use super::batch_norm::{with_statistics, BatchNormTrain};
use super::dense_conv::dense_op;
use super::depthwise_conv::depthwise_op;
use super::pointwise_conv::pointwise_op;
use super::{
    batch_norm_train_act, dense_conv2d, depthwise_conv2d, has_cpu_kernel, pointwise_conv2d,
    BatchNormTrainOutput,
};

/// A convolution without bias, as [`conv_batch_norm_train_act`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// [`dense_conv2d`]: a k×k kernel over every input channel.
    Dense {
        /// Along both axes.
        stride: usize,
        /// Zeros on every side.
        padding: usize,
    },
    /// [`pointwise_conv2d`]: 1x1.
    Pointwise,
    /// [`depthwise_conv2d`]: 3x3 per channel, padding 1.
    Depthwise {
        /// 1 or 2.
        stride: usize,
    },
}

impl ConvKind {
    /// The convolution of `x` by `weight`, as its own op.
    pub fn apply(self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense { stride, padding } => dense_conv2d(x, weight, stride, padding),
            Self::Pointwise => pointwise_conv2d(x, weight),
            Self::Depthwise { stride } => depthwise_conv2d(x, weight, stride),
        }
    }

    /// The convolution's op for these operands, or the error they get.
    fn op(self, x: &Tensor, weight: &Tensor) -> Result<Box<dyn CustomOp2 + Send + Sync>> {
        Ok(match self {
            Self::Dense { stride, padding } => Box::new(dense_op(x, weight, stride, padding)?),
            Self::Pointwise => Box::new(pointwise_op(x, weight)?),
            Self::Depthwise { stride } => Box::new(depthwise_op(x, weight, stride)?),
        })
    }
}

/// [`batch_norm_train_act`] of `conv` applied to `x` and `weight`: the convolution, BatchNorm with
/// the batch's statistics (`gamma` and `beta` (O), O the convolution's output channels) and, with
/// `relu`, a ReLU. Differentiable in `x`, `weight`, `gamma` and `beta`.
pub fn conv_batch_norm_train_act(
    x: &Tensor,
    weight: &Tensor,
    conv: ConvKind,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrainOutput> {
    let op = conv.op(x, weight)?;
    let o = weight.dim(0)?;
    if gamma.dims() != [o] || beta.dims() != [o] {
        bail!(
            "conv_batch_norm_train: gamma {:?} and beta {:?} must be ({o})",
            gamma.dims(),
            beta.dims()
        )
    }
    let dtype = x.dtype();
    if !(has_cpu_kernel(x) && [weight, gamma, beta].iter().all(|t| t.dtype() == dtype)) {
        return batch_norm_train_act(&conv.apply(x, weight)?, gamma, beta, eps, relu);
    }
    let bn = BatchNormTrain::new(eps, relu);
    let stats = bn.stats.clone();
    let gamma_beta = Tensor::stack(&[gamma, beta], 0)?;
    let output = x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &gamma_beta,
        ConvBatchNormTrain {
            conv: op,
            bn,
            conv_output: OnceLock::new(),
        },
    )?;
    with_statistics(output, &stats)
}

/// Arguments (x, weight, gamma and beta stacked as (2, O)).
struct ConvBatchNormTrain {
    conv: Box<dyn CustomOp2 + Send + Sync>,
    bn: BatchNormTrain,
    /// The convolution's output, the BatchNorm's input, for the backward pass.
    conv_output: OnceLock<Tensor>,
}

impl CustomOp3 for ConvBatchNormTrain {
    fn name(&self) -> &'static str {
        "conv-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.conv.cpu_fwd(s1, l1, s2, l2)?;
        let o = shape.dims4()?.1;
        let Some((start, end)) = l3.contiguous_offsets() else {
            bail!("conv-batch-norm-train: gamma and beta must be contiguous")
        };
        let (gamma, beta) = match s3 {
            CpuStorage::F32(v) => rows(&v[start..end], o),
            CpuStorage::F64(v) => rows(&v[start..end], o),
            _ => bail!("conv-batch-norm-train: only f32 and f64 have a CPU kernel"),
        };
        let (y_layout, row) = (Layout::contiguous(shape.clone()), Layout::contiguous(o));
        let out = self.bn.cpu_fwd(&y, &y_layout, &gamma, &row, &beta, &row)?;
        let y = match y {
            CpuStorage::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_vec(v, shape, &Device::Cpu)?,
            _ => bail!("conv-batch-norm-train: only f32 and f64 have a CPU kernel"),
        };
        if self.conv_output.set(y).is_err() {
            bail!("conv-batch-norm-train: the op ran forward twice")
        }
        Ok(out)
    }

    /// The BatchNorm's gradients, then the convolution's from the BatchNorm's input gradient.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        gamma_beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(y) = self.conv_output.get() else {
            bail!("conv-batch-norm-train: backward pass without a forward one")
        };
        let (gamma, beta) = (gamma_beta.get(0)?, gamma_beta.get(1)?);
        let (grad_y, grad_gamma, grad_beta) = self.bn.bwd(y, &gamma, &beta, res, grad_res)?;
        let (Some(grad_y), Some(grad_gamma), Some(grad_beta)) = (grad_y, grad_gamma, grad_beta)
        else {
            bail!("conv-batch-norm-train: the BatchNorm gave no gradient")
        };
        let (grad_x, grad_weight) = self.conv.bwd(x, weight, y, &grad_y)?;
        let grad_gamma_beta = Tensor::stack(&[grad_gamma, grad_beta], 0)?;
        Ok((grad_x, grad_weight, Some(grad_gamma_beta)))
    }
}

/// The first `o` values and the next `o` (gamma and beta) as storages of their own.
fn rows<T: WithDType>(values: &[T], o: usize) -> (CpuStorage, CpuStorage) {
    let (gamma, beta) = values.split_at(o);
    (T::to_cpu_storage(gamma), T::to_cpu_storage(beta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, random_tensor};
    use candle_core::{DType, Var};

    /// Every kind of convolution, with and without ReLU, in f32 and f64: the output, the
    /// statistics and every gradient equal those of the two ops.
    #[test]
    fn equals_the_convolution_then_batch_norm() {
        let kinds = [
            (
                ConvKind::Dense {
                    stride: 2,
                    padding: 1,
                },
                [6, 3, 3, 3],
            ),
            (
                ConvKind::Dense {
                    stride: 1,
                    padding: 0,
                },
                [5, 3, 3, 3],
            ),
            (ConvKind::Pointwise, [7, 3, 1, 1]),
            (ConvKind::Depthwise { stride: 1 }, [3, 1, 3, 3]),
            (ConvKind::Depthwise { stride: 2 }, [3, 1, 3, 3]),
        ];
        for (i, (kind, weight_shape)) in kinds.into_iter().enumerate() {
            for dtype in [DType::F32, DType::F64] {
                for relu in [false, true] {
                    let cast = |t: Tensor| t.to_dtype(dtype).unwrap();
                    let seed = 10 * i as u64;
                    let var = |shape: &[usize], seed| {
                        Var::from_tensor(&cast(random_tensor(shape, seed).unwrap())).unwrap()
                    };
                    let x = var(&[2, 3, 9, 11], seed);
                    let weight = var(&weight_shape, seed + 1);
                    let o = weight_shape[0];
                    let gamma = var(&[o], seed + 2);
                    let beta = var(&[o], seed + 3);
                    let vars = [&x, &weight, &gamma, &beta];
                    let run = |fused: bool| {
                        let out = if fused {
                            let params = (gamma.as_tensor(), beta.as_tensor());
                            conv_batch_norm_train_act(
                                x.as_tensor(),
                                &weight,
                                kind,
                                params,
                                1e-5,
                                relu,
                            )
                        } else {
                            let y = kind.apply(x.as_tensor(), weight.as_tensor()).unwrap();
                            batch_norm_train_act(&y, &gamma, &beta, 1e-5, relu)
                        }
                        .unwrap();
                        let mix = cast(random_tensor(out.output.dims(), 99).unwrap());
                        let grads = (&out.output * mix)
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .backward()
                            .unwrap();
                        let grads: Vec<Tensor> =
                            vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
                        (out, grads)
                    };
                    let (fused, fused_grads) = run(true);
                    let (plain, plain_grads) = run(false);
                    let what = format!("{kind:?} {dtype:?} relu {relu}");
                    assert_eq!(max_abs_diff(&fused.output, &plain.output), 0.0, "{what}");
                    assert_eq!(max_abs_diff(&fused.mean, &plain.mean), 0.0, "{what}");
                    assert_eq!(
                        max_abs_diff(&fused.variance, &plain.variance),
                        0.0,
                        "{what}"
                    );
                    for (name, (a, b)) in ["x", "weight", "gamma", "beta"]
                        .iter()
                        .zip(fused_grads.iter().zip(&plain_grads))
                    {
                        assert_eq!(max_abs_diff(a, b), 0.0, "{what}: {name}'s gradient");
                    }
                }
            }
        }
    }

    #[test]
    fn an_input_without_gradient_gets_none_and_a_second_backward_agrees() {
        let x = random_tensor(&[2, 3, 6, 6], 1).unwrap();
        let weight = Var::from_tensor(&random_tensor(&[4, 3, 3, 3], 2).unwrap()).unwrap();
        let gamma = Var::from_tensor(&random_tensor(&[4], 3).unwrap()).unwrap();
        let beta = Var::from_tensor(&random_tensor(&[4], 4).unwrap()).unwrap();
        let kind = ConvKind::Dense {
            stride: 2,
            padding: 1,
        };
        let params = (gamma.as_tensor(), beta.as_tensor());
        let out = conv_batch_norm_train_act(&x, &weight, kind, params, 1e-5, true).unwrap();
        let loss = out.output.sqr().unwrap().sum_all().unwrap();
        let first = loss.backward().unwrap();
        let second = loss.backward().unwrap();
        assert!(first.get(&x).is_none());
        for var in [&weight, &gamma, &beta] {
            let (a, b) = (first.get(var).unwrap(), second.get(var).unwrap());
            assert_eq!(max_abs_diff(a, b), 0.0);
        }
    }

    #[test]
    fn refuses_operands_that_do_not_fit() {
        let x = random_tensor(&[1, 3, 5, 5], 1).unwrap();
        let weight = random_tensor(&[4, 3, 1, 1], 2).unwrap();
        let (gamma, beta) = (
            random_tensor(&[4], 3).unwrap(),
            random_tensor(&[4], 4).unwrap(),
        );
        let run = |kind, weight: &Tensor, gamma: &Tensor| {
            conv_batch_norm_train_act(&x, weight, kind, (gamma, &beta), 1e-5, true)
        };
        assert!(run(ConvKind::Pointwise, &weight, &gamma).is_ok());
        assert!(run(ConvKind::Pointwise, &weight, &beta.narrow(0, 0, 3).unwrap()).is_err());
        assert!(run(ConvKind::Depthwise { stride: 1 }, &weight, &gamma).is_err());
        let big = random_tensor(&[4, 3, 7, 7], 5).unwrap();
        assert!(run(
            ConvKind::Dense {
                stride: 1,
                padding: 0
            },
            &big,
            &gamma
        )
        .is_err());
    }
}

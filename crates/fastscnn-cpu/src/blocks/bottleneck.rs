//! The MobileNet-V2 bottleneck, fused band by band or split by hidden channels.

use super::*;
use crate::Tuning;

/// MobileNet-V2 inverted residual: expand 1x1, depthwise 3x3, linear project 1x1 (+ shortcut).
#[derive(Debug, Clone)]
pub struct FusedBottleneck {
    /// The 1x1 conv from the input to the hidden channels.
    pub expand: PointwiseConv,
    /// The depthwise 3x3 conv on the hidden channels; it applies the block's stride.
    pub depthwise: DepthwiseConv,
    /// The linear 1x1 conv from the hidden channels to the output.
    pub project: PointwiseConv,
    /// Whether the input is added to the output (a residual shortcut), which needs stride 1 and
    /// as many output as input channels.
    pub shortcut: bool,
}

impl FusedBottleneck {
    /// Runs the block on one image, its output in a buffer from `pool`: band by band when the
    /// hidden map has at least `Tuning::fuse_above` floats, split by hidden channels when smaller,
    /// layer by layer when either 1x1 conv has no packed kernel.
    pub fn run(&self, input: MapView<'_>, pool: &mut BufferPool) -> FeatureMap {
        assert_eq!(input.channels, self.expand.in_channels, "bottleneck input");
        let (x, h, w) = (input.data, input.height, input.width);
        let (oh, ow) = self.depthwise.output_size(h, w);
        let data = if self.expand.has_packed_kernel() && self.project.has_packed_kernel() {
            let hidden = self.expand.out_channels * h * w;
            if hidden >= Tuning::current().fuse_above {
                self.run_fused(x, h, w, pool)
            } else {
                self.run_split(x, h, w, pool)
            }
        } else {
            self.run_unfused(x, h, w, pool)
        };
        FeatureMap {
            data,
            channels: self.project.out_channels,
            height: oh,
            width: ow,
        }
    }

    /// Each layer over the whole map, for convs without packed weights.
    fn run_unfused(&self, x: &[f32], h: usize, w: usize, pool: &mut BufferPool) -> Buffer {
        let mut expanded = pool.take(self.expand.out_channels * h * w);
        self.expand.run(x, h * w, &mut expanded, Seed::Bias);
        let (oh, ow) = self.depthwise.output_size(h, w);
        let mut filtered = pool.take(self.depthwise.channels * oh * ow);
        self.depthwise.run(&expanded, h, w, &mut filtered);
        pool.give(expanded);
        let mut out = pool.take(self.project.out_channels * oh * ow);
        let seed = if self.shortcut {
            Seed::BiasPlus(x)
        } else {
            Seed::Bias
        };
        self.project.run(&filtered, oh * ow, &mut out, seed);
        pool.give(filtered);
        out
    }

    /// Band by band of output rows, and within a band [`Tuning::hidden_chunk`] hidden channels at a time:
    /// expand the input rows the band reads, filter them depthwise, and add their share of the
    /// projection to the band's output. The 6x-wide hidden tensor never exists in full; what
    /// exists of it stays in cache. The price is recomputing the expansion of the one or two
    /// input rows two bands share.
    pub(super) fn run_fused(&self, x: &[f32], h: usize, w: usize, pool: &mut BufferPool) -> Buffer {
        let (expand, dw, project) = (&self.expand, &self.depthwise, &self.project);
        let (oh, ow) = dw.output_size(h, w);
        let (cin, hidden, cout, stride) = (
            expand.in_channels,
            expand.out_channels,
            project.out_channels,
            dw.stride,
        );
        assert_eq!(x.len(), cin * h * w, "bottleneck input");
        let mut out = pool.take(cout * oh * ow);
        // A band's expanded chunk: `chunk` x (band·stride + 2) rows x w, allowed twice the
        // usual budget: the two halo rows are expanded twice, so thin bands cost compute.
        let chunk = Tuning::current().hidden_chunk;
        let bands = RowBands::new(oh, band_rows(chunk * w * stride / 2, oh));
        let dst = SendPtr(out.as_mut_ptr());
        let zeros = vec![0f32; cout];
        bands.for_each(|band| {
            with_task_scratch(|task| {
                let (oy0, oy1) = (band.start, band.end);
                let n = (oy1 - oy0) * ow;
                let iy0 = (oy0 * stride).saturating_sub(1);
                let iy1 = ((oy1 - 1) * stride + 2).min(h);
                let m = (iy1 - iy0) * w;
                for c0 in (0..hidden).step_by(chunk) {
                    let c1 = (c0 + chunk).min(hidden);
                    let expanded = grown(&mut task.first, (c1 - c0) * m);
                    let filtered = grown(&mut task.second, (c1 - c0) * n);
                    let expand_epilogue = Epilogue {
                        bias: &expand.bias,
                        residual: None,
                        accumulate: false,
                        relu: expand.relu,
                    };
                    let first = c0 == 0;
                    let project_epilogue = Epilogue {
                        bias: if first { &project.bias } else { &zeros },
                        residual: (first && self.shortcut).then(|| x[oy0 * ow..].as_ptr()),
                        accumulate: !first,
                        relu: false,
                    };
                    // SAFETY: `has_packed_kernel` holds for both convs; `x` has the input rows
                    // iy0..iy1 of every input channel at stride h·w; `expanded` is
                    // (c1 - c0, m), `filtered` (c1 - c0, n); bands write disjoint pixel ranges of
                    // every output plane, and a shortcut means stride 1 with cin == cout, so the
                    // residual shares the output's layout.
                    unsafe {
                        expand.gemm_slice(
                            c0..c1,
                            0..cin,
                            x[iy0 * w..].as_ptr(),
                            h * w,
                            expanded.as_mut_ptr(),
                            m,
                            m,
                            expand_epilogue,
                        );
                    }
                    dw.run_band(
                        c0,
                        expanded,
                        m,
                        iy0,
                        h,
                        w,
                        oy0,
                        n,
                        filtered,
                        &mut task.third,
                    );
                    // SAFETY: as above.
                    unsafe {
                        project.gemm_slice(
                            0..cout,
                            c0..c1,
                            filtered.as_ptr(),
                            n,
                            dst.get().add(oy0 * ow),
                            oh * ow,
                            n,
                            project_epilogue,
                        );
                    }
                }
            })
        });
        out
    }
}

impl FusedBottleneck {
    /// For maps too small to cut into bands: each task takes a share of the hidden channels over
    /// the whole map, expands, filters and projects them, and the partial projections are summed.
    /// One parallel region per block instead of three, and no halo rows recomputed. One task per
    /// thread, the first projecting straight into the output with the bias and the shortcut: every
    /// other share's partial projection is kept in a buffer of its own and summed after, so the
    /// fewer shares the better, and the first needs no buffer.
    pub(super) fn run_split(&self, x: &[f32], h: usize, w: usize, pool: &mut BufferPool) -> Buffer {
        let (expand, dw, project) = (&self.expand, &self.depthwise, &self.project);
        let (oh, ow) = dw.output_size(h, w);
        let (cin, hidden, cout) = (
            expand.in_channels,
            expand.out_channels,
            project.out_channels,
        );
        assert_eq!(x.len(), cin * h * w, "bottleneck input");
        let (m, n) = (h * w, oh * ow);
        let tiles = hidden.div_ceil(TILE_CHANNELS);
        let tasks = rayon::current_num_threads().clamp(1, tiles);
        let share = tiles.div_ceil(tasks) * TILE_CHANNELS;
        let zeros = vec![0f32; cout];
        let mut out = pool.take(cout * n);
        let dst = SendPtr(out.as_mut_ptr());
        // Each task's expanded and filtered maps, and but for the first its partial projection,
        // from the pool: kept between frames.
        let mut work: Vec<(Buffer, Buffer, Option<Buffer>)> = (0..hidden.div_ceil(share))
            .map(|t| {
                let channels = share.min(hidden - t * share);
                (
                    pool.take(channels * m),
                    pool.take(channels * n),
                    (t > 0).then(|| pool.take(cout * n)),
                )
            })
            .collect();
        work.par_iter_mut()
            .enumerate()
            .for_each(|(t, (expanded, filtered, partial))| {
                let (c0, c1) = (t * share, ((t + 1) * share).min(hidden));
                let expand_epilogue = Epilogue {
                    bias: &expand.bias,
                    residual: None,
                    accumulate: false,
                    relu: expand.relu,
                };
                let (target, project_epilogue) = match partial {
                    None => (
                        dst.get(),
                        Epilogue {
                            bias: &project.bias,
                            residual: self.shortcut.then_some(x.as_ptr()),
                            accumulate: false,
                            relu: false,
                        },
                    ),
                    Some(partial) => (
                        partial.as_mut_ptr(),
                        Epilogue {
                            bias: &zeros,
                            residual: None,
                            accumulate: false,
                            relu: false,
                        },
                    ),
                };
                // SAFETY: `has_packed_kernel` holds for both convs; every buffer has the size the
                // products read and write; only the first task writes the output, and a shortcut
                // means stride 1 with cin == cout, so the residual shares the output's layout.
                unsafe {
                    expand.gemm_slice(
                        c0..c1,
                        0..cin,
                        x.as_ptr(),
                        m,
                        expanded.as_mut_ptr(),
                        m,
                        m,
                        expand_epilogue,
                    );
                }
                with_task_scratch(|task| {
                    dw.run_band(c0, expanded, m, 0, h, w, 0, n, filtered, &mut task.third)
                });
                // SAFETY: as above.
                unsafe {
                    project.gemm_slice(
                        0..cout,
                        c0..c1,
                        filtered.as_ptr(),
                        n,
                        target,
                        n,
                        n,
                        project_epilogue,
                    );
                }
            });
        let partials: Vec<&[f32]> = work.iter().filter_map(|(_, _, p)| p.as_deref()).collect();
        if !partials.is_empty() {
            out.par_chunks_mut(n).enumerate().for_each(|(c, row)| {
                for partial in &partials {
                    finish_row(row, 0.0, Some(&partial[c * n..(c + 1) * n]), false);
                }
            });
        }
        drop(partials);
        for (expanded, filtered, partial) in work {
            pool.give(expanded);
            pool.give(filtered);
            if let Some(partial) = partial {
                pool.give(partial);
            }
        }
        out
    }
}

//! The depthwise kernels in AVX2 + FMA intrinsics, for rows up to [`WIDE`] wide.

use super::*;

/// Input widths up to which the AVX2 kernels run: [`ZERO_ROW`]'s, the widest map of a 1024x2048
/// frame they see. Unlike AVX-512's, the stride-1 kernel is no slower than the flat runs on wide
/// rows (`cargo bench -p fastscnn-benches --bench kernels -- depthwise3x3`: rows of 24 to 192).
pub(super) const WIDE: usize = 1024;

/// Rows above and below the image, as the AVX2 kernels read them: zeros, with a vector's margin
/// either side of the widest row they take.
pub(super) static ZERO_ROW: [f32; WIDE + 32] = [0.0; WIDE + 32];

/// Output rows [`stride1_avx2`] computes at a time, from `STRIDE1_ROWS + 2` input rows: each
/// input row's three loads serve every output row it is a kernel row of. Three rather than two,
/// whose loads serve fewer rows, or four, whose sums with the taps are 16 live vectors, all of
/// AVX2's registers (`cargo bench -p fastscnn-benches --bench kernels -- stride1`).
pub(super) const STRIDE1_ROWS: usize = 3;

/// [`stride1_avx512`] on AVX2: eight lanes, [`STRIDE1_ROWS`] output rows at a time. Rows outside
/// the image read [`ZERO_ROW`], so every column vector runs the same straight-line code; only a
/// row's first and last vectors use masked loads, and only a tail narrower than a vector a masked
/// store (AVX2's masked stores are slow on AMD). Not written with the image rows as `Option`s and
/// every load masked, as the AVX-512 kernel is: LLVM branches on such rows in every vector and
/// spills around the branches (`cargo bench -p fastscnn-benches --bench kernels -- stride1`).
///
/// # Safety
/// The processor must support AVX2 and FMA, and the rows be at most [`WIDE`] wide.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn stride1_avx2(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    assert!(w <= WIDE, "row wider than the zero row");
    let rows = out.len() / w;
    let kernel = Stride1Avx2 {
        tap: taps.map(|t| _mm256_set1_ps(t)),
        bias: _mm256_set1_ps(bias),
        relu,
        first: edge_masks(w, 0),
        inner_end: if w > 9 { 8 + (w - 9) / 8 * 8 } else { 8 },
    };
    let out = out.as_mut_ptr();
    let mut i = 0;
    while i < rows {
        // The last step takes the one or two rows left, not three with some thrown away (a
        // band of ten rows would compute twelve).
        let at = out.add(i * w);
        match rows - i {
            1 => short_step::<1>(&kernel, band, oy0 + i, at),
            2 => short_step::<2>(&kernel, band, oy0 + i, at),
            _ => kernel.rows::<STRIDE1_ROWS>(band, oy0 + i, at),
        }
        i += STRIDE1_ROWS;
    }
}

/// A step of one or two rows of [`stride1_avx2`], compiled apart from the three-row step. Inlined
/// beside it, the short steps would get the registers it leaves them: the taps it keeps on the
/// stack would be reloaded in every column of theirs (nine loads beside eighteen FMAs for two
/// rows), where alone they hold the taps in registers. The feature fusion's and the classifier's
/// bands are two rows at 768x1536 and 1024x2048
/// (`cargo bench -p fastscnn-benches --bench kernels -- two_row_bands`).
///
/// # Safety
/// As [`stride1_avx2`].
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub(super) unsafe fn short_step<const N: usize>(
    kernel: &Stride1Avx2,
    band: Band,
    oy: usize,
    at: *mut f32,
) {
    kernel.rows::<N>(band, oy, at)
}

/// [`stride1_avx2`]'s taps, bias and ReLU, and what the row width decides.
#[derive(Clone, Copy)]
pub(super) struct Stride1Avx2 {
    tap: [std::arch::x86_64::__m256; 9],
    bias: std::arch::x86_64::__m256,
    relu: bool,
    /// The first vector's [`edge_masks`].
    first: [std::arch::x86_64::__m256i; 3],
    /// Columns `8..inner_end`: the vectors whose taps `x - 1 ..= x + 8` all lie inside the row.
    inner_end: usize,
}

impl Stride1Avx2 {
    /// Output rows `oy..oy + N` (`N` at most [`STRIDE1_ROWS`]) into `at` and the rows below it.
    #[inline(always)]
    unsafe fn rows<const N: usize>(self, band: Band, oy: usize, at: *mut f32) {
        let w = band.w;
        let zero_row = ZERO_ROW.as_ptr().add(16);
        let mut input = [zero_row; STRIDE1_ROWS + 2];
        for (j, row) in input.iter_mut().enumerate().take(N + 2) {
            if let Some(r) = band.row(oy as isize - 1 + j as isize) {
                *row = r.as_ptr();
            }
        }
        let first = &self.first;
        // Only the loads that would leave the row are masked: the first vector's left taps,
        // the last one's right taps (both, and the centre too, when the row is not a multiple
        // of eight wide).
        let sums = if w > 8 {
            self.column::<N, true, false, false>(&input, 0, first)
        } else {
            self.column::<N, true, true, true>(&input, 0, first)
        };
        self.store::<N>(sums, at, w, w);
        let mut x = 8;
        while x < self.inner_end.min(w) {
            let sums = self.column::<N, false, false, false>(&input, x, first);
            self.store::<N>(sums, at.add(x), w, 8);
            x += 8;
        }
        while x < w {
            let masks = edge_masks(w, x);
            let sums = if x + 8 == w {
                self.column::<N, false, false, true>(&input, x, &masks)
            } else {
                self.column::<N, true, true, true>(&input, x, &masks)
            };
            self.store::<N>(sums, at.add(x), w, w - x);
            x += 8;
        }
    }

    /// The output vectors at column `x` of the `N` rows whose input rows are `input[d..d + 3]`;
    /// a `LEFT`, `CENTRE` or `RIGHT` tap's loads take only the lanes of its mask in `masks`.
    /// Each output is one chain from the bias through its nine taps: the taps, three loaded
    /// vectors and three sums fill the sixteen registers.
    #[inline(always)]
    unsafe fn column<const N: usize, const LEFT: bool, const CENTRE: bool, const RIGHT: bool>(
        self,
        input: &[*const f32; STRIDE1_ROWS + 2],
        x: usize,
        masks: &[std::arch::x86_64::__m256i; 3],
    ) -> [std::arch::x86_64::__m256; STRIDE1_ROWS] {
        use std::arch::x86_64::*;
        // No closures and no `array::map` here: they do not inherit the caller's target
        // features, and every intrinsic in them becomes a call.
        let mut sums = [self.bias; STRIDE1_ROWS];
        for (j, row) in input.iter().enumerate().take(N + 2) {
            let at = row.wrapping_add(x);
            // SAFETY: plain loads lie inside the row or the zero row; masked ones touch only
            // the lanes inside it.
            let left = load::<LEFT>(at.wrapping_sub(1), masks[0]);
            let centre = load::<CENTRE>(at, masks[1]);
            let right = load::<RIGHT>(at.wrapping_add(1), masks[2]);
            // Input row j is kernel row j - d of output row d.
            for (d, sum) in sums.iter_mut().enumerate().take(N) {
                if let Some(r) = j.checked_sub(d).filter(|&r| r < 3) {
                    *sum = _mm256_fmadd_ps(self.tap[3 * r], left, *sum);
                    *sum = _mm256_fmadd_ps(self.tap[3 * r + 1], centre, *sum);
                    *sum = _mm256_fmadd_ps(self.tap[3 * r + 2], right, *sum);
                }
            }
        }
        if self.relu {
            let zero = _mm256_setzero_ps();
            for sum in sums.iter_mut().take(N) {
                *sum = _mm256_max_ps(*sum, zero);
            }
        }
        sums
    }

    /// The first `n` lanes of the first `N` of `sums` at `at` and the rows below it.
    #[inline(always)]
    unsafe fn store<const N: usize>(
        self,
        sums: [std::arch::x86_64::__m256; STRIDE1_ROWS],
        at: *mut f32,
        w: usize,
        n: usize,
    ) {
        use std::arch::x86_64::*;
        for (d, sum) in sums.into_iter().enumerate().take(N) {
            let at = at.add(d * w);
            if n >= 8 {
                _mm256_storeu_ps(at, sum);
            } else {
                _mm256_maskstore_ps(at, lanes_below(n), sum);
            }
        }
    }
}

/// Stride 2 on AVX2 straight from the input rows, one output row at a time. A vector of eight
/// outputs at column `x` reads input columns `2x - 1 ..= 2x + 15` of each of its three input rows
/// as four loads, at `2x - 1`, `2x + 7`, `2x` and `2x + 8`: the even lanes of the first pair are
/// the left taps, the even lanes of the second pair the centre taps and its odd lanes the right
/// taps, each picked by one in-lane shuffle. The shuffles leave the outputs in the order
/// 0 1 4 5 2 3 6 7, put right by one permute before the store. No input row is copied first, as
/// the [`parity_planes`] of the portable path copy every one; and one output row at a time, as
/// two sharing an input row are no faster
/// (`cargo bench -p fastscnn-benches --bench kernels -- stride2`).
///
/// # Safety
/// The processor must support AVX2 and FMA, and the rows be at most [`WIDE`] wide.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn stride2_avx2(
    band: Band,
    oy0: usize,
    ow: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    assert!(w <= WIDE, "row wider than the zero row");
    let rows = out.len() / ow;
    let kernel = Stride2Avx2 {
        tap: taps.map(|t| _mm256_set1_ps(t)),
        bias: _mm256_set1_ps(bias),
        relu,
        w,
    };
    let zero_row = ZERO_ROW.as_ptr().add(16);
    let out = out.as_mut_ptr();
    for i in 0..rows {
        let y = 2 * (oy0 + i) as isize - 1;
        let row = |y: isize| band.row(y).map_or(zero_row, |r| r.as_ptr());
        let input = [row(y), row(y + 1), row(y + 2)];
        let at = out.add(i * ow);
        let mut x = 0;
        while x < ow {
            // Columns 2x - 1 ..= 2x + 15 all inside the row; at the row's start all but
            // column -1, which only the first load reads.
            let sum = if x > 0 && 2 * x + 16 <= w {
                kernel.column::<false, false>(input, x)
            } else if x == 0 && 16 <= w {
                kernel.column::<true, false>(input, x)
            } else {
                kernel.column::<false, true>(input, x)
            };
            if ow - x >= 8 {
                _mm256_storeu_ps(at.add(x), sum);
            } else {
                _mm256_maskstore_ps(at.add(x), lanes_below(ow - x), sum);
            }
            x += 8;
        }
    }
}

/// [`stride2_avx2`]'s taps, bias, ReLU and input width.
#[derive(Clone, Copy)]
pub(super) struct Stride2Avx2 {
    tap: [std::arch::x86_64::__m256; 9],
    bias: std::arch::x86_64::__m256,
    relu: bool,
    w: usize,
}

impl Stride2Avx2 {
    /// The output vector at column `x` from input rows `input`, in order; `MASKED` loads only
    /// the lanes inside the row, `LEFT` (at column 0) only the first load's, the one that
    /// reads column -1.
    #[inline(always)]
    unsafe fn column<const LEFT: bool, const MASKED: bool>(
        self,
        input: [*const f32; 3],
        x: usize,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let start = 2 * x as isize - 1;
        let mut loaded = [None; 3];
        let inside = _mm256_cmpgt_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_setzero_si256(),
        );
        // No closures: they would not inherit the target features.
        for r in 0..3 {
            let a = if LEFT {
                _mm256_maskload_ps(input[r].wrapping_offset(start), inside)
            } else {
                self.load::<MASKED>(input[r], start)
            };
            let b = self.load::<MASKED>(input[r], start + 8);
            let c = self.load::<MASKED>(input[r], start + 1);
            let d = self.load::<MASKED>(input[r], start + 9);
            loaded[r] = Some([
                _mm256_shuffle_ps::<0x88>(a, b),
                _mm256_shuffle_ps::<0x88>(c, d),
                _mm256_shuffle_ps::<0xDD>(c, d),
            ]);
        }
        let sum = kernel_rows(loaded, &self.tap, self.bias, self.relu);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(sum)))
    }

    /// Columns `start .. start + 8` of the row at `row`; when `MASKED`, the lanes outside the
    /// row are zeros and never read.
    #[inline(always)]
    unsafe fn load<const MASKED: bool>(
        self,
        row: *const f32,
        start: isize,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let at = row.wrapping_offset(start);
        if !MASKED {
            return _mm256_loadu_ps(at);
        }
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let from = _mm256_cmpgt_epi32(lanes, _mm256_set1_epi32((-start - 1) as i32));
        let to = _mm256_cmpgt_epi32(_mm256_set1_epi32((self.w as isize - start) as i32), lanes);
        _mm256_maskload_ps(at, _mm256_and_si256(from, to))
    }
}

/// Lanes below `n` (at most 8), as AVX2's masked moves take them.
#[inline(always)]
pub(super) unsafe fn lanes_below(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}

/// The masks of [`stride1_avx2`]'s vector at column `x` of a `w`-wide row: the lanes of its left
/// taps inside the row (not column -1 at the row's start), of its centre ones, of its right
/// ones (not column `w`).
#[inline(always)]
pub(super) unsafe fn edge_masks(w: usize, x: usize) -> [std::arch::x86_64::__m256i; 3] {
    use std::arch::x86_64::*;
    let valid = lanes_below(w - x);
    let left = if x == 0 {
        _mm256_and_si256(
            valid,
            _mm256_cmpgt_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_setzero_si256(),
            ),
        )
    } else {
        valid
    };
    [left, valid, lanes_below(w - x - 1)]
}

/// Eight floats at `at`, or when `MASKED` the lanes of `mask` (the others zero).
#[inline(always)]
pub(super) unsafe fn load<const MASKED: bool>(
    at: *const f32,
    mask: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    if MASKED {
        _mm256_maskload_ps(at, mask)
    } else {
        _mm256_loadu_ps(at)
    }
}

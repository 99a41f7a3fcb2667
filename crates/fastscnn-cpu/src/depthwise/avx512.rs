//! The depthwise kernels in AVX-512 intrinsics, for rows up to [`NARROW`] wide, and the vector
//! arithmetic ([`Lanes`], [`kernel_rows`]) they share with the AVX2 ones.

use super::*;

/// Input widths up to which the AVX-512 kernels run: on rows of 12 to 96 (the bottlenecks' maps
/// and, at 384x768, the classifier's) they beat the flat runs; on rows of 192 and more, mostly
/// read from memory rather than cache, the flat runs' long streams are faster
/// (`cargo bench -p fastscnn-benches --bench kernels -- depthwise3x3`: rows of 24 to 192).
pub(super) const NARROW: usize = 128;

/// [`stride1_body`] on AVX-512, row by row with masked vectors: the loads at columns `x - 1` and
/// `x + 1` leave out the lanes beyond the row's ends (the zero padding) and the last vector of a
/// row is masked, so no output is computed one at a time; rows outside the image are skipped.
/// The nine products are summed by kernel row (three chains, then two adds), as [`nine`] sums
/// them.
///
/// # Safety
/// The processor must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stride1_avx512(
    band: Band,
    oy0: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let w = band.w;
    let rows = out.len() / w;
    let tap = taps.map(|t| _mm512_set1_ps(t));
    let bias = _mm512_set1_ps(bias);
    let mask = |n: usize| lane_mask(n, 0);
    let out = out.as_mut_ptr();
    // Two output rows at a time: they share two of their four input rows, and their six
    // kernel-row sums are independent chains of three multiply-adds, which keeps the FMA units
    // busy where one chain of nine would wait on each result.
    let mut i = 0;
    while i < rows {
        let pair = i + 1 < rows;
        let oy = (oy0 + i) as isize;
        let input = [
            band.row(oy - 1),
            band.row(oy),
            band.row(oy + 1),
            if pair { band.row(oy + 2) } else { None },
        ];
        let mut x = 0;
        while x < w {
            let valid = mask(w - x);
            // Lanes whose left neighbour is inside the row; right neighbour likewise.
            let left = if x == 0 { valid & !1 } else { valid };
            let right = mask(w - x - 1);
            // The three taps' inputs of each input row (zeros outside the image).
            let loaded = input.map(|row| {
                row.map(|row| {
                    let at = row.as_ptr().add(x);
                    // SAFETY: the masks keep every accessed lane inside the row; the pointers
                    // of masked-out lanes are never dereferenced.
                    unsafe {
                        [
                            _mm512_maskz_loadu_ps(left, at.wrapping_sub(1)),
                            _mm512_maskz_loadu_ps(valid, at),
                            _mm512_maskz_loadu_ps(right, at.wrapping_add(1)),
                        ]
                    }
                })
            });
            // Output row `i + d` takes kernel row `r` from input row `d + r`.
            for d in 0..1 + usize::from(pair) {
                let acc = kernel_rows([loaded[d], loaded[d + 1], loaded[d + 2]], &tap, bias, relu);
                // SAFETY: `valid` keeps the store inside output row i + d.
                unsafe { _mm512_mask_storeu_ps(out.add((i + d) * w + x), valid, acc) };
            }
            x += 16;
        }
        i += 2;
    }
}

/// Stride 2 on AVX-512 straight from the input rows: sixteen outputs read two vectors of each
/// input row, split in registers into its even columns (the centre taps), its odd ones (the
/// right taps) and the odd ones shifted by a lane (the left taps, the lane before carried over
/// from the previous vector, zero at the row's start). Two output rows at a time, as
/// [`stride1_avx512`]; masks handle the ends.
///
/// # Safety
/// The processor must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stride2_avx512(
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
    let rows = out.len() / ow;
    let tap = taps.map(|t| _mm512_set1_ps(t));
    let (bias, zero) = (_mm512_set1_ps(bias), _mm512_setzero_ps());
    let mask = |n: usize| lane_mask(n, 0);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let out = out.as_mut_ptr();
    let mut i = 0;
    while i < rows {
        let pair = i + 1 < rows;
        let y = 2 * (oy0 + i) as isize - 1;
        // Input rows y ..= y + 2 feed output row i, y + 2 ..= y + 4 row i + 1.
        let input: [Option<&[f32]>; 5] = std::array::from_fn(|r| {
            if r < 3 || pair {
                band.row(y + r as isize)
            } else {
                None
            }
        });
        let mut carry = [zero; 5];
        let mut x = 0;
        while x < ow {
            let (lo, hi) = (mask(w - 2 * x), mask((w - 2 * x).saturating_sub(16)));
            let mut loaded = [None; 5];
            for ((row, slot), carry) in input.iter().zip(&mut loaded).zip(&mut carry) {
                let Some(row) = row else { continue };
                let at = row.as_ptr().add(2 * x);
                // SAFETY: the masks keep every accessed lane inside the row; the pointers of
                // masked-out lanes are never dereferenced.
                let (a, b) = unsafe {
                    (
                        _mm512_maskz_loadu_ps(lo, at),
                        _mm512_maskz_loadu_ps(hi, at.wrapping_add(16)),
                    )
                };
                let centre = _mm512_permutex2var_ps(a, even, b);
                let right = _mm512_permutex2var_ps(a, odd, b);
                let left = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
                    _mm512_castps_si512(right),
                    _mm512_castps_si512(*carry),
                ));
                *carry = right;
                *slot = Some([left, centre, right]);
            }
            let valid = mask(ow - x);
            for d in 0..1 + usize::from(pair) {
                let rows = [loaded[2 * d], loaded[2 * d + 1], loaded[2 * d + 2]];
                let acc = kernel_rows(rows, &tap, bias, relu);
                // SAFETY: `valid` keeps the store inside output row i + d.
                unsafe { _mm512_mask_storeu_ps(out.add((i + d) * ow + x), valid, acc) };
            }
            x += 16;
        }
        i += 2;
    }
}

/// One output vector of the intrinsic kernels: `bias` plus each kernel row's three taps times its
/// input row's left, centre and right vectors (`None`: a row outside the image), summed as three
/// independent chains, then the ReLU.
///
/// # Safety
/// The processor must have `V`'s instructions; inlined into a kernel compiled for them.
#[inline(always)]
pub(super) unsafe fn kernel_rows<V: Lanes>(
    rows: [Option<[V; 3]>; 3],
    tap: &[V; 9],
    bias: V,
    relu: bool,
) -> V {
    let zero = V::zero();
    let mut sums = [bias, zero, zero];
    for (r, (sum, row)) in sums.iter_mut().zip(rows).enumerate() {
        if let Some([a, b, c]) = row {
            *sum = tap[3 * r].mul_add(a, *sum);
            *sum = tap[3 * r + 1].mul_add(b, *sum);
            *sum = tap[3 * r + 2].mul_add(c, *sum);
        }
    }
    let acc = sums[0].add(sums[1]).add(sums[2]);
    if relu {
        acc.max(zero)
    } else {
        acc
    }
}

/// The vector arithmetic of [`kernel_rows`], for AVX-512's and AVX2's registers.
pub(super) trait Lanes: Copy {
    unsafe fn zero() -> Self;
    /// `self * a + b`, fused.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn max(self, other: Self) -> Self;
}

/// [`Lanes`] for a vector type from its four intrinsics.
macro_rules! lanes {
    ($vector:ident: $zero:ident, $fmadd:ident, $add:ident, $max:ident) => {
        impl Lanes for std::arch::x86_64::$vector {
            #[inline(always)]
            unsafe fn zero() -> Self {
                std::arch::x86_64::$zero()
            }
            #[inline(always)]
            unsafe fn mul_add(self, a: Self, b: Self) -> Self {
                std::arch::x86_64::$fmadd(self, a, b)
            }
            #[inline(always)]
            unsafe fn add(self, other: Self) -> Self {
                std::arch::x86_64::$add(self, other)
            }
            #[inline(always)]
            unsafe fn max(self, other: Self) -> Self {
                std::arch::x86_64::$max(self, other)
            }
        }
    };
}

lanes!(__m512: _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_max_ps);
lanes!(__m256: _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_max_ps);

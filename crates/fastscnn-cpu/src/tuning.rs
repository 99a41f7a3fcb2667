//! The sizes at which the engine's blocks change strategy. Each instruction set has its values
//! ([`Tuning::for_isa`]); a caller can give others to an [`crate::ExecutionContext`], so that two
//! values can be timed against each other in one process, or a path tested on maps of any size.

use std::cell::Cell;

use crate::Isa;

/// The engine's tuning values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Hidden tensors (in floats: expanded channels x input pixels) from which a bottleneck is cut
    /// into bands of rows; smaller ones are split by hidden channels instead, one parallel region
    /// per block. Smaller tensors stay in the last-level cache anyway, and their bands would be
    /// so thin that recomputing the shared input rows costs more than the memory traffic saved.
    pub fuse_above: usize,
    /// Hidden channels a banded bottleneck expands at a time, a multiple of the kernels'
    /// eight-channel weight panels.
    pub hidden_chunk: usize,
    /// Floats of a band's intermediate a banded block aims for, so that it stays in the core's
    /// cache (64 Ki floats, 256 KiB, on every instruction set).
    pub band_floats: usize,
}

/// The weight panels' width, which [`Tuning::hidden_chunk`] must be a multiple of.
const PANEL: usize = 8;

impl Tuning {
    /// The values for `isa`'s kernels.
    ///
    /// `fuse_above`: 1 M floats on AVX-512; 2 M on AVX2, where the 1.2-1.8 M-float tensors of
    /// 768x1536 and 1024x2048 run faster split, as their bands of four rows expand half as many
    /// rows again (`cargo xtask profile --size 768x1536`, the bottleneck groups). On NEON, 1 M,
    /// the AVX-512 value, not timed on an ARM machine: small boards' last-level caches (2-4 MB)
    /// suggest no larger value; Apple's and Graviton's larger caches might take one.
    ///
    /// `hidden_chunk`: on AVX2, 64: each chunk packs the band's input and re-reads its output for
    /// the projection, so chunks of 32 would do both twice as often, and 128 saves nothing more
    /// (`cargo xtask profile --size 768x1536`, bottleneck group 1). On AVX-512, 32, where 64 is
    /// no faster. On NEON 64, not timed on an ARM machine: its kernel packs strips of the input
    /// as AVX2's does, so the same count of packings is saved.
    pub fn for_isa(isa: Isa) -> Self {
        let (fuse_above, hidden_chunk) = match isa {
            Isa::Avx2 => (2 << 20, 64),
            Isa::Neon => (1 << 20, 64),
            Isa::Avx512 | Isa::Portable => (1 << 20, 32),
        };
        Self {
            fuse_above,
            hidden_chunk,
            band_floats: 64 * 1024,
        }
    }

    /// The tuning of the work running on this thread: that of the [`crate::ExecutionContext`]
    /// whose pool the thread belongs to, else the values of [`Isa::current`].
    #[inline]
    pub fn current() -> Self {
        POOL_TUNING
            .with(Cell::get)
            .unwrap_or_else(|| Self::for_isa(Isa::current()))
    }

    /// Why the values cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.hidden_chunk == 0 || !self.hidden_chunk.is_multiple_of(PANEL) {
            return Err(format!(
                "hidden_chunk {} is not a positive multiple of {PANEL}",
                self.hidden_chunk
            ));
        }
        if self.band_floats == 0 {
            return Err("band_floats must be positive".into());
        }
        Ok(())
    }
}

thread_local! {
    /// The tuning of the execution context whose pool this thread belongs to.
    static POOL_TUNING: Cell<Option<Tuning>> = const { Cell::new(None) };
}

/// Marks this thread as running with `tuning`: each worker of an execution context's pool, as it
/// starts.
pub(crate) fn set_thread_tuning(tuning: Tuning) {
    POOL_TUNING.with(|cell| cell.set(Some(tuning)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_set_has_usable_values() {
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable] {
            assert_eq!(Tuning::for_isa(isa).check(), Ok(()), "{isa:?}");
        }
        let odd = Tuning {
            hidden_chunk: 12,
            ..Tuning::for_isa(Isa::Portable)
        };
        assert!(odd.check().unwrap_err().contains("12"));
    }
}

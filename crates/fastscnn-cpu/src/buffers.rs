//! Feature-map buffers kept between frames.
//!
//! A fresh multi-megabyte `Vec` costs a page fault per 4 KiB the first time it is written, every
//! frame anew. The pool hands back the buffers of the previous frame instead, so after the first
//! frame inference allocates nothing but its output; a buffer is never truncated, so lending it
//! for a larger size again writes nothing either.

/// A zeroed `Vec` of `len` elements whose pages the kernel may back with 2 MiB huge pages.
///
/// For the pool's new buffers and outputs a kernel reads before it writes (the label map).
/// Zeroed memory straight from the allocator is untouched, so the pages fault in while the kernels
/// write them, in parallel; on Linux the region is first advised `MADV_HUGEPAGE`, so they fault in
/// 2 MiB at a time rather than 4 KiB (512 times fewer faults).
pub fn zeroed_vec<T: Zeroable>(len: usize) -> Vec<T> {
    let Ok(layout) = std::alloc::Layout::array::<T>(len) else {
        panic!("zeroed_vec: {len} elements overflow the address space")
    };
    if layout.size() == 0 {
        return Vec::new();
    }
    // SAFETY: the layout is non-zero-sized; the allocation is checked for null; `T` is valid
    // all-zero (the `Zeroable` contract), so every element is initialised; the Vec frees it with
    // the same layout (`Layout::array::<T>(len)` with capacity `len`).
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        advise_huge_pages(ptr, layout.size());
        Vec::from_raw_parts(ptr.cast::<T>(), len, len)
    }
}

/// An empty `Vec` with room for `len` elements, for an output that a kernel writes in full: no
/// page of it is written before the kernel's own stores (see [`zeroed_vec`] for the huge pages).
///
/// Unlike zeroed memory, it costs nothing extra when the allocator hands back a block it kept
/// from the previous frame (a zeroing allocator would clear all of it first, 90 MB of logits at
/// 768x1536). Fill it through [`Vec::spare_capacity_mut`], then [`Vec::set_len`].
pub fn output_vec<T>(len: usize) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(len);
    advise_huge_pages(v.as_mut_ptr().cast(), len * std::mem::size_of::<T>());
    v
}

/// `slice` seen as possibly uninitialised memory, for kernels that write outputs through
/// [`std::mem::MaybeUninit`] so they can fill both fresh and initialised buffers.
///
/// # Safety
/// Every write through the result must be an initialised value (`MaybeUninit::write`), never
/// `MaybeUninit::uninit()`, so that the slice stays initialised.
pub(crate) unsafe fn as_uninit(slice: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: same size and alignment; the caller writes only initialised values.
    unsafe { &mut *(slice as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// The all-zero bit pattern must be a valid value of the type.
pub unsafe trait Zeroable {}
// SAFETY: zero is a valid f32 (0.0) and u32 (0).
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for u32 {}

/// Asks Linux to back the whole 2 MiB pages inside `ptr..ptr + size` with huge pages; a hint, so
/// failure (no THP support, `never` mode) changes nothing.
#[allow(unused_variables)]
fn advise_huge_pages(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + size) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside the caller's live allocation; madvise with
            // MADV_HUGEPAGE changes no contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// A feature map lent by a [`BufferPool`]: `len` floats at the front of an allocation that stays
/// fully initialised, so lending it again for another size costs nothing.
#[derive(Debug)]
pub struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buffer {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// Buffers lent out by [`BufferPool::take`] and returned by [`BufferPool::give`].
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Vec<f32>>,
}

impl BufferPool {
    /// A buffer of `len` floats with unspecified contents: the smallest free buffer that fits, or a
    /// new one.
    pub fn take(&mut self, len: usize) -> Buffer {
        let fitting = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let data = match fitting {
            Some(i) => self.free.swap_remove(i),
            None => zeroed_vec(len),
        };
        Buffer { data, len }
    }

    /// Takes back a buffer, or a [`FeatureMap`](crate::FeatureMap)'s, for the next `take`.
    pub fn give(&mut self, buffer: impl Into<Buffer>) {
        self.free.push(buffer.into().data);
    }

    /// Floats held by the free buffers.
    pub fn capacity(&self) -> usize {
        self.free.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_buffers_are_reused_best_fit_first() {
        let mut pool = BufferPool::default();
        let big = pool.take(1000);
        let small = pool.take(10);
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        pool.give(big);
        pool.give(small);
        let again = pool.take(8);
        assert_eq!(again.as_ptr(), small_ptr);
        assert_eq!(again.len(), 8);
        let again_big = pool.take(900);
        assert_eq!(again_big.as_ptr(), big_ptr);
        assert_eq!(again_big.len(), 900);
        // Nothing free fits: a new buffer, the others stay in the pool.
        let bigger = pool.take(2000);
        assert_eq!(bigger.len(), 2000);
        pool.give(again);
        pool.give(again_big);
        pool.give(bigger);
        assert_eq!(pool.capacity(), 3010);
    }

    #[test]
    fn zeroed_vectors_are_zero_at_every_size() {
        for len in [0, 1, 1000, 3 << 20] {
            let v: Vec<f32> = zeroed_vec(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            let labels: Vec<u32> = zeroed_vec(len);
            assert!(labels.iter().all(|&x| x == 0));
        }
    }
}

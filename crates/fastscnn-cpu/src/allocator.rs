//! The process allocator's policy for the outputs handed to the caller.
//!
//! The logits at 768x1536 are 90 MB in a fresh `Vec` every frame. glibc serves blocks that large
//! with `mmap` and unmaps them on free, so every frame the kernel zeroes 90 MB of new pages before
//! the resize writes them (`cargo bench -p fastscnn-benches --bench kernels -- resize_19x96`
//! times `separable_fresh_buffer` against `separable_kept_buffer`). Keeping freed blocks in the
//! heap gives the next frame the same memory back instead. That is a choice for the whole
//! process (freed memory stays resident until reused), so the library never makes it on its own:
//! the `fastscnn` binary opts in for inference, a program embedding the library may call
//! [`keep_freed_memory`] too, or use an allocator that keeps freed blocks (jemalloc does).

/// Makes the C allocator keep freed memory for reuse rather than return it to the kernel: large
/// blocks come from the heap instead of their own mappings, and the heap is not trimmed below
/// 2 GiB. Returns whether the policy is in effect (glibc on Linux; elsewhere it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's tuning parameters; it is thread-safe.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Bytes glibc holds in blocks of their own mappings.
    fn mapped_bytes() -> usize {
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    fn large_blocks_come_from_the_heap_once_kept() {
        const LEN: usize = 96 << 20;
        assert!(keep_freed_memory());
        let before = mapped_bytes();
        let block = vec![1u8; LEN];
        let during = mapped_bytes();
        drop(block);
        // Other tests of this binary may allocate meanwhile, but none maps 96 MB.
        assert!(
            during < before + LEN,
            "a {LEN}-byte block was mapped on its own ({before} -> {during} bytes mapped)"
        );
    }
}

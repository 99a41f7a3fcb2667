//! Feature-map buffers kept between frames.
//!
//! A fresh multi-megabyte `Vec` costs a page fault per 4 KiB the first time it is written, which at
//! 1024x2048 added up to more than the convolutions it fed. The pool hands back the buffers of the
//! previous frame instead, so after the first frame inference allocates nothing but its output.

/// Buffers lent out by [`BufferPool::take`] and returned by [`BufferPool::give`].
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Vec<f32>>,
}

impl BufferPool {
    /// A buffer of exactly `len` floats with unspecified contents: the free buffer with the
    /// smallest capacity that fits, else the largest one, grown.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let fitting = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let largest = || {
            self.free
                .iter()
                .enumerate()
                .max_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)
        };
        let mut buffer = match fitting.or_else(largest) {
            Some(i) => self.free.swap_remove(i),
            None => Vec::new(),
        };
        buffer.resize(len, 0.0);
        buffer
    }

    pub fn give(&mut self, buffer: Vec<f32>) {
        self.free.push(buffer);
    }

    /// Floats held by the free buffers.
    pub fn capacity(&self) -> usize {
        self.free.iter().map(Vec::capacity).sum()
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
        pool.give(again);
        pool.give(again_big);
        assert!(pool.capacity() >= 1010);
    }
}

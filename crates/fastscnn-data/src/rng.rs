//! Where every random draw of the data pipeline comes from. Each sample of each epoch gets its
//! own generator, keyed by (seed, epoch, sample index), so a sample is reproduced byte for byte
//! whatever the worker count, the order samples are loaded in, or where a resumed run restarts.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Keeps the augmentation streams and the shuffle streams apart even for equal numbers.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Stream {
    Sample = 0,
    Shuffle = 1,
}

fn keyed(stream: Stream, seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    // ChaCha is a keyed permutation: distinct keys give independent streams, no hashing needed.
    let mut key = [0u8; 32];
    for (chunk, word) in key
        .chunks_exact_mut(8)
        .zip([seed, epoch, index, stream as u64])
    {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The generator of one sample's augmentation.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    keyed(Stream::Sample, seed, epoch, index as u64)
}

/// The order in which an epoch visits `len` samples: a permutation fixed by (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut keyed(Stream::Shuffle, seed, epoch, 0));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |mut r: ChaCha8Rng| r.random::<u64>();
        assert_eq!(draw(sample_rng(1, 2, 3)), draw(sample_rng(1, 2, 3)));
        assert_ne!(draw(sample_rng(1, 2, 3)), draw(sample_rng(1, 2, 4)));
        assert_ne!(draw(sample_rng(1, 2, 3)), draw(sample_rng(1, 3, 3)));
        assert_ne!(draw(sample_rng(1, 2, 3)), draw(sample_rng(2, 2, 3)));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 7, 0, true);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 7, 0, true));
        assert_ne!(a, epoch_order(50, 7, 1, true));
        assert_ne!(a, epoch_order(50, 8, 0, true));
        assert_eq!(epoch_order(5, 7, 0, false), [0, 1, 2, 3, 4]);
    }
}

//! The learning-rate schedule: the paper's poly decay, with an optional linear warm-up.

/// `lr(i) = base · (1 - i / total)^power`, after `warmup_iters` rising linearly from
/// `warmup_ratio · base`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolyLr {
    /// The rate at iteration 0 before warm-up (the paper's 0.045).
    pub base: f64,
    /// The exponent of the decay (the paper's 0.9).
    pub power: f64,
    /// Iterations over which the rate decays to 0; it stays 0 from then on.
    pub total_iters: u64,
    /// Iterations of linear warm-up; 0 for none.
    pub warmup_iters: u64,
    /// The fraction of the poly rate the warm-up starts from (0.1 in training).
    pub warmup_ratio: f64,
}

impl PolyLr {
    /// The paper's schedule: base 0.045, power 0.9, no warm-up.
    pub fn paper(total_iters: u64) -> Self {
        Self {
            base: 0.045,
            power: 0.9,
            total_iters,
            warmup_iters: 0,
            warmup_ratio: 0.1,
        }
    }

    /// The rate for (zero-based) iteration `iter`.
    pub fn lr(&self, iter: u64) -> f64 {
        let progress = iter.min(self.total_iters) as f64 / self.total_iters.max(1) as f64;
        let poly = self.base * (1.0 - progress).powf(self.power);
        if iter < self.warmup_iters {
            let t = iter as f64 / self.warmup_iters as f64;
            poly * (self.warmup_ratio + (1.0 - self.warmup_ratio) * t)
        } else {
            poly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_decay_from_base_to_zero() {
        let s = PolyLr::paper(100);
        assert_eq!(s.lr(0), 0.045);
        assert!((s.lr(50) - 0.045 * 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(s.lr(100), 0.0);
        assert!(s.lr(99) > 0.0);
    }

    #[test]
    fn warm_up_rises_linearly_into_the_decay() {
        let s = PolyLr {
            warmup_iters: 10,
            ..PolyLr::paper(100)
        };
        assert!((s.lr(0) - 0.0045).abs() < 1e-15);
        assert!(s.lr(5) > s.lr(0) && s.lr(5) < PolyLr::paper(100).lr(5));
        assert_eq!(s.lr(10), PolyLr::paper(100).lr(10));
    }
}

//! The two float types the kernels that are written once for both run on.

/// `f32` or `f64`: what a kernel generic over its float type needs of it. The inference engine
/// runs f32; the custom ops of `fastscnn-core` run the same sampling and pooling code on f64 for
/// their gradient checks.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    /// Zero of this type.
    const ZERO: Self;
    /// The nearest value of this type to `v` (`as` for f32). Named apart from candle's
    /// `WithDType::from_f64`, so that a type bound by both calls either without ambiguity.
    fn of_f64(v: f64) -> Self;
    /// This value as an f64, exactly.
    fn as_f64(self) -> f64;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    fn of_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    fn of_f64(v: f64) -> Self {
        v
    }
    fn as_f64(self) -> f64 {
        self
    }
}

//! Where and how the engine runs, chosen by the caller: the instruction set of its kernels, the
//! threads they run on and the sizes at which its blocks change strategy ([`Tuning`]).
//!
//! A context owns a thread pool; work run through [`ExecutionContext::install`] runs on its
//! threads, which run the kernels of its instruction set ([`Isa::current`] on those threads).
//! Two contexts in one process run side by side with their own threads and kernels: an A/B of
//! two instruction sets, or every one of them tested in one test binary. Nothing is read from or
//! written to the environment.

use std::fmt;
use std::sync::Arc;

use crate::simd::{set_thread_isa, Isa};
use crate::tuning::{set_thread_tuning, Tuning};

/// An instruction set and a pool of threads for the engine's kernels.
#[derive(Clone)]
pub struct ExecutionContext {
    isa: Isa,
    tuning: Tuning,
    pool: Arc<rayon::ThreadPool>,
}

/// Why a context could not be made.
#[derive(Debug)]
pub enum ContextError {
    /// The processor cannot run `isa`'s kernels.
    Unsupported {
        /// The instruction set asked for.
        isa: Isa,
        /// The instruction sets this processor can run, best first.
        available: Vec<Isa>,
    },
    /// The threads could not be started.
    Threads(rayon::ThreadPoolBuildError),
    /// The tuning values cannot be used; the reason.
    Tuning(String),
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::Unsupported { isa, available } => {
                let names: Vec<&str> = available.iter().map(|i| i.name()).collect();
                write!(
                    f,
                    "this processor cannot run the {} kernels (it runs {})",
                    isa.name(),
                    names.join(", ")
                )
            }
            ContextError::Threads(e) => write!(f, "cannot start the threads: {e}"),
            ContextError::Tuning(why) => write!(f, "bad tuning: {why}"),
        }
    }
}

impl std::error::Error for ContextError {}

impl ExecutionContext {
    /// A context running `isa`'s kernels, tuned for it, on `threads` threads (all cores when
    /// `None`).
    pub fn new(isa: Isa, threads: Option<usize>) -> Result<Self, ContextError> {
        Self::tuned(isa, threads, Tuning::for_isa(isa))
    }

    /// A context running `isa`'s kernels with `tuning` on `threads` threads.
    pub fn tuned(isa: Isa, threads: Option<usize>, tuning: Tuning) -> Result<Self, ContextError> {
        let available = Isa::available();
        if !available.contains(&isa) {
            return Err(ContextError::Unsupported { isa, available });
        }
        tuning.check().map_err(ContextError::Tuning)?;
        let mut builder = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("fastscnn-{i}"))
            .start_handler(move |_| {
                set_thread_isa(isa);
                set_thread_tuning(tuning);
            });
        if let Some(threads) = threads {
            builder = builder.num_threads(threads);
        }
        let pool = builder.build().map_err(ContextError::Threads)?;
        Ok(Self {
            isa,
            tuning,
            pool: Arc::new(pool),
        })
    }

    /// The best instruction set of this processor ([`Isa::detected`]) on `threads` threads.
    pub fn detected(threads: Option<usize>) -> Result<Self, ContextError> {
        Self::new(Isa::detected(), threads)
    }

    /// The instruction set whose kernels run on the context's threads.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The tuning values the context's threads run with.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// How many threads the context's pool has.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `op` on one of the context's threads, its parallel work on the others, and returns
    /// its result (a panic in `op` resumes on the caller).
    pub fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        self.pool.install(op)
    }
}

impl fmt::Debug for ExecutionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutionContext")
            .field("isa", &self.isa)
            .field("tuning", &self.tuning)
            .field("threads", &self.threads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_the_context_threads_with_its_instruction_set() {
        for isa in Isa::available() {
            let context = ExecutionContext::new(isa, Some(2)).unwrap();
            assert_eq!(context.threads(), 2);
            let seen = context.install(|| {
                let mut both = (Isa::current(), Isa::current());
                rayon::join(|| both.0 = Isa::current(), || both.1 = Isa::current());
                both
            });
            assert_eq!(seen, (isa, isa), "{isa:?}");
        }
        // Outside any context: the detected set.
        assert_eq!(Isa::current(), Isa::detected());
    }

    #[test]
    fn an_instruction_set_the_processor_lacks_is_refused() {
        let missing = [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| !Isa::available().contains(isa));
        if let Some(isa) = missing {
            let err = ExecutionContext::new(isa, None).unwrap_err().to_string();
            assert!(err.contains(isa.name()), "{err}");
        }
    }
}

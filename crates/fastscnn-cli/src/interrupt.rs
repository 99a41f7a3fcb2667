//! Ctrl-C while videos are segmented: the first one ends the run gracefully (no frame is taken
//! after it, the frames before it are written and the videos finished, playable), a second one
//! ends the process at once. ffmpeg runs in process groups of its own, so only this process
//! hears it.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed since [`install`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Catches SIGINT (Unix; elsewhere Ctrl-C ends the process as before).
pub fn install() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigint(_: libc::c_int) {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                // The second time: at once, as the terminal's Ctrl-C usually does.
                unsafe { libc::_exit(130) };
            }
        }
        let handler: extern "C" fn(libc::c_int) = on_sigint;
        // SAFETY: the handler only touches an atomic and calls the async-signal-safe `_exit`.
        unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    }
}

//! Three stages that overlap: a source (decoding) on a thread of its own, the processing
//! (inference) on the calling thread, a sink (encoding, writing) on a third, joined by bounded
//! queues. A frame is decoded while the one before it is segmented and the one before that is
//! encoded, so a frame costs the slowest stage's time rather than the sum of the three, and
//! memory holds a few frames whatever the length of the video.

use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// How long each stage worked, over the frames that went through.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Frames that reached the sink.
    pub frames: u64,
    /// Frames through the processing so far (the count progress reports follow).
    pub processed: u64,
    /// From the start to the end of the run.
    pub wall: Duration,
    /// Time in the source, producing frames.
    pub decode: Duration,
    /// Time in the processing.
    pub infer: Duration,
    /// Time in the sink.
    pub encode: Duration,
}

impl StageTimes {
    /// Frames per second of wall time.
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Frames processed per second of wall time so far: the rate while the run goes on.
    pub fn processed_fps(&self) -> f64 {
        self.processed as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// A stage's mean time per frame, in milliseconds.
    pub fn mean_ms(&self, stage: Duration) -> f64 {
        1e3 * stage.as_secs_f64() / self.frames.max(1) as f64
    }
}

/// Runs every item of `source` through `process` into `sink`, each stage on its own thread,
/// with at most `depth` items waiting between two stages. `progress` is called on the calling
/// thread after each processed item with the times so far.
///
/// The first error of any stage stops the run: the items processed before it still reach the
/// sink (a decoding error mid-video leaves the frames before it written), then the error is
/// returned with the times of the frames that went through.
pub fn run_pipeline<I, O, E>(
    source: impl Iterator<Item = Result<I, E>> + Send,
    mut process: impl FnMut(I) -> Result<O, E>,
    mut sink: impl FnMut(O) -> Result<(), E> + Send,
    depth: usize,
    mut progress: impl FnMut(&StageTimes),
) -> (StageTimes, Result<(), E>)
where
    I: Send,
    O: Send,
    E: Send,
{
    let depth = depth.max(1);
    let start = Instant::now();
    let mut times = StageTimes::default();
    let (decoded_tx, decoded_rx) = sync_channel::<Result<I, E>>(depth);
    let (processed_tx, processed_rx) = sync_channel::<O>(depth);
    let (result, decode, encode, frames) = std::thread::scope(|scope| {
        let decoder = scope.spawn(move || {
            let mut busy = Duration::ZERO;
            let mut source = source;
            loop {
                let t = Instant::now();
                let Some(item) = source.next() else { break };
                busy += t.elapsed();
                let failed = item.is_err();
                // The receiver gone means the run stopped downstream.
                if decoded_tx.send(item).is_err() || failed {
                    break;
                }
            }
            busy
        });
        let encoder = scope.spawn(move || sink_stage(processed_rx, &mut sink));

        let mut result = Ok(());
        for item in decoded_rx.iter() {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let t = Instant::now();
            let out = match process(item) {
                Ok(out) => out,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            times.infer += t.elapsed();
            times.processed += 1;
            if processed_tx.send(out).is_err() {
                // The sink stopped on an error of its own, returned below.
                break;
            }
            times.wall = start.elapsed();
            progress(&times);
        }
        // Stop the source (its next send fails) and let the sink drain what it was given.
        drop(decoded_rx);
        drop(processed_tx);
        let decode = decoder.join().expect("the decoding thread panicked");
        let (encode, frames, sink_result) = encoder.join().expect("the encoding thread panicked");
        // The earliest failure in the frame order: a sink error came from a frame before the
        // one the other stages stopped at.
        let result = sink_result.and(result);
        (result, decode, encode, frames)
    });
    times.decode = decode;
    times.encode = encode;
    times.frames = frames;
    times.wall = start.elapsed();
    (times, result)
}

/// The sink's loop: its busy time, the items it took, and its first error.
fn sink_stage<O, E>(
    items: Receiver<O>,
    sink: &mut impl FnMut(O) -> Result<(), E>,
) -> (Duration, u64, Result<(), E>) {
    let mut busy = Duration::ZERO;
    let mut frames = 0;
    for item in items.iter() {
        let t = Instant::now();
        let written = sink(item);
        busy += t.elapsed();
        if let Err(e) = written {
            return (busy, frames, Err(e));
        }
        frames += 1;
    }
    (busy, frames, Ok(()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn every_item_arrives_in_order() {
        let out = Mutex::new(Vec::new());
        let (times, result) = run_pipeline(
            (0..50).map(Ok::<_, String>),
            |x| Ok(x * 2),
            |y| {
                out.lock().unwrap().push(y);
                Ok(())
            },
            2,
            |_| {},
        );
        result.unwrap();
        assert_eq!(times.frames, 50);
        assert_eq!(
            *out.lock().unwrap(),
            (0..50).map(|x| x * 2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_source_error_comes_after_the_items_before_it_are_written() {
        let written = AtomicUsize::new(0);
        let source = (0..10).map(|i| {
            if i < 7 {
                Ok(i)
            } else {
                Err(format!("bad frame {i}"))
            }
        });
        let (times, result) = run_pipeline(
            source,
            Ok,
            |_| {
                written.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            3,
            |_| {},
        );
        assert_eq!(result.unwrap_err(), "bad frame 7");
        assert_eq!(written.load(Ordering::SeqCst), 7);
        assert_eq!(times.frames, 7);
    }

    #[test]
    fn a_sink_error_stops_the_source() {
        let pulled = AtomicUsize::new(0);
        let source = (0..1_000_000).map(|i| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(i)
        });
        let (_, result) = run_pipeline(
            source,
            Ok,
            |i| {
                if i == 5 {
                    Err("disk full".to_string())
                } else {
                    Ok(())
                }
            },
            2,
            |_| {},
        );
        assert_eq!(result.unwrap_err(), "disk full");
        // A few items in flight, not the whole source.
        assert!(pulled.load(Ordering::SeqCst) < 100);
    }

    /// While the sink works on the first frame, the source goes on decoding: the sink waits for
    /// the source to be three frames ahead, which never happens if the stages take turns (the
    /// wait then ends in failure, after ten seconds).
    #[test]
    fn the_stages_overlap() {
        let produced = AtomicUsize::new(0);
        let source = (0..8).map(|i| {
            produced.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(i)
        });
        let (_, result) = run_pipeline(
            source,
            Ok,
            |i| {
                if i == 0 {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while produced.load(Ordering::SeqCst) < 4 {
                        if Instant::now() > deadline {
                            return Err("the source did not run beside the sink".to_string());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Ok(())
            },
            2,
            |_| {},
        );
        result.unwrap();
    }
}

//! The network's forward pass written once: the order of the stages, what each one reads, when an
//! intermediate is no longer read, the stages' names and their timing. The candle network and the
//! fused CPU engine are both [`StageExecutor`]s of this plan; they differ in what a feature map is
//! (a batched candle `Tensor`, one image's pool buffer) and in how a stage runs, never in what
//! runs after what.

use std::time::{Duration, Instant};

use candle_core::Result;

/// A stage of Fast-SCNN's forward pass, in the order the plan runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The stem and two DSConvs, to 1/8 resolution: the higher-resolution features.
    LearningToDownsample,
    /// One of the global feature extractor's bottleneck groups, counted from 0.
    BottleneckGroup(usize),
    /// The last bottleneck group's output pooled at several bin sizes: the global features.
    PyramidPooling,
    /// The global features upsampled and added to the higher-resolution ones.
    FeatureFusion,
    /// Two DSConvs and the 1x1 conv to class scores, at 1/8 resolution.
    Classifier,
    /// The classifier's scores upsampled to the input's resolution (logits, probabilities).
    Upsample,
    /// The upsampling fused with the argmax over classes (the label map).
    UpsampleArgmax,
}

impl Stage {
    /// The name per-stage timings report it under ([`crate::FastScnn::predict_profiled`],
    /// `cargo xtask profile`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::LearningToDownsample => "learning to downsample",
            Stage::BottleneckGroup(0) => "bottleneck group 1",
            Stage::BottleneckGroup(1) => "bottleneck group 2",
            Stage::BottleneckGroup(2) => "bottleneck group 3",
            Stage::BottleneckGroup(_) => "bottleneck group",
            Stage::PyramidPooling => "pyramid pooling",
            Stage::FeatureFusion => "feature fusion",
            Stage::Classifier => "classifier",
            Stage::Upsample => "resize",
            Stage::UpsampleArgmax => "resize + argmax",
        }
    }
}

/// Gets each stage's wall time, once the stage has finished on the device.
pub type StageTimer<'a> = &'a mut dyn FnMut(Stage, Duration);

/// A stage's input: a borrow when later stages read the map too, the map itself when this stage
/// is its last reader. The executor then releases it ([`StageInput::release`]) as soon as it has
/// read it, so that a buffer pool can lend it to the rest of the stage: a bottleneck group's
/// later blocks reuse the previous group's output buffer, which is in cache
/// (`cargo xtask profile --size 384x768`, bottleneck groups 2 and 3).
#[derive(Debug)]
pub enum StageInput<'a, M> {
    /// A map later stages read too, which the plan releases.
    Borrowed(&'a M),
    /// The map, and the stage that made it.
    Last(Stage, M),
}

impl<M> StageInput<'_, M> {
    /// The map, to read.
    pub fn map(&self) -> &M {
        match self {
            StageInput::Borrowed(map) => map,
            StageInput::Last(_, map) => map,
        }
    }

    /// Gives the map to `executor` to release when this stage was its last reader. (Dropping a
    /// `Last` input instead frees it: correct, but a pool does not get the buffer back.)
    pub fn release<E: StageExecutor<Map = M> + ?Sized>(self, executor: &mut E) {
        if let StageInput::Last(stage, map) = self {
            executor.release(stage, map);
        }
    }
}

/// What runs the plan's stages on its own kind of feature map.
pub trait StageExecutor {
    /// What the network reads (a normalised image or batch).
    type Input;
    /// A feature map between stages.
    type Map;
    /// What the head makes of the classifier's scores.
    type Output;

    /// The global feature extractor's bottleneck groups (three in every preset).
    fn bottleneck_groups(&self) -> usize;
    /// Runs [`Stage::LearningToDownsample`] on the network's input.
    fn learning_to_downsample(&mut self, input: Self::Input) -> Result<Self::Map>;
    /// Runs [`Stage::BottleneckGroup`] `group` on the previous group's output (the first, on
    /// the higher-resolution features), which it releases once read.
    fn bottleneck_group(&mut self, group: usize, x: StageInput<'_, Self::Map>)
        -> Result<Self::Map>;
    /// Runs [`Stage::PyramidPooling`] on the last group's output.
    fn pyramid_pooling(&mut self, x: &Self::Map) -> Result<Self::Map>;
    /// Runs [`Stage::FeatureFusion`].
    fn feature_fusion(&mut self, higher_res: &Self::Map, global: &Self::Map) -> Result<Self::Map>;
    /// Runs [`Stage::Classifier`] on the fused features.
    fn classifier(&mut self, fused: &Self::Map) -> Result<Self::Map>;
    /// The last stage: the 1/8-resolution scores to the output asked for. The scores are the
    /// head's: the plan never releases them, so a head that lends its maps from a pool gives
    /// them back itself.
    fn head(&mut self, scores: Self::Map) -> Result<Self::Output>;
    /// Which stage [`Self::head`] is, for its timing.
    fn head_stage(&self) -> Stage;
    /// Takes back `map`, the output of `stage`, once the plan no longer reads it: a buffer pool
    /// lends it again, a caller that wants the intermediates keeps it.
    fn release(&mut self, stage: Stage, map: Self::Map);
    /// Waits for the work queued on the device, so that a timed stage's time is its own.
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Runs the whole network on `input` through `executor`, timing every stage into `timer` when
/// one is given (the device synchronised after each).
///
/// Each intermediate is released as soon as the last stage reading it has read it: a bottleneck
/// group's input by the group, the higher-resolution features after feature fusion, every other
/// map after the stage after it.
pub fn run_plan<E: StageExecutor>(
    executor: &mut E,
    input: E::Input,
    mut timer: Option<StageTimer<'_>>,
) -> Result<E::Output> {
    let higher_res = timed(executor, &mut timer, Stage::LearningToDownsample, |e| {
        e.learning_to_downsample(input)
    })?;
    let mut lower: Option<(Stage, E::Map)> = None;
    for group in 0..executor.bottleneck_groups() {
        let stage = Stage::BottleneckGroup(group);
        let x = match lower.take() {
            Some((made_by, map)) => StageInput::Last(made_by, map),
            None => StageInput::Borrowed(&higher_res),
        };
        let out = timed(executor, &mut timer, stage, |e| {
            e.bottleneck_group(group, x)
        })?;
        lower = Some((stage, out));
    }
    let global = timed(executor, &mut timer, Stage::PyramidPooling, |e| {
        e.pyramid_pooling(lower.as_ref().map_or(&higher_res, |(_, map)| map))
    })?;
    if let Some((done, map)) = lower {
        executor.release(done, map);
    }
    let fused = timed(executor, &mut timer, Stage::FeatureFusion, |e| {
        e.feature_fusion(&higher_res, &global)
    })?;
    executor.release(Stage::PyramidPooling, global);
    executor.release(Stage::LearningToDownsample, higher_res);
    let scores = timed(executor, &mut timer, Stage::Classifier, |e| {
        e.classifier(&fused)
    })?;
    executor.release(Stage::FeatureFusion, fused);
    let head = executor.head_stage();
    timed(executor, &mut timer, head, |e| e.head(scores))
}

/// `run` on `executor`, its time (the device synchronised) given to `timer` as `stage`'s.
fn timed<E: StageExecutor, T>(
    executor: &mut E,
    timer: &mut Option<StageTimer<'_>>,
    stage: Stage,
    run: impl FnOnce(&mut E) -> Result<T>,
) -> Result<T> {
    let Some(timer) = timer else {
        return run(executor);
    };
    let start = Instant::now();
    let out = run(executor)?;
    executor.synchronize()?;
    timer(stage, start.elapsed());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps are the names of the stages that made them, so the plan's data flow can be read back.
    #[derive(Default)]
    struct Trace {
        events: Vec<String>,
    }

    impl StageExecutor for Trace {
        type Input = &'static str;
        type Map = String;
        type Output = String;

        fn bottleneck_groups(&self) -> usize {
            3
        }
        fn learning_to_downsample(&mut self, input: &'static str) -> Result<String> {
            Ok(format!("ltd({input})"))
        }
        fn bottleneck_group(&mut self, group: usize, x: StageInput<'_, String>) -> Result<String> {
            let out = format!("g{group}({})", x.map());
            self.events.push(format!("read by group {}", group + 1));
            x.release(self);
            Ok(out)
        }
        fn pyramid_pooling(&mut self, x: &String) -> Result<String> {
            Ok(format!("ppm({x})"))
        }
        fn feature_fusion(&mut self, higher_res: &String, global: &String) -> Result<String> {
            Ok(format!("ff({higher_res}, {global})"))
        }
        fn classifier(&mut self, fused: &String) -> Result<String> {
            Ok(format!("cls({fused})"))
        }
        fn head(&mut self, scores: String) -> Result<String> {
            Ok(format!("up({scores})"))
        }
        fn head_stage(&self) -> Stage {
            Stage::UpsampleArgmax
        }
        fn release(&mut self, stage: Stage, map: String) {
            self.events
                .push(format!("release {}: {}", stage.name(), map.len()));
        }
    }

    #[test]
    fn the_plan_runs_the_paper_order_and_releases_each_map_after_its_last_reader() {
        let mut trace = Trace::default();
        let mut times = Vec::new();
        let mut timer = |stage: Stage, _| times.push(stage.name());
        let out = run_plan(&mut trace, "x", Some(&mut timer)).unwrap();
        assert_eq!(
            out, "up(cls(ff(ltd(x), ppm(g2(g1(g0(ltd(x))))))))",
            "data flow"
        );
        assert_eq!(
            times,
            [
                "learning to downsample",
                "bottleneck group 1",
                "bottleneck group 2",
                "bottleneck group 3",
                "pyramid pooling",
                "feature fusion",
                "classifier",
                "resize + argmax",
            ]
        );
        let events: Vec<&str> = trace
            .events
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        // A group's input goes back as soon as the group has read it; the higher-resolution
        // features only after feature fusion.
        assert_eq!(
            events,
            [
                "read by group 1",
                "read by group 2",
                "release bottleneck group 1",
                "read by group 3",
                "release bottleneck group 2",
                "release bottleneck group 3",
                "release pyramid pooling",
                "release learning to downsample",
                "release feature fusion",
            ]
        );
        // Without a timer nothing is timed and the result is the same.
        let mut again = Trace::default();
        assert_eq!(run_plan(&mut again, "x", None).unwrap(), out);
    }
}

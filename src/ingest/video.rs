//! A stream's video thread: takes the newest frames from the drop-oldest queue through the
//! vision stage (faces, tracks, expression) into the stream's face store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::{DropOldest, Pop};
use super::{Shared, VisionIngest};
use crate::vision::Frame;

pub(super) fn video_loop(
    q: Arc<DropOldest<Frame>>,
    shared: Arc<Shared>,
    vision: Option<VisionIngest>,
) {
    let mut stage = vision.as_ref().map(|v| {
        crate::vision::stage::VisionStage::new(
            v.models.fork(),
            v.settings.cadence(),
            v.settings.track.clone(),
        )
    });
    let mut failures = 0u64;
    loop {
        let frame = match q.pop(Duration::from_millis(200)) {
            Pop::Item(f) => f,
            Pop::Empty => continue,
            Pop::Closed => return,
        };
        shared.metrics.video_frame();
        let (Some(stage), Some(visual)) = (stage.as_mut(), shared.stream.visual()) else {
            continue;
        };
        let t0 = Instant::now();
        let result = stage.process(frame.t, &frame.image);
        match result {
            Ok(f) => {
                shared
                    .metrics
                    .vision_frame(t0.elapsed().as_secs_f64(), f.faces.len());
                visual.push(&f);
            }
            Err(e) => {
                // A bad frame loses that frame only; the log is rate-limited.
                failures += 1;
                shared.metrics.vision_error();
                if failures.is_power_of_two() {
                    tracing::warn!(stream = %shared.id(), error = %e, failures, "Vision stage failed on a frame");
                }
            }
        }
    }
}

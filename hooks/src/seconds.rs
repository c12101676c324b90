//! Durations as people read them, in messages and the printed plan.

use std::fmt;
use std::time::Duration;

/// Durations as people read them: `1.5s`, `250ms`.
pub struct Seconds(pub Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        }
    }
}

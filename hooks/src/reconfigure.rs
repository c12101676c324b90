//! Reconfigure hooks (Habitat's reconfigure, Nomad's template `change_mode`): a handler run
//! when files the container reads its configuration from change, instead of a restart.
//!
//! A burst of changes runs the handler once, after `debounce` without a further change; a
//! change while the handler runs makes it run once more after it ends (never two at once); no
//! change, no run. What counts as a change, and where the files are, is the front end's: it
//! hands the changed paths over through [`Changes`].

use std::future::Future;
use std::pin::pin;

use tokio::time::{sleep_until, Instant};

use crate::container::{Container, Phase};
use crate::engine::{run_hook_for, HookReport};
use crate::plan::Reconfigure;

/// The most changed paths a run's report names; the rest are counted.
const MAX_NAMED_CHANGES: usize = 8;

/// Changes under the watched paths, as they happen.
pub trait Changes {
    /// The next changed paths (as the container sees them); `None` once no change can come
    /// any more (the watched volumes are gone). Dropping the future loses no change.
    fn next(&mut self) -> impl Future<Output = Option<Vec<String>>>;
}

/// Runs the handler for each burst of changes, handing every run's report to `observe`.
/// Returns a failed run's report when the spec asks that a failure stop the container;
/// otherwise only when no change can come any more. Callers drop it to stop watching.
pub async fn watch_reconfigure<C: Container>(
    c: &C,
    r: &Reconfigure,
    changes: &mut impl Changes,
    mut observe: impl FnMut(&HookReport),
) -> Option<HookReport> {
    let mut burst = Burst {
        pending: Pending::default(),
        last_change: Instant::now(),
        open: true,
    };
    loop {
        // Wait for a change, then for the burst to end: `debounce` without another.
        while burst.open && burst.pending.is_empty() {
            burst.take(changes.next().await);
        }
        if burst.pending.is_empty() {
            return None;
        }
        while burst.open {
            tokio::select! {
                biased;
                more = changes.next() => burst.take(more),
                () = sleep_until(burst.last_change + r.debounce) => break,
            }
        }
        // One run at a time: changes meanwhile are kept for the next.
        let changed = std::mem::take(&mut burst.pending).summary();
        let mut run = pin!(run_hook_for(
            c,
            Phase::Reconfigure,
            &r.hook,
            None,
            Some(changed)
        ));
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                more = changes.next(), if burst.open => burst.take(more),
            }
        };
        observe(&report);
        if r.stop_on_failure && report.failed() {
            return Some(report);
        }
    }
}

/// The changes not run for yet, when the last came, and whether more can come.
struct Burst {
    pending: Pending,
    last_change: Instant,
    open: bool,
}

impl Burst {
    /// Takes what [`Changes::next`] gave: changed paths, or the end of the changes.
    fn take(&mut self, changed: Option<Vec<String>>) {
        match changed {
            Some(paths) => {
                self.pending.add(paths);
                self.last_change = Instant::now();
            }
            None => self.open = false,
        }
    }
}

/// The changed paths since the last run, each once, in the order they first changed: the
/// first few by name, the rest counted (a change of thousands of files is not kept in
/// memory).
#[derive(Default)]
struct Pending {
    paths: Vec<String>,
    more: usize,
}

impl Pending {
    fn add(&mut self, paths: Vec<String>) {
        for path in paths {
            if self.paths.contains(&path) {
                continue;
            }
            if self.paths.len() < MAX_NAMED_CHANGES {
                self.paths.push(path);
            } else {
                self.more += 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The paths for a report: the first few, and how many more changes.
    fn summary(self) -> String {
        let named = self.paths.join(", ");
        match self.more {
            0 => named,
            more => format!("{named} and {more} more"),
        }
    }
}

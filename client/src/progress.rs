//! Progress bars while a job runs: parts done of the total for the mode running, one
//! bar per server in the pool mode, and bytes shipped for jobs with input data.
//!
//! Bars are drawn on standard error, and only when standard output is a terminal and
//! `--quiet` was not given: a table, JSON or CSV piped into a file or another program
//! never has a bar mixed into it, and neither does a log captured from standard error.
//! A hidden [`Progress`] still takes every call, so the code that runs the modes does
//! not care whether anyone is watching.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the pool mode tells whoever watches it. Every method has an empty default, so
/// an observer implements only what it shows.
pub trait PoolObserver: Sync {
    /// The servers parts will go to, each with how many when that is decided up front
    /// (the static schedule); `None` when parts go out as servers free up.
    fn placed(&self, _servers: &[(String, Option<usize>)]) {}
    /// The last byte of a part (`bytes` of input data) was written to `server`.
    fn part_sent(&self, _server: &str, _bytes: u64) {}
    /// `server` answered a part with its result.
    fn part_done(&self, _server: &str) {}
}

/// An observer that ignores everything.
pub struct NoProgress;

impl PoolObserver for NoProgress {}

/// Whether progress bars can be shown: standard output is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The progress display of one whole run (every mode, every repeat).
pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    /// A display drawn on standard error if `visible`, or one that draws nothing.
    pub fn new(visible: bool) -> Progress {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A display that draws nothing.
    pub fn hidden() -> Progress {
        Progress::new(false)
    }

    /// Starts the bars of one run of one mode: `label` says which (e.g. "threaded,
    /// run 2/5"), `parts` how many parts it computes, `bytes` how many input bytes the
    /// pool ships (0 for none, or for modes that ship nothing).
    pub fn mode(&self, label: &str, parts: u64, bytes: u64) -> ModeProgress {
        let main = self.multi.add(
            ProgressBar::new(parts)
                .with_style(style(
                    "{prefix:<28} [{bar:30}] {pos}/{len} parts  {elapsed} (eta {eta})",
                ))
                .with_prefix(label.to_string()),
        );
        main.enable_steady_tick(Duration::from_millis(200));
        let bytes = (bytes > 0).then(|| {
            self.multi.add(
                ProgressBar::new(bytes)
                    .with_style(style(
                        "{prefix:<28} [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}",
                    ))
                    .with_prefix("  data sent"),
            )
        });
        ModeProgress {
            multi: self.multi.clone(),
            main,
            bytes,
            servers: Mutex::new(Vec::new()),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the progress templates are valid")
        .progress_chars("=> ")
}

/// The bars of one run of one mode; cleared when dropped.
pub struct ModeProgress {
    multi: MultiProgress,
    main: ProgressBar,
    bytes: Option<ProgressBar>,
    servers: Mutex<Vec<(String, ProgressBar)>>,
}

impl ModeProgress {
    /// The bar counting parts, to move from another thread (`inc(1)` per part done).
    pub fn parts_bar(&self) -> ProgressBar {
        self.main.clone()
    }
}

impl PoolObserver for ModeProgress {
    fn placed(&self, servers: &[(String, Option<usize>)]) {
        let mut bars = self.servers.lock().expect("progress lock poisoned");
        for (address, count) in servers {
            let bar = match count {
                Some(count) => ProgressBar::new(*count as u64)
                    .with_style(style("{prefix:<28} [{bar:30}] {pos}/{len} parts")),
                None => ProgressBar::no_length().with_style(style("{prefix:<28} {pos} parts")),
            };
            let bar = self.multi.add(bar.with_prefix(format!("  {address}")));
            bars.push((address.clone(), bar));
        }
    }

    fn part_sent(&self, _server: &str, bytes: u64) {
        if let Some(bar) = &self.bytes {
            bar.inc(bytes);
        }
    }

    fn part_done(&self, server: &str) {
        self.main.inc(1);
        let bars = self.servers.lock().expect("progress lock poisoned");
        if let Some((_, bar)) = bars.iter().find(|(address, _)| address == server) {
            bar.inc(1);
        }
    }
}

impl Drop for ModeProgress {
    fn drop(&mut self) {
        self.main.finish_and_clear();
        self.multi.remove(&self.main);
        if let Some(bar) = &self.bytes {
            bar.finish_and_clear();
            self.multi.remove(bar);
        }
        for (_, bar) in self.servers.lock().expect("progress lock poisoned").iter() {
            bar.finish_and_clear();
            self.multi.remove(bar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_display_takes_every_call() {
        let progress = Progress::hidden();
        let mode = progress.mode("pool", 2, 16);
        mode.placed(&[("a:1".to_string(), Some(2)), ("b:2".to_string(), None)]);
        mode.part_sent("a:1", 16);
        mode.part_done("a:1");
        mode.parts_bar().inc(1);
        assert_eq!(mode.parts_bar().position(), 2);
    }
}

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
    /// Parts have been placed: each server that got any, with how many.
    fn placed(&self, _servers: &[(String, usize)]) {}
    /// The last byte of a part (`bytes` of input data) was written to `server`.
    fn part_sent(&self, _server: &str, _bytes: u64) {}
    /// `server` answered a part with its result.
    fn part_done(&self, _server: &str) {}
}

/// An observer that ignores everything.
pub struct NoProgress;

impl PoolObserver for NoProgress {}

/// How many of the `placed` parts (server indices) each server in `servers` got,
/// leaving out servers that got none.
pub fn placement_counts(servers: &[String], placed: &[usize]) -> Vec<(String, usize)> {
    servers
        .iter()
        .enumerate()
        .map(|(i, address)| (address.clone(), placed.iter().filter(|&&s| s == i).count()))
        .filter(|(_, count)| *count > 0)
        .collect()
}

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
    fn placed(&self, servers: &[(String, usize)]) {
        let mut bars = self.servers.lock().expect("progress lock poisoned");
        for (address, count) in servers {
            let bar = self.multi.add(
                ProgressBar::new(*count as u64)
                    .with_style(style("{prefix:<28} [{bar:30}] {pos}/{len} parts"))
                    .with_prefix(format!("  {address}")),
            );
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
    fn counts_parts_per_server() {
        let servers = vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()];
        assert_eq!(
            placement_counts(&servers, &[0, 2, 0, 0]),
            vec![("a:1".to_string(), 3), ("c:3".to_string(), 1)]
        );
    }

    #[test]
    fn a_hidden_display_takes_every_call() {
        let progress = Progress::hidden();
        let mode = progress.mode("pool", 2, 16);
        mode.placed(&[("a:1".to_string(), 2)]);
        mode.part_sent("a:1", 16);
        mode.part_done("a:1");
        mode.parts_bar().inc(1);
        assert_eq!(mode.parts_bar().position(), 2);
    }
}

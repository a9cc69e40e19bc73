//! What a server reports about its machine's load, for `pool-client status` and for
//! clients that place parts on the least loaded server.
//!
//! Two readings need time and run in the background from start-up: the share of CPU
//! time left idle, sampled from `/proc/stat` about once a second, and a calibration run
//! of the loop kernel (a few milliseconds on one worker-sized thread) that gives the
//! server's speed. The load average and available memory are read when asked. On a
//! system without `/proc` the readings are `None`: the protocol says "unknown" rather
//! than a made-up number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::CancelFlag;

/// A reading not taken yet, or not available on this system.
const UNKNOWN: u64 = u64::MAX;

/// Iterations of one calibration run; the fastest of [`CALIBRATION_RUNS`] counts.
const CALIBRATION_ITERATIONS: u64 = 1 << 20;
const CALIBRATION_RUNS: usize = 3;

/// How often the idle share is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The background readings, shared by the sampler and every connection.
#[derive(Debug)]
pub struct LoadMonitor {
    cpu_idle_milli: AtomicU64,
    loop_picos_per_iteration: AtomicU64,
}

impl LoadMonitor {
    /// Starts the calibration run and the idle-share sampler on their own thread. The
    /// thread ends when the last [`Arc`] to the monitor is dropped.
    pub fn start() -> Arc<LoadMonitor> {
        let monitor = Arc::new(LoadMonitor {
            cpu_idle_milli: AtomicU64::new(UNKNOWN),
            loop_picos_per_iteration: AtomicU64::new(UNKNOWN),
        });
        let weak = Arc::downgrade(&monitor);
        std::thread::Builder::new()
            .name("pool-load".into())
            .spawn(move || {
                if let Some(monitor) = weak.upgrade() {
                    monitor
                        .loop_picos_per_iteration
                        .store(calibrate(), Ordering::Relaxed);
                }
                let mut previous = read_cpu_times();
                loop {
                    std::thread::sleep(SAMPLE_INTERVAL);
                    let Some(monitor) = weak.upgrade() else {
                        return;
                    };
                    let now = read_cpu_times();
                    if let (Some(before), Some(after)) = (previous, now) {
                        if let Some(idle) = idle_milli(before, after) {
                            monitor.cpu_idle_milli.store(idle, Ordering::Relaxed);
                        }
                    }
                    previous = now;
                }
            })
            .expect("cannot start the load sampler thread");
        monitor
    }

    /// The idle share of the machine's CPU time over the last interval, in thousandths.
    pub fn cpu_idle_milli(&self) -> Option<u32> {
        known(self.cpu_idle_milli.load(Ordering::Relaxed)).map(|v| v as u32)
    }

    /// The loop kernel's speed measured at start-up, in picoseconds per iteration.
    pub fn loop_picos_per_iteration(&self) -> Option<u64> {
        known(self.loop_picos_per_iteration.load(Ordering::Relaxed))
    }
}

fn known(value: u64) -> Option<u64> {
    (value != UNKNOWN).then_some(value)
}

/// The fastest of a few short runs of the loop kernel, in picoseconds per iteration.
fn calibrate() -> u64 {
    let cancel = CancelFlag::new();
    (0..CALIBRATION_RUNS)
        .map(|run| {
            let lo = run as u64 * CALIBRATION_ITERATIONS;
            let part = LoopPart {
                lo,
                hi: lo + CALIBRATION_ITERATIONS,
            };
            let started = Instant::now();
            std::hint::black_box(part.compute(&cancel).expect("never cancelled"));
            started.elapsed().as_nanos() as u64 * 1000 / CALIBRATION_ITERATIONS
        })
        .min()
        .unwrap_or(UNKNOWN)
        .max(1)
}

/// Idle and total CPU time from the first line of `/proc/stat`, in clock ticks.
fn read_cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_times(stat.lines().next()?)
}

/// Reads `cpu  user nice system idle iowait irq softirq steal ...`: idle counts idle
/// and iowait; the total is every field.
fn parse_cpu_times(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if values.len() < 5 {
        return None;
    }
    Some((values[3] + values[4], values.iter().sum()))
}

fn idle_milli((idle_before, total_before): (u64, u64), (idle, total): (u64, u64)) -> Option<u64> {
    let total = total.checked_sub(total_before).filter(|&t| t > 0)?;
    let idle = idle.checked_sub(idle_before)?;
    Some((idle * 1000 / total).min(1000))
}

/// The 1-minute load average, in thousandths, from `/proc/loadavg`.
pub fn load_average_milli() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let first: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((first * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn memory_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_and_idle_share() {
        let before = parse_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0").unwrap();
        assert_eq!(before, (800, 1000));
        let after = parse_cpu_times("cpu  800 0 100 1000 100 0 0 0 0 0").unwrap();
        assert_eq!(idle_milli(before, after), Some(300));
        assert_eq!(idle_milli(after, after), None);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4 5"), None);
        assert_eq!(parse_cpu_times("cpu 1 2 x 4 5"), None);
    }

    #[test]
    fn available_memory() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn the_monitor_calibrates() {
        let monitor = LoadMonitor::start();
        let deadline = Instant::now() + Duration::from_secs(60);
        while monitor.loop_picos_per_iteration().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let picos = monitor.loop_picos_per_iteration().expect("calibrated");
        // An iteration is a few nanoseconds on any machine this runs on, even in a
        // debug build; a microsecond would mean the measurement is broken.
        assert!(
            (100..1_000_000).contains(&picos),
            "{picos} ps per iteration"
        );
    }
}

//! The stalls of the CPUs a benchmark runs on, measured beside it: one thread per CPU,
//! pinned there at the highest real-time priority (through `chrt`, when the process may),
//! wakes every millisecond and notes how late it woke. Nothing in the machine preempts
//! it, so a late wake-up is time that CPU ran nothing of ours: the hypervisor had paused
//! the virtual CPU, or the kernel held it. A relay's delays are read beside them.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, ClockNanosleepFlags, clock_gettime, clock_nanosleep};
use nix::unistd::{Pid, gettid};

/// How often each probe wakes.
const PERIOD: Duration = Duration::from_millis(1);

/// A wake-up later than this counts as a stall.
pub const STALL_OVER: Duration = Duration::from_micros(200);

/// What one CPU's probe saw.
#[derive(Debug, Clone)]
pub struct CpuStalls {
    pub cpu: usize,
    /// Whether the probe ran at real-time priority (else its own wake-ups may wait for
    /// other threads, and count as stalls).
    pub realtime: bool,
    /// How late each wake-up was (µs).
    pub lateness: Vec<u32>,
}

impl CpuStalls {
    /// Wake-ups later than [`STALL_OVER`].
    pub fn stalls(&self) -> usize {
        let over = STALL_OVER.as_micros() as u32;
        self.lateness.iter().filter(|l| **l > over).count()
    }

    /// Time lost in stalls: how late the late wake-ups were, in all.
    pub fn stalled(&self) -> Duration {
        let over = STALL_OVER.as_micros() as u32;
        let micros: u64 = self
            .lateness
            .iter()
            .filter(|l| **l > over)
            .map(|l| u64::from(*l))
            .sum();
        Duration::from_micros(micros)
    }
}

/// The probes, running until [`StallProbe::stop`].
#[derive(Debug)]
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<CpuStalls>>>,
}

impl StallProbe {
    pub fn start(cpus: &[usize]) -> anyhow::Result<StallProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &cpu in cpus {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("stall-probe-{cpu}"))
                    .spawn(move || probe(cpu, &stop))?,
            );
        }
        Ok(StallProbe { stop, threads })
    }

    pub fn stop(self) -> anyhow::Result<Vec<CpuStalls>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for t in self.threads {
            seen.push(
                t.join()
                    .map_err(|_| anyhow::anyhow!("stall probe panicked"))??,
            );
        }
        Ok(seen)
    }
}

fn probe(cpu: usize, stop: &AtomicBool) -> anyhow::Result<CpuStalls> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("the stall probe cannot run on CPU {cpu}"))?;
    // `chrt -p` acts on a thread id: this thread alone becomes real-time.
    let realtime = Command::new("chrt")
        .args(["-f", "-p", "99", &gettid().to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = nix::sys::prctl::set_timerslack(1);
    let period = TimeSpec::from_duration(PERIOD);
    let mut lateness = Vec::new();
    let mut due = clock_gettime(ClockId::CLOCK_MONOTONIC)? + period;
    while !stop.load(Ordering::Relaxed) {
        match clock_nanosleep(
            ClockId::CLOCK_MONOTONIC,
            ClockNanosleepFlags::TIMER_ABSTIME,
            &due,
        ) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let woke = clock_gettime(ClockId::CLOCK_MONOTONIC)?;
        lateness.push(Duration::from(woke - due).as_micros() as u32);
        due = due + period;
        if due < woke {
            due = woke + period;
        }
    }
    Ok(CpuStalls {
        cpu,
        realtime,
        lateness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_late_wake_ups_count_as_stalls() {
        let seen = CpuStalls {
            cpu: 0,
            realtime: true,
            lateness: vec![5, 150, 1_000, 3_000],
        };
        assert_eq!(seen.stalls(), 2);
        assert_eq!(seen.stalled(), Duration::from_micros(4_000));
    }

    #[test]
    fn a_probe_measures_its_cpu_and_stops() {
        let probe = StallProbe::start(&[0]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let seen = probe.stop().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].cpu, 0);
        assert!(!seen[0].lateness.is_empty());
    }
}

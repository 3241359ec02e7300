//! The CPU seconds and memory of a process over a measured phase, from `/proc` (the same inside a
//! network namespace: it is the same process table).

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Serialize;

/// Clock ticks per second of the CPU times in `/proc` (`getconf CLK_TCK`; 100, Linux's value,
/// if that fails), asked once.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of process `pid` (all its threads) since it started, from
/// `/proc/<pid>/stat`; `None` once the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) is in parentheses and may hold spaces: count from its end. After
    // it, the state is field 3, utime field 14 and stime field 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A field of `/proc/<pid>/status` in KiB (`"VmRSS:"`, `"VmHWM:"`); `None` once the process is
/// gone (or has no memory left: a zombie).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What a process had used at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident set since the process started (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
}

impl Usage {
    /// Reads process `pid` now; `None` once it is gone.
    pub fn read(pid: u32) -> Option<Usage> {
        Some(Usage {
            cpu_seconds: cpu_seconds(pid)?,
            peak_rss_kib: status_kib(pid, "VmHWM:")?,
            rss_kib: status_kib(pid, "VmRSS:")?,
        })
    }
}

/// CPU seconds and peak RSS of one process over a measured phase: the CPU it spent from
/// [`Meter::start`] to the last [`Meter::sample`] (its start-up before is not counted), and the
/// highest `VmHWM` read. A process that is started again ([`Meter::restarted`]) is counted from
/// its new start, every incarnation added up.
#[derive(Clone, Debug)]
pub struct Meter {
    name: String,
    pid: u32,
    /// CPU seconds of the current incarnation not counted (what it spent before the phase).
    base_cpu: f64,
    /// CPU seconds of the earlier incarnations, over the phase.
    done_cpu: f64,
    /// The last reading of the current incarnation.
    last: Option<Usage>,
    peak_rss_kib: u64,
    starts: u32,
    gone: bool,
}

impl Meter {
    /// Starts measuring process `pid` (called `name` in reports) now.
    pub fn start(name: &str, pid: u32) -> Meter {
        let now = Usage::read(pid);
        Meter {
            name: name.to_owned(),
            pid,
            base_cpu: now.map_or(0.0, |u| u.cpu_seconds),
            done_cpu: 0.0,
            last: now,
            peak_rss_kib: now.map_or(0, |u| u.peak_rss_kib),
            starts: 1,
            gone: now.is_none(),
        }
    }

    /// Reads the process now. Once it is gone, the figures stay those of the last reading.
    pub fn sample(&mut self) -> Option<Usage> {
        let now = Usage::read(self.pid);
        match now {
            Some(u) => {
                self.peak_rss_kib = self.peak_rss_kib.max(u.peak_rss_kib);
                self.last = Some(u);
                self.gone = false;
            }
            None => self.gone = true,
        }
        now
    }

    /// The process was started again as `pid` (sample the old one just before it is stopped):
    /// the new one counts from its start, since starting again is part of the measured work.
    pub fn restarted(&mut self, pid: u32) {
        self.done_cpu += self.phase_cpu();
        self.pid = pid;
        self.base_cpu = 0.0;
        self.last = None;
        self.starts += 1;
        self.sample();
    }

    fn phase_cpu(&self) -> f64 {
        self.last
            .map_or(0.0, |u| (u.cpu_seconds - self.base_cpu).max(0.0))
    }

    /// The figures so far, as of the last reading.
    pub fn usage(&self) -> ProcessUsage {
        ProcessUsage {
            name: self.name.clone(),
            cpu_seconds: self.done_cpu + self.phase_cpu(),
            peak_rss_kib: self.peak_rss_kib,
            rss_kib: self.last.map_or(0, |u| u.rss_kib),
            starts: self.starts,
            gone: self.gone,
        }
    }
}

/// One process's resource use over a measured phase (see [`Meter`]).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    /// The process, as reports name it.
    pub name: String,
    /// User + system CPU seconds (all threads) over the phase.
    pub cpu_seconds: f64,
    /// The highest `VmHWM` read, KiB (since the process started: start-up included).
    pub peak_rss_kib: u64,
    /// `VmRSS` at the last reading, KiB.
    pub rss_kib: u64,
    /// Processes counted: 1, or more when it was started again during the phase.
    pub starts: u32,
    /// The process was gone at the last reading: its figures are those of the reading before.
    pub gone: bool,
}

impl ProcessUsage {
    /// `CPU s / peak RSS`, for a Markdown cell: `4.21 s / 81.3 MiB`.
    pub fn cell(&self) -> String {
        format!("{:.2} s / {}", self.cpu_seconds, mib(self.peak_rss_kib))
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

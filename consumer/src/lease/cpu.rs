//! The worker's CPU utilisation in percent, read as the Java KCL 3.x reads it
//! (`LinuxCpuWorkerMetric`, `Cgroupv1CpuWorkerMetric`, `Cgroupv2CpuWorkerMetric`):
//!
//! - **cgroup v2**: `usage_usec` of `/sys/fs/cgroup/cpu.stat` over wall time, divided by the
//!   CPU limit of `cpu.max` (`$MAX $PERIOD`; `max`: the number of CPUs in
//!   `cpuset.cpus.effective`).
//! - **cgroup v1**: `cpuacct.usage` (nanoseconds) over wall time, divided by
//!   `cpu.cfs_quota_us / cpu.cfs_period_us` (quota -1: the CPUs of `cpuset.effective_cpus`).
//!   The KCL reads `cpu/cpuacct.usage`; where `cpu` and `cpuacct` are mounted apart, as here,
//!   `cpuacct/cpuacct.usage` is read instead.
//! - **`/proc/stat`**: the machine's first `cpu` line; busy = (user + nice + system) of the
//!   total (user + nice + system + idle + iowait) between two samples.
//!
//! As in the KCL, the first sample (nothing to compare with) and a `/proc/stat` line that did
//! not change read 0, and a cgroup value is capped at 100. The KCL's ECS variant (task
//! metadata over HTTP) is not read: an ECS task's container has the cgroup files too.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kinesis_common::config::CpuSource;

/// A CPU file could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CpuError {
    pub path: String,
    pub reason: String,
}

/// Which files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    CgroupV2,
    CgroupV1,
    ProcStat,
}

impl Reader {
    pub fn name(self) -> &'static str {
        match self {
            Reader::CgroupV2 => "cgroup-v2",
            Reader::CgroupV1 => "cgroup-v1",
            Reader::ProcStat => "proc",
        }
    }
}

/// Samples one [`Reader`]; keeps the previous sample to compare with.
#[derive(Debug)]
pub struct CpuSampler {
    reader: Reader,
    root: PathBuf,
    /// CPUs the cgroup may use (read once, as the KCL does).
    limit: Option<f64>,
    last: Option<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
enum Sample {
    /// CPU time used (µs) and wall time (µs).
    Cgroup {
        used_us: f64,
        wall_us: f64,
    },
    Proc {
        line: String,
        times: ProcTimes,
    },
}

/// The fields of the first `/proc/stat` line the KCL uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimes {
    /// user + nice
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
}

impl ProcTimes {
    fn total(&self) -> u64 {
        self.user + self.system + self.idle + self.iowait
    }
}

impl CpuSampler {
    /// The sampler `source` asks for, under `root` (`/` outside tests). `Auto` takes the first
    /// reader whose files can be read; `None` when there is none (or `source` is `None`):
    /// the worker then publishes no CPU.
    pub fn new(source: CpuSource, root: &Path) -> Result<Option<Self>, CpuError> {
        let candidates: &[Reader] = match source {
            // `kcl` is resolved to one of the others by `platform::detect` before this (and a
            // source this version does not know publishes no CPU).
            CpuSource::None | CpuSource::Kcl => return Ok(None),
            CpuSource::Auto => &[Reader::CgroupV2, Reader::CgroupV1, Reader::ProcStat],
            CpuSource::CgroupV2 => &[Reader::CgroupV2],
            CpuSource::CgroupV1 => &[Reader::CgroupV1],
            CpuSource::ProcStat => &[Reader::ProcStat],
            _ => return Ok(None),
        };
        let mut last_error = None;
        for reader in candidates {
            let mut sampler = Self {
                reader: *reader,
                root: root.to_path_buf(),
                limit: None,
                last: None,
            };
            match sampler.sample() {
                Ok(_) => return Ok(Some(sampler)),
                Err(err) => last_error = Some(err),
            }
        }
        match (source, last_error) {
            (CpuSource::Auto, _) | (_, None) => Ok(None),
            (_, Some(err)) => Err(err),
        }
    }

    pub fn reader(&self) -> Reader {
        self.reader
    }

    /// The utilisation since the previous sample, in percent (0 for the first).
    pub fn sample(&mut self) -> Result<f64, CpuError> {
        let current = match self.reader {
            Reader::ProcStat => {
                let path = self.root.join("proc/stat");
                let text = read(&path)?;
                let line = text.lines().next().unwrap_or_default().to_string();
                let times = parse_proc_stat_line(&line).ok_or_else(|| bad(&path, "no cpu line"))?;
                Sample::Proc { line, times }
            }
            Reader::CgroupV2 => {
                if self.limit.is_none() {
                    self.limit = Some(self.v2_limit()?);
                }
                let path = self.root.join("sys/fs/cgroup/cpu.stat");
                let used_us =
                    parse_usage_usec(&read(&path)?).ok_or_else(|| bad(&path, "no usage_usec"))?;
                Sample::Cgroup {
                    used_us: used_us as f64,
                    wall_us: wall_micros(),
                }
            }
            Reader::CgroupV1 => {
                if self.limit.is_none() {
                    self.limit = Some(self.v1_limit()?);
                }
                let path = self.first_existing(&[
                    "sys/fs/cgroup/cpu/cpuacct.usage",
                    "sys/fs/cgroup/cpuacct/cpuacct.usage",
                    "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage",
                ]);
                let used_ns: u64 = read(&path)?
                    .trim()
                    .parse()
                    .map_err(|_| bad(&path, "not a number"))?;
                Sample::Cgroup {
                    used_us: used_ns as f64 / 1000.0,
                    wall_us: wall_micros(),
                }
            }
        };
        let previous = self.last.replace(current.clone());
        Ok(match (previous, &current) {
            (
                Some(Sample::Proc { line, times }),
                Sample::Proc {
                    line: now_line,
                    times: now,
                },
            ) => {
                if line == *now_line {
                    0.0
                } else {
                    proc_utilisation(&times, now)
                }
            }
            (
                Some(Sample::Cgroup { used_us, wall_us }),
                Sample::Cgroup {
                    used_us: now_used,
                    wall_us: now_wall,
                },
            ) => cgroup_utilisation(
                now_used - used_us,
                now_wall - wall_us,
                self.limit.unwrap_or(1.0),
            ),
            _ => 0.0,
        })
    }

    fn first_existing(&self, candidates: &[&str]) -> PathBuf {
        candidates
            .iter()
            .map(|c| self.root.join(c))
            .find(|p| p.exists())
            .unwrap_or_else(|| self.root.join(candidates[0]))
    }

    fn v2_limit(&self) -> Result<f64, CpuError> {
        let path = self.root.join("sys/fs/cgroup/cpu.max");
        match parse_cpu_max(&read(&path)?) {
            Some(Some(limit)) => Ok(limit),
            Some(None) => self.cpuset(&self.root.join("sys/fs/cgroup/cpuset.cpus.effective")),
            None => Err(bad(&path, "not `$MAX $PERIOD`")),
        }
    }

    fn v1_limit(&self) -> Result<f64, CpuError> {
        let quota_path = self.first_existing(&[
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
        ]);
        let period_path = quota_path.with_file_name("cpu.cfs_period_us");
        let quota: i64 = read(&quota_path)?
            .trim()
            .parse()
            .map_err(|_| bad(&quota_path, "not a number"))?;
        let period: i64 = read(&period_path)?
            .trim()
            .parse()
            .map_err(|_| bad(&period_path, "not a number"))?;
        if quota == -1 {
            self.cpuset(&self.root.join("sys/fs/cgroup/cpuset/cpuset.effective_cpus"))
        } else if quota > 0 && period > 0 {
            Ok(quota as f64 / period as f64)
        } else {
            Err(bad(&quota_path, "quota and period must be positive"))
        }
    }

    fn cpuset(&self, path: &Path) -> Result<f64, CpuError> {
        count_cpus(&read(path)?)
            .filter(|n| *n > 0)
            .map(|n| n as f64)
            .ok_or_else(|| bad(path, "not a CPU list"))
    }
}

fn read(path: &Path) -> Result<String, CpuError> {
    std::fs::read_to_string(path).map_err(|e| bad(path, &e.to_string()))
}

fn bad(path: &Path, reason: &str) -> CpuError {
    CpuError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn wall_micros() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as f64)
        .unwrap_or(0.0)
}

/// `cpu  user nice system idle iowait ...`
pub fn parse_proc_stat_line(line: &str) -> Option<ProcTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let mut next = || fields.next()?.parse::<u64>().ok();
    let user = next()?;
    let nice = next()?;
    let system = next()?;
    let idle = next()?;
    let iowait = next()?;
    Some(ProcTimes {
        user: user + nice,
        system,
        idle,
        iowait,
    })
}

/// Busy share between two `/proc/stat` samples, in percent. As the KCL: the differences are
/// taken as absolute values, and an iowait that went down while the total grew less than
/// idle (an idle machine, see the kernel's proc documentation) reads 0.
pub fn proc_utilisation(before: &ProcTimes, now: &ProcTimes) -> f64 {
    let idle = now.idle.abs_diff(before.idle);
    let total = now.total().abs_diff(before.total());
    if total < idle && now.iowait < before.iowait {
        return 0.0;
    }
    if total == 0 {
        return 0.0;
    }
    // The KCL would publish a negative value here; a share is never below 0.
    ((total as f64 - idle as f64) / total as f64 * 100.0).clamp(0.0, 100.0)
}

/// CPU time used over wall time, as a share of `limit` CPUs, in percent, at most 100.
pub fn cgroup_utilisation(used_us: f64, wall_us: f64, limit: f64) -> f64 {
    if wall_us <= 0.0 || limit <= 0.0 {
        return 0.0;
    }
    (used_us / wall_us / limit * 100.0).clamp(0.0, 100.0)
}

/// `cpu.max`: `Some(Some(cpus))` for a limit, `Some(None)` for `max`.
pub fn parse_cpu_max(text: &str) -> Option<Option<f64>> {
    let mut fields = text.split_whitespace();
    let max = fields.next()?;
    let period: f64 = fields.next()?.parse().ok().filter(|p: &f64| *p > 0.0)?;
    if max == "max" {
        return Some(None);
    }
    let max: f64 = max.parse().ok().filter(|m: &f64| *m > 0.0)?;
    Some(Some(max / period))
}

/// `usage_usec N` from `cpu.stat`.
pub fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == "usage_usec")
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// How many CPUs a list such as `0-3,8,10-11` names.
pub fn count_cpus(list: &str) -> Option<u64> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                (b >= a).then(|| b - a + 1)
            }
            None => part.trim().parse::<u64>().ok().map(|_| 1),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_read_as_the_kcl_reads_it() {
        let a = parse_proc_stat_line("cpu  100 20 30 800 50 1 2 3 0 0").unwrap();
        assert_eq!(
            a,
            ProcTimes {
                user: 120,
                system: 30,
                idle: 800,
                iowait: 50
            }
        );
        // +60 busy (user+nice+system), +40 idle, +0 iowait: 60 %.
        let b = parse_proc_stat_line("cpu  150 30 30 840 50 1 2 3 0 0").unwrap();
        assert!((proc_utilisation(&a, &b) - 60.0).abs() < 1e-9);
        // Idle machine whose iowait went down: 0.
        let c = ProcTimes {
            iowait: 10,
            idle: 900,
            ..b
        };
        assert_eq!(proc_utilisation(&b, &c), 0.0);
        assert_eq!(parse_proc_stat_line("cpu0 1 2 3 4 5"), None);
        assert_eq!(parse_proc_stat_line("cpu 1 2 3"), None);
    }

    #[test]
    fn cgroup_files_are_read_as_the_kcl_reads_them() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(Some(2.0)));
        assert_eq!(parse_cpu_max("max 100000\n"), Some(None));
        assert_eq!(parse_cpu_max("max"), None);
        assert_eq!(
            parse_usage_usec("usage_usec 123456\nuser_usec 1\nsystem_usec 2\n"),
            Some(123_456)
        );
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("3-1"), None);
        // Half a CPU used of two: 25 %; more than the limit is capped.
        assert_eq!(cgroup_utilisation(500_000.0, 1_000_000.0, 2.0), 25.0);
        assert_eq!(cgroup_utilisation(5_000_000.0, 1_000_000.0, 2.0), 100.0);
        assert_eq!(cgroup_utilisation(1.0, 0.0, 2.0), 0.0);
    }

    /// This machine's own files, whichever it has: the first sample is 0, the next a
    /// percentage.
    #[test]
    fn the_machines_own_cpu_reads() {
        let Some(mut sampler) = CpuSampler::new(CpuSource::Auto, Path::new("/")).unwrap() else {
            return;
        };
        // `new` took the first sample.
        let busy: u64 = (0..3_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        std::hint::black_box(busy);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let v = sampler.sample().unwrap();
        assert!((0.0..=100.0).contains(&v), "{v}");
        assert_eq!(
            CpuSampler::new(CpuSource::None, Path::new("/"))
                .unwrap()
                .map(|s| s.reader()),
            None
        );
        assert!(CpuSampler::new(CpuSource::CgroupV2, Path::new("/nonexistent")).is_err());
        assert!(CpuSampler::new(CpuSource::Auto, Path::new("/nonexistent"))
            .unwrap()
            .is_none());
    }
}

//! The CPU time a process spends, as finely as this machine can count it.
//! `/proc/PID/stat` counts in clock ticks (10 ms), too coarse for a poll
//! that costs about a millisecond; a cgroup of its own counts every thread's
//! time (those that exited included) in microseconds (cgroup v2's
//! `cpu.stat`) or nanoseconds (v1's `cpuacct.usage`). Ticks remain the
//! fallback where no cgroup can be made (not root, or no such mount).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How a process's CPU time is read.
pub enum CpuClock {
    /// A cgroup of its own, removed on drop.
    Cgroup { dir: PathBuf, version: CgroupVersion },
    /// `/proc/PID/stat`'s utime + stime, in ticks of `tick`.
    Ticks { pid: u32, tick: Duration },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CgroupVersion {
    V2,
    V1,
}

impl CpuClock {
    /// Moves `pid` (and so every thread it has or starts) into a cgroup of
    /// its own to count it; ticks when no cgroup can be made.
    pub fn of(pid: u32) -> Result<Self> {
        for (version, mount) in cgroup_mounts() {
            let dir = mount.join(format!("ferry-bench-{}-{pid}", std::process::id()));
            if std::fs::create_dir(&dir).is_err() {
                // Not root, or a read-only hierarchy.
                continue;
            }
            if std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                return Ok(CpuClock::Cgroup { dir, version });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        Ok(CpuClock::Ticks {
            pid,
            tick: Duration::from_secs(1) / clock_ticks()? as u32,
        })
    }

    /// The CPU time spent so far (since the process was moved, for a cgroup).
    pub fn read(&self) -> Result<Duration> {
        match self {
            CpuClock::Cgroup {
                dir,
                version: CgroupVersion::V2,
            } => {
                let text = std::fs::read_to_string(dir.join("cpu.stat"))?;
                let us = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .context("cpu.stat has no usage_usec")?;
                Ok(Duration::from_micros(us.trim().parse()?))
            }
            CpuClock::Cgroup {
                dir,
                version: CgroupVersion::V1,
            } => {
                let ns = std::fs::read_to_string(dir.join("cpuacct.usage"))?;
                Ok(Duration::from_nanos(ns.trim().parse()?))
            }
            CpuClock::Ticks { pid, tick } => Ok(*tick * ticks(*pid)? as u32),
        }
    }

    /// What the figure was counted with, for the table.
    pub fn resolution(&self) -> String {
        match self {
            CpuClock::Cgroup {
                version: CgroupVersion::V2,
                ..
            } => "cgroup v2 cpu.stat, µs".into(),
            CpuClock::Cgroup {
                version: CgroupVersion::V1,
                ..
            } => "cgroup v1 cpuacct, ns".into(),
            CpuClock::Ticks { tick, .. } => format!("/proc/PID/stat, {} ms ticks", tick.as_millis()),
        }
    }
}

impl Drop for CpuClock {
    fn drop(&mut self) {
        if let CpuClock::Cgroup { dir, .. } = self {
            // A process still running goes back to where it came from (the
            // parent cgroup); one just killed leaves it a moment later.
            if let (Ok(procs), Some(parent)) =
                (std::fs::read_to_string(dir.join("cgroup.procs")), dir.parent())
            {
                for pid in procs.lines() {
                    let _ = std::fs::write(parent.join("cgroup.procs"), pid);
                }
            }
            for _ in 0..50 {
                if std::fs::remove_dir(&*dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The writable cgroup hierarchies that count CPU time: v2 first, then v1's
/// cpuacct controller, from this process's mount table.
fn cgroup_mounts() -> Vec<(CgroupVersion, PathBuf)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS] - FSTYPE SOURCE SUPEROPTIONS`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).map(Path::new);
        let mut right = right.split(' ');
        let (fstype, superoptions) = (right.next(), right.nth(1).unwrap_or(""));
        match (fstype, mount_point) {
            (Some("cgroup2"), Some(p)) => found.insert(0, (CgroupVersion::V2, p.to_owned())),
            (Some("cgroup"), Some(p)) if superoptions.split(',').any(|o| o == "cpuacct") => {
                found.push((CgroupVersion::V1, p.to_owned()))
            }
            _ => {}
        }
    }
    found
}

fn clock_ticks() -> Result<u64> {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
    let ticks: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    if ticks == 0 {
        bail!("getconf CLK_TCK said 0");
    }
    Ok(ticks)
}

/// utime + stime of `pid`, in clock ticks.
fn ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields start after its `)`.
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_is_counted() {
        // Spins, then waits for its standard input to close.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; read _ || true",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let clock = CpuClock::of(child.id()).unwrap();
        let start = std::time::Instant::now();
        let mut spent = Duration::ZERO;
        while spent < Duration::from_millis(50) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
            spent = clock.read().unwrap();
        }
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        assert!(
            spent >= Duration::from_millis(50),
            "{}: {spent:?}",
            clock.resolution()
        );
    }
}

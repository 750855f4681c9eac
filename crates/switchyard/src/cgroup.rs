//! `switchyard media --cgroup NAME`: the media node confines itself to a cgroup of its own
//! under the one it was started in, with the pool's CPU and memory limits, and reads the
//! cgroup's CPU pressure (PSI) for `/metrics` and for placement (a node whose calls wait
//! for CPU says it is saturated, and cores stop placing calls on it).
//!
//! cgroup v2 (`cpu.max`, `memory.max`, `cpu.pressure`) where the unified hierarchy has the
//! controllers; on a hybrid host whose `cpu` and `memory` controllers are mounted as v1
//! (as on the machines the tests run on) the same limits go through v1
//! (`cpu.cfs_quota_us`, `memory.limit_in_bytes`) and the pressure through the v2 tree,
//! where PSI is kept for every cgroup with or without controllers.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The cgroups this process moved into, and where its CPU pressure is read.
#[derive(Debug)]
pub struct Confinement {
    /// Each cgroup joined, and the one it came from.
    joined: Vec<(PathBuf, PathBuf)>,
    pressure: Option<PathBuf>,
    pub cpu_percent: u32,
    pub memory_mb: u64,
}

/// CPU pressure: the share of time some runnable task of the cgroup waited for a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    /// Percent over the last 10 and 60 seconds.
    pub some_avg10: f64,
    pub some_avg60: f64,
    /// Microseconds waited in all.
    pub some_total_us: u64,
}

/// Parses the `some` line of a PSI file (`some avg10=1.20 avg60=0.50 avg300=0.10
/// total=12345`).
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let mut p = Pressure::default();
    for field in line.split_whitespace().skip(1) {
        let (k, v) = field.split_once('=')?;
        match k {
            "avg10" => p.some_avg10 = v.parse().ok()?,
            "avg60" => p.some_avg60 = v.parse().ok()?,
            "total" => p.some_total_us = v.parse().ok()?,
            _ => {}
        }
    }
    Some(p)
}

/// This process's cgroup in each hierarchy: (controllers, path), `""` for v2.
fn own_cgroups() -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers.to_owned(), path.to_owned()))
        })
        .collect())
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value)
        .with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

impl Confinement {
    /// Moves this process into cgroup `name` with the limits (`cpu_percent` of one CPU,
    /// `memory_mb`; 0: no limit).
    pub fn enter(name: &str, cpu_percent: u32, memory_mb: u64) -> anyhow::Result<Confinement> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("--cgroup {name:?}: a name without slashes");
        }
        let pid = std::process::id().to_string();
        let own = own_cgroups()?;
        let mut c = Confinement {
            joined: Vec::new(),
            pressure: None,
            cpu_percent,
            memory_mb,
        };
        let quota = (cpu_percent > 0).then(|| u64::from(cpu_percent) * 1000);
        let memory = (memory_mb > 0).then(|| memory_mb * 1024 * 1024);
        let v2_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists());
        let v2_path = own
            .iter()
            .find(|(ctl, _)| ctl.is_empty())
            .map(|(_, p)| p.clone());
        let (Some(v2_root), Some(v2_path)) = (v2_root, v2_path) else {
            bail!("no cgroup v2 hierarchy: cgroups need Linux with /sys/fs/cgroup mounted");
        };
        let v2_parent = v2_root.join(v2_path.trim_start_matches('/'));
        let v2_controllers =
            std::fs::read_to_string(v2_parent.join("cgroup.controllers")).unwrap_or_default();
        let v2_has = |ctl: &str| v2_controllers.split_whitespace().any(|c| c == ctl);
        let v2_dir = v2_parent.join(name);
        std::fs::create_dir_all(&v2_dir)
            .with_context(|| format!("cannot create {}", v2_dir.display()))?;
        let mut limited_in_v2 = false;
        if v2_has("cpu") && v2_has("memory") {
            // Controllers are handed down by the parent's subtree_control.
            let _ = write(&v2_parent.join("cgroup.subtree_control"), "+cpu +memory");
            if let Some(q) = quota {
                write(&v2_dir.join("cpu.max"), &format!("{q} 100000"))?;
            }
            if let Some(m) = memory {
                write(&v2_dir.join("memory.max"), &m.to_string())?;
            }
            limited_in_v2 = true;
        }
        write(&v2_dir.join("cgroup.procs"), &pid)?;
        c.joined.push((v2_dir.clone(), v2_parent));
        c.pressure = Some(v2_dir.join("cpu.pressure"));
        if !limited_in_v2 {
            // Hybrid host: the limits through the v1 controllers.
            for (ctl, path) in &own {
                let names: Vec<&str> = ctl.split(',').collect();
                let wants_cpu = names.contains(&"cpu") && quota.is_some();
                let wants_memory = names.contains(&"memory") && memory.is_some();
                if !wants_cpu && !wants_memory {
                    continue;
                }
                let parent = Path::new("/sys/fs/cgroup")
                    .join(ctl)
                    .join(path.trim_start_matches('/'));
                let dir = parent.join(name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                if wants_cpu && let Some(q) = quota {
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                    write(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                if wants_memory && let Some(m) = memory {
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                }
                write(&dir.join("cgroup.procs"), &pid)?;
                c.joined.push((dir, parent));
            }
            if quota.is_some()
                && !c
                    .joined
                    .iter()
                    .any(|(d, _)| d.join("cpu.cfs_quota_us").exists())
            {
                bail!("no cpu controller to limit the media node with (cgroup v2 cpu or v1 cpu)");
            }
        }
        Ok(c)
    }

    /// The cgroup's CPU pressure now.
    pub fn cpu_pressure(&self) -> Option<Pressure> {
        parse_pressure(&std::fs::read_to_string(self.pressure.as_ref()?).ok()?)
    }

    /// Moves the process back where it came from and removes the cgroups.
    pub fn leave(self) {
        let pid = std::process::id().to_string();
        for (dir, parent) in self.joined.iter().rev() {
            let _ = std::fs::write(parent.join("cgroup.procs"), &pid);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_lines_parse() {
        let text = "some avg10=12.50 avg60=3.25 avg300=0.80 total=987654\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse_pressure(text),
            Some(Pressure {
                some_avg10: 12.5,
                some_avg60: 3.25,
                some_total_us: 987_654
            })
        );
        assert_eq!(
            parse_pressure("full avg10=1 avg60=1 avg300=1 total=1"),
            None
        );
        assert_eq!(parse_pressure("some avg10=x"), None);
    }
}

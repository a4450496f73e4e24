//! `--pin CPUS`: runs the benchmark process, and every process it starts, on the given CPUs.
//!
//! The affinity is set with `sched_setaffinity` (the `nix` crate) on the calling thread before
//! any other thread exists: threads and child processes inherit the mask of the thread that
//! creates them, so the runtime's workers, the nodes and the relays all keep it.

use anyhow::{Context as _, bail};

/// The most CPUs a list may name (and the largest CPU number + 1).
const MAX_CPUS: usize = 1024;

/// Parses a CPU list: numbers and ranges, comma-separated (`0`, `0,2`, `0-3`).
pub(crate) fn parse(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (item, item),
        };
        let number = |text: &str| {
            text.parse::<usize>()
                .ok()
                .filter(|&n| n < MAX_CPUS)
                .with_context(|| {
                    format!(
                        "--pin {list:?}: {text:?} is not a CPU number (0 to {})",
                        MAX_CPUS - 1
                    )
                })
        };
        let (first, last) = (number(first)?, number(last)?);
        if first > last {
            bail!("--pin {list:?}: the range {item} runs backwards; write it low-high");
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Pins this process (its calling thread, and whatever it starts afterwards) to `list`.
#[cfg(target_os = "linux")]
pub(crate) fn pin(list: &str) -> anyhow::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for cpu in parse(list)? {
        set.set(cpu).with_context(|| {
            format!("--pin {list:?}: CPU {cpu} is past what the system supports")
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| {
        format!("--pin {list:?}: cannot run on these CPUs (do they exist? `nproc` counts them)")
    })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pin(list: &str) -> anyhow::Result<()> {
    parse(list)?;
    bail!("--pin works on Linux only; use the system's own tool (e.g. `start /affinity`)")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse("0").ok(), Some(vec![0]));
        assert_eq!(parse("3,1-2, 1").ok(), Some(vec![1, 2, 3]));
        assert!(parse("2-1").is_err());
        assert!(parse("x").is_err());
        assert!(parse("").is_err());
        assert!(parse("1024").is_err());
    }
}

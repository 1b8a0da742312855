//! A process's memory: resident set (VmRSS) and the memlock of the BPF maps it holds
//! open (from /proc/<pid>/fdinfo).

use anyhow::Context as _;

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    field_kib(&status, "VmRSS:").with_context(|| format!("no VmRSS for pid {pid}"))
}

/// CPU time `pid` has used so far (user + system, from /proc/<pid>/stat): a figure that,
/// unlike wall time, does not grow when other processes crowd the machine.
pub fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the name.
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_millis(total * 1000 / hz))
}

/// `memlock` of each distinct BPF map (by `map_id`) `pid` holds fds of, in bytes.
pub fn bpf_map_memlock_by_id(pid: u32) -> anyhow::Result<std::collections::BTreeMap<u64, u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // The fd closed meanwhile.
        };
        if let Some((id, memlock)) = map_memlock(&text) {
            out.insert(id, memlock);
        }
    }
    Ok(out)
}

/// Sum of `memlock` over the distinct BPF maps (by `map_id`) `pid` holds fds of, in bytes.
pub fn bpf_map_memlock_bytes(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // The fd closed meanwhile.
        };
        if let Some((id, memlock)) = map_memlock(&text) {
            if seen.insert(id) {
                total += memlock;
            }
        }
    }
    Ok(total)
}

/// (`map_id`, `memlock`) of one fdinfo text, if it is a BPF map's.
fn map_memlock(fdinfo: &str) -> Option<(u64, u64)> {
    let value = |key: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    value("map_type:")?;
    Some((value("map_id:")?, value("memlock:")?))
}

fn field_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_map_fdinfo_and_status() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nmap_type:\t1\nkey_size:\t4\nvalue_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t90112\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(map_memlock(map), Some((42, 90_112)));
        assert_eq!(
            map_memlock("pos:\t0\nflags:\t02\nprog_type:\t3\nmemlock:\t4096\n"),
            None
        );
        assert_eq!(
            field_kib("Name:\tx\nVmRSS:\t  12345 kB\n", "VmRSS:"),
            Some(12_345)
        );
    }

    #[test]
    fn own_rss_is_positive() -> anyhow::Result<()> {
        assert!(rss_kib(std::process::id())? > 0);
        Ok(())
    }
}

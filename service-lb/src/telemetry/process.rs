//! The standard `process_*` metrics (the names every Prometheus client library exports,
//! and the ones kube-proxy's Go client exports).
//!
//! prometheus-client (Rust) has no process collector, so this one reads procfs itself at
//! scrape time: `/proc/self/stat` (CPU time, virtual and resident memory, start time in
//! clock ticks since boot), `/proc/stat` (`btime`), `/proc/self/limits` (max open files)
//! and `/proc/self/fd` (open files). A scrape costs a few small reads, whatever the maps
//! hold. A file that cannot be read leaves its series out of that scrape.

use std::{fmt, path::Path};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::Gauge, MetricType},
    registry::{Registry, Unit},
};

/// What `/proc/<pid>/stat` says, in the units the metrics use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// utime + stime.
    pub cpu_seconds: f64,
    pub virtual_bytes: u64,
    pub resident_bytes: u64,
    /// Seconds since boot.
    pub start_since_boot_seconds: f64,
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// contain spaces and parentheses: the fields are counted after its last `)`.
pub fn parse_stat(text: &str, ticks_per_second: u64, page_size: u64) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // rest starts at field 3 (state); field n is rest[n - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_second.max(1) as f64;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_since_boot_seconds: field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
    })
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One reading of the process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub stat: Option<Stat>,
    pub boot_time: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessSample {
    /// Reads `proc` (normally `/proc/self`) and `/proc/stat`.
    pub fn read(proc: &Path, proc_stat: &Path) -> Self {
        // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = u64::try_from(ticks).unwrap_or(100);
        let page = u64::try_from(page).unwrap_or(4096);
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        Self {
            stat: read(&proc.join("stat")).and_then(|t| parse_stat(&t, ticks, page)),
            boot_time: read(proc_stat).and_then(|t| parse_boot_time(&t)),
            open_fds: std::fs::read_dir(proc.join("fd"))
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: read(&proc.join("limits")).and_then(|t| parse_max_fds(&t)),
        }
    }

    pub fn start_time_seconds(&self) -> Option<f64> {
        Some(self.boot_time? as f64 + self.stat?.start_since_boot_seconds)
    }
}

/// Encodes a fresh [`ProcessSample`] of this process on each scrape.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(Self));
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: Option<f64>,
) -> Result<(), fmt::Error> {
    let Some(value) = value else {
        return Ok(());
    };
    let family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    g.encode(family)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = ProcessSample::read(Path::new("/proc/self"), Path::new("/proc/stat"));
        if let Some(stat) = s.stat {
            let family = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(stat.cpu_seconds).encode(family)?;
        }
        let bytes = Unit::Bytes;
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size in bytes",
            Some(&bytes),
            s.stat.map(|st| st.resident_bytes as f64),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size in bytes",
            Some(&bytes),
            s.stat.map(|st| st.virtual_bytes as f64),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            None,
            s.open_fds.map(|n| n as f64),
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors",
            None,
            s.max_fds.map(|n| n as f64),
        )?;
        gauge(
            &mut encoder,
            "process_start_time",
            "Start time of the process since unix epoch in seconds",
            Some(&Unit::Seconds),
            s.start_time_seconds(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis; utime 250, stime 50 ticks, start
        // 1000 ticks after boot, 8 MiB virtual, 300 pages resident.
        let line = "42 (we ird) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 8388608 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line, 100, 4096).expect("parses");
        assert_eq!(stat.cpu_seconds, 3.0);
        assert_eq!(stat.start_since_boot_seconds, 10.0);
        assert_eq!(stat.virtual_bytes, 8_388_608);
        assert_eq!(stat.resident_bytes, 300 * 4096);
        assert_eq!(parse_stat("42 no parenthesis", 100, 4096), None);
    }

    #[test]
    fn boot_time_and_fd_limit() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764700000\nprocesses 9\n"),
            Some(1_764_700_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds("Max open files            unlimited  unlimited  files\n"),
            None
        );
    }

    #[test]
    fn this_process_reads_plausibly() {
        let s = ProcessSample::read(Path::new("/proc/self"), Path::new("/proc/stat"));
        let open = s.open_fds.expect("open fds");
        // stdin/out/err at least, and the directory handle itself.
        assert!(open >= 3, "{open}");
        assert!(s.max_fds.expect("max fds") >= open);
        let stat = s.stat.expect("stat");
        assert!(stat.resident_bytes > 0 && stat.virtual_bytes >= stat.resident_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let start = s.start_time_seconds().expect("start time");
        // The test process started before now and (on any machine) after 2020.
        assert!(
            start <= now + 1.0 && start > 1_577_836_800.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn every_process_series_is_exported_with_the_conventional_name() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let text = crate::telemetry::metrics::encode_text(&registry).expect("encodes");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing in\n{text}"
            );
        }
    }
}

//! One benchmark run: every section in order, printed as it completes, then the markdown
//! report and the SVG chart written side by side.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use super::{
    chart::{Chart, Series},
    config::{BenchConfig, BACKENDS_PER_SERVICE},
    control_plane::{self, quantile, SyncRow},
    e2e::{self, E2eRow, Target},
    machine::{utc_now, Machine},
    per_packet::{self, PerPacketRow},
    report::{count, ns, Report, Section},
    rule_load::{self, Layout, LoadTime},
};

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    pub markdown_path: PathBuf,
    pub chart_path: PathBuf,
    pub control_plane_chart_path: PathBuf,
    pub e2e_chart_path: PathBuf,
}

/// Runs every section of `config`, writes the report to `out` and the chart beside it
/// (same name, `.svg`). `command` is quoted in the report as the way to rerun it.
pub fn run(config: &BenchConfig, out: &Path, command: &str) -> anyhow::Result<Outcome> {
    let started = utc_now();
    let per_packet_rows = per_packet_section(config)?;
    let mut sync_failures = Vec::new();
    let sync_rows = control_plane_section(config, &mut sync_failures)?;
    let loads = rule_load_section(config, &mut sync_failures)?;
    let mut e2e_failures = Vec::new();
    let e2e_rows = e2e_section(config, &mut e2e_failures)?;
    let mut e2e = e2e_table(&e2e_rows);
    e2e.failures = e2e_failures;
    let mut sync = sync_table(&sync_rows, &loads);
    sync.failures = sync_failures;
    let sections = vec![
        latency_ratio_table(&e2e_rows),
        sync_ratio_table(&sync_rows, &loads),
        per_packet_table(&per_packet_rows, config),
        per_packet_detail_table(&per_packet_rows),
        fill_table(&per_packet_rows),
        sync,
        change_table(&sync_rows, config),
        e2e,
        bulk_table(&e2e_rows, config),
    ];

    let chart_path = sibling(out, "svg");
    let control_plane_chart_path = sibling(out, "control-plane.svg");
    let e2e_chart_path = sibling(out, "latency.svg");
    let charts = vec![
        (
            per_packet_chart(&per_packet_rows),
            &chart_path,
            "per-packet cost against services",
        ),
        (
            sync_chart(&sync_rows, &loads),
            &control_plane_chart_path,
            "full sync time against services",
        ),
        (
            e2e_chart(&e2e_rows),
            &e2e_chart_path,
            "connect + request/response p50 against services",
        ),
    ];
    let report = Report {
        machine: Machine::detect(),
        command: command.to_string(),
        mode: config.mode.to_string(),
        started,
        finished: utc_now(),
        sections,
        charts: charts
            .iter()
            .filter_map(|(_, path, caption)| {
                let file = path.file_name()?.to_string_lossy().into_owned();
                Some((caption.to_string(), file))
            })
            .collect(),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, report.markdown()).with_context(|| format!("writing {}", out.display()))?;
    for (chart, path, _) in &charts {
        std::fs::write(path, chart.svg()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Outcome {
        report,
        markdown_path: out.to_path_buf(),
        chart_path,
        control_plane_chart_path,
        e2e_chart_path,
    })
}

/// `docs/benchmarks.md` -> `docs/benchmarks.<extension>`.
fn sibling(out: &Path, extension: &str) -> PathBuf {
    out.with_extension(extension)
}

/// Daemon runs at each size; the change test rides on the run with `change_services`
/// services (a run of its own when that size is not in the list).
fn control_plane_section(
    config: &BenchConfig,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<SyncRow>> {
    let mut sizes = config.control_plane_services.clone();
    if !sizes.contains(&config.change_services) {
        sizes.push(config.change_services);
    }
    let mut rows = Vec::new();
    for services in sizes {
        let changes = if services == config.change_services {
            config.changes
        } else {
            0
        };
        eprintln!("slb-bench: daemon sync with {services} services, {changes} changes");
        match control_plane::measure(services, changes, config.sync_bound) {
            Ok(row) => rows.push(row),
            Err(e) => failures.push(note(&e, &format!("daemon with {services} services"))),
        }
    }
    Ok(rows)
}

/// (services, layout, time) for every size of the control-plane list.
fn rule_load_section(
    config: &BenchConfig,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<(u32, Layout, LoadTime)>> {
    let mut loads = Vec::new();
    for &services in &config.control_plane_services {
        for layout in Layout::ALL {
            eprintln!("slb-bench: {} of {services} services", layout.name());
            match rule_load::time_load(layout, services, config.rule_load_bound) {
                Ok(time) => loads.push((services, layout, time)),
                Err(e) => failures.push(note(
                    &e,
                    &format!("{} of {services} services", layout.name()),
                )),
            }
        }
    }
    Ok(loads)
}

fn load_of(loads: &[(u32, Layout, LoadTime)], services: u32, layout: Layout) -> Option<&LoadTime> {
    loads
        .iter()
        .find(|(n, l, _)| *n == services && *l == layout)
        .map(|(_, _, t)| t)
}

fn sync_table(rows: &[SyncRow], loads: &[(u32, Layout, LoadTime)]) -> Section {
    let mut section = Section::new(
        "Control plane: full sync and memory",
        &format!(
            "service-lb: a manifests folder of N Services with one EndpointSlice of \
             {BACKENDS_PER_SERVICE} endpoints each, then `service-lb run` started in a test \
             node's namespace; time from the start of the process until it reports ready on \
             its health port (`/readyz`: programs attached and first full sync done; polled \
             every 20 ms; the pinned services map is then checked to hold all N x {} \
             entries), then the daemon's VmRSS and the memlock of the BPF maps it holds (from \
             /proc/<pid>/fdinfo). kube-proxy: the same N services in kube-proxy's layout \
             (generated), loaded into an empty test namespace by `iptables-restore` on each \
             of iptables' back ends (nf_tables: `iptables-nft-restore`, the Debian default; \
             legacy x_tables: `iptables-legacy-restore`; kube-proxy's iptables mode uses \
             whichever the node has) and by `nft -f` (wall time of the command).",
            BACKENDS_PER_SERVICE + 1
        ),
        &[
            "services",
            "service-lb sync (s)",
            "iptables-nft-restore (s)",
            "iptables-legacy-restore (s)",
            "nft -f (s)",
            "daemon RSS (MiB)",
            "BPF map memory (MiB)",
        ],
    );
    let mut sizes: Vec<u32> = rows.iter().map(|r| r.services).collect();
    sizes.extend(loads.iter().map(|(n, _, _)| *n));
    sizes.sort_unstable();
    sizes.dedup();
    for services in sizes {
        let cell = |layout| load_of(loads, services, layout).map_or("–".into(), LoadTime::cell);
        let row = rows.iter().find(|r| r.services == services);
        section.push(vec![
            count(u64::from(services)),
            row.map_or("–".into(), |r| format!("{:.3}", r.sync.as_secs_f64())),
            cell(Layout::Iptables),
            cell(Layout::IptablesLegacy),
            cell(Layout::Nftables),
            row.map_or("–".into(), |r| {
                format!("{:.1}", r.rss_kib as f64 / 1024.0)
            }),
            row.map_or("–".into(), |r| {
                format!("{:.1}", r.map_memlock_bytes as f64 / (1024.0 * 1024.0))
            }),
        ]);
    }
    println!("{}", section.text());
    section
}

fn change_table(rows: &[SyncRow], config: &BenchConfig) -> Section {
    let mut section = Section::new(
        "Control plane: EndpointSlice change -> map latency",
        "With N services programmed, one Service's EndpointSlice (a file of its own) is          rewritten, alternating 9 and 10 endpoints; latency from the rename of the file until          the Service's master entry in the pinned map shows the new endpoint count (polled          every 1 ms).",
        &["services present", "changes", "p50 (ms)", "p99 (ms)", "max (ms)"],
    );
    let ms =
        |d: Option<Duration>| d.map_or("–".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    for row in rows.iter().filter(|r| r.services == config.change_services) {
        section.push(vec![
            count(u64::from(row.services)),
            count(row.changes.len() as u64),
            ms(quantile(&row.changes, 0.5)),
            ms(quantile(&row.changes, 0.99)),
            ms(row.changes.last().copied()),
        ]);
    }
    println!("{}", section.text());
    section
}

fn sync_chart(rows: &[SyncRow], loads: &[(u32, Layout, LoadTime)]) -> Chart {
    let mut series = vec![Series {
        name: "service-lb sync".into(),
        points: rows
            .iter()
            .map(|r| (f64::from(r.services), r.sync.as_secs_f64()))
            .collect(),
    }];
    for layout in Layout::ALL {
        series.push(Series {
            name: layout.name().into(),
            points: loads
                .iter()
                .filter(|(_, l, _)| *l == layout)
                .filter_map(|(n, _, t)| Some((f64::from(*n), t.seconds()?)))
                .collect(),
        });
    }
    Chart {
        title: "Full sync of N services x 10 endpoints".into(),
        x_label: "services (log scale)".into(),
        y_label: "seconds".into(),
        series,
    }
}

fn per_packet_section(config: &BenchConfig) -> anyhow::Result<Vec<PerPacketRow>> {
    let rows = per_packet::measure_all(
        &config.per_packet_services,
        config.per_packet_calls,
        config.new_flows,
    )
    .context("per-packet cost")?;
    println!("{}", per_packet_table(&rows, config).text());
    println!("{}", per_packet_detail_table(&rows).text());
    Ok(rows)
}

fn per_packet_table(rows: &[PerPacketRow], config: &BenchConfig) -> Section {
    let method = format!(
        "BPF_PROG_TEST_RUN of the tc programs (kernel-timed, nothing attached), IPv4 TCP, with N \
         ClusterIP services of {BACKENDS_PER_SERVICE} backends each in the maps (maps sized for N). \
         Net of the harness: every call runs the program once (repeat 1: a repeat loop would \
         run the program again on the packet it has just rewritten) and is paired with a call \
         of the object's empty tc program (`tc_empty`) on the same packet; the figure is the \
         test run's own duration of the median call, real minus empty (the median, so a call \
         that the scheduler or the hypervisor interrupted on this loaded 2-core VM does not \
         move it). Every N is loaded and filled first, then \
         measured in 5 rounds that take each N in turn. New-flow DNAT: {} distinct flows (a \
         fifth per round), every output checked to be the SYN sent to a backend of the \
         service; all of them. Established hit, reply reverse NAT, pass-through (a \
         ClusterIP-range address that is no frontend): {} calls per round, every output \
         checked; the median of the rounds. Targets (issue 14): established <= 100 ns, \
         new flow <= 300 ns net. The last column is the established net at N over that at \
         the smallest N. Gross, empty and the BPF run-time statistics: next table.",
        count(u64::from(config.new_flows)),
        count(u64::from(config.per_packet_calls)),
    );
    let mut section = Section::new(
        "Per-packet cost net of the harness (ns/packet)",
        &method,
        &[
            "services",
            "new-flow DNAT",
            "established hit",
            "reply reverse NAT",
            "pass-through",
            "established vs smallest N",
        ],
    );
    let base = rows.first().map(|r| r.established.net_ns());
    for row in rows {
        let ratio = base.filter(|b| *b > 0.0).map_or("–".to_string(), |b| {
            format!("{:.2}×", row.established.net_ns() / b)
        });
        section.push(vec![
            count(u64::from(row.services)),
            ns(row.new_flow.net_ns()),
            ns(row.established.net_ns()),
            ns(row.reply.net_ns()),
            ns(row.pass.net_ns()),
            ratio,
        ]);
    }
    section
}

fn per_packet_detail_table(rows: &[PerPacketRow]) -> Section {
    let mut section = Section::new(
        "Per-packet cost: gross, empty program, net, by both clocks (ns/packet)",
        "The runs of the table above. Test run: BPF_PROG_TEST_RUN's duration of the real \
         program (gross) and of `tc_empty` on the same packet (empty: the harness's per-run \
         cost, its clock reads included), median call, and their difference. BPF stats: the kernel's \
         per-program run time (`BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`, a sched_clock() pair \
         around each run, read as run_time_ns / run_cnt of the program before and after; on \
         only while the benchmark holds the descriptor; the mean run) of the real program, of `tc_empty` \
         (the clock pair's own cost) and their difference. Instruction counts (`perf stat \
         -e instructions`) are not available: this VM exposes no hardware PMU. The last row \
         of each N is pass-through timed the old way, one call with a repeat loop of as many \
         runs (the kernel's mean; caches stay warm inside the loop; valid for this path \
         only, as the packet is left as it was): the gap to the row above is what a cold \
         single run costs more.",
        &[
            "services · path",
            "test run gross",
            "test run empty",
            "test run net",
            "BPF stats gross",
            "BPF stats empty",
            "BPF stats net",
        ],
    );
    for row in rows {
        for (path, cost) in row.paths() {
            section.push(vec![
                format!("{} · {path}", count(u64::from(row.services))),
                ns(cost.gross_ns),
                ns(cost.empty_ns),
                ns(cost.net_ns()),
                ns(cost.stats_gross_ns),
                ns(cost.stats_empty_ns),
                ns(cost.stats_net_ns()),
            ]);
        }
    }
    section
}

fn fill_table(rows: &[PerPacketRow]) -> Section {
    let mut section = Section::new(
        "Map fill time (userspace, one update syscall per entry)",
        "Time the benchmark took to write N services (master + 10 slots each), their 10 \
         backends and their reverse-NAT entry, one BPF_MAP_UPDATE_ELEM per entry.",
        &["services", "map entries", "fill time (ms)"],
    );
    for row in rows {
        let entries = u64::from(row.services) * (2 * u64::from(BACKENDS_PER_SERVICE) + 2);
        section.push(vec![
            count(u64::from(row.services)),
            count(entries),
            format!("{:.1}", row.fill.as_secs_f64() * 1e3),
        ]);
    }
    section
}

fn per_packet_chart(rows: &[PerPacketRow]) -> Chart {
    let series = |name: &str, pick: fn(&PerPacketRow) -> f64| Series {
        name: name.to_string(),
        points: rows
            .iter()
            .map(|r| (f64::from(r.services), pick(r)))
            .collect(),
    };
    Chart {
        title: "service-lb per-packet cost (net of the harness) vs number of services".to_string(),
        x_label: "services (10 backends each, log scale)".to_string(),
        y_label: "ns per packet".to_string(),
        series: vec![
            series("new-flow DNAT", |r| r.new_flow.net_ns()),
            series("established hit", |r| r.established.net_ns()),
            series("reply reverse NAT", |r| r.reply.net_ns()),
            series("pass-through", |r| r.pass.net_ns()),
        ],
    }
}

/// `slb-bench --only control-plane|memory`: the daemon's full sync, RSS and BPF map
/// memory (total and per map) at each N of `services`, and `changes` EndpointSlice
/// changes -> map latency at each N; printed, not written.
pub fn run_control_plane(services: &[u32], changes: u32, bound: Duration) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    // The fake API server keeps every object as JSON in memory: up to 100k by default,
    // `SLB_BENCH_API_MAX` to change.
    let api_max: u32 = std::env::var("SLB_BENCH_API_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ms =
        |d: Option<Duration>| d.map_or("–".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
    for &n in services {
        eprintln!("slb-bench: daemon sync with {n} services, {changes} changes");
        match control_plane::measure(n, changes, bound) {
            Ok(row) => {
                println!(
                    "services {n}: full sync {:.3} s (daemon CPU {:.3} s), RSS {:.1} MiB, BPF \
                     maps {:.1} MiB; change -> map ({} changes, manifests) p50 {} ms, p99 {} \
                     ms, max {} ms",
                    row.sync.as_secs_f64(),
                    row.sync_cpu.as_secs_f64(),
                    row.rss_kib as f64 / 1024.0,
                    row.map_memlock_bytes as f64 / (1024.0 * 1024.0),
                    row.changes.len(),
                    ms(quantile(&row.changes, 0.5)),
                    ms(quantile(&row.changes, 0.99)),
                    ms(row.changes.last().copied()),
                );
                for (name, bytes) in &row.per_map {
                    println!(
                        "  {name:<16} {:>9.2} MiB",
                        *bytes as f64 / (1024.0 * 1024.0)
                    );
                }
                rows.push(row);
            }
            Err(e) => failures.push(note(&e, &format!("daemon with {n} services"))),
        }
        if changes == 0 || n > api_max {
            continue;
        }
        eprintln!("slb-bench: API source with {n} services, {changes} changes");
        match control_plane::measure_api(n, changes, bound) {
            Ok(latencies) => println!(
                "services {n}: change -> map ({} changes, API watch) p50 {} ms, p99 {} ms, \
                 max {} ms",
                latencies.len(),
                ms(quantile(&latencies, 0.5)),
                ms(quantile(&latencies, 0.99)),
                ms(latencies.last().copied()),
            ),
            Err(e) => failures.push(note(&e, &format!("API source with {n} services"))),
        }
    }
    for f in &failures {
        println!("failed: {f}");
    }
    anyhow::ensure!(failures.is_empty(), "{} rows failed", failures.len());
    Ok(())
}

/// `slb-bench --only socket-lb`: only the end-to-end rows of the socket LB (the pod-IP
/// floor, the tc path, the socket path) at each N of `services`; printed, not written.
pub fn run_socket_lb(
    services: &[u32],
    bounds: e2e::LoopBounds,
    targets: &[Target],
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &n in services {
        for (target, result) in e2e::measure_all(targets, n, bounds) {
            match result {
                Ok(row) => rows.push(row),
                Err(e) => failures.push(note(&e, &format!("{} with {n} services", target.name()))),
            }
        }
        // Printed after each N, so a long run shows what it has.
        e2e_table(&rows);
    }
    for f in &failures {
        println!("failed: {f}");
    }
    anyhow::ensure!(failures.is_empty(), "{} rows failed", failures.len());
    Ok(())
}

/// `slb-bench --only per-packet`: only the per-packet section at each N of `services`
/// (with `config`'s counts); printed, not written.
pub fn run_per_packet(config: &BenchConfig, services: &[u32]) -> anyhow::Result<()> {
    let config = BenchConfig {
        per_packet_services: services.to_vec(),
        ..config.clone()
    };
    per_packet_section(&config).map(|_| ())
}

/// `slb-bench --only e2e-100k`: the floor and the tc path at each N of `services`;
/// printed, not written. kube-proxy's layouts are not run (see `KUBE_PROXY_AT_100K`).
pub fn run_e2e_tc(services: &[u32], bounds: e2e::LoopBounds) -> anyhow::Result<()> {
    let targets = [Target::Direct, Target::ServiceLb];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &n in services {
        for (target, result) in e2e::measure_all(&targets, n, bounds) {
            match result {
                Ok(row) => rows.push(row),
                Err(e) => failures.push(note(&e, &format!("{} with {n} services", target.name()))),
            }
        }
        e2e_table(&rows);
    }
    println!("kube-proxy at 100,000 services: {KUBE_PROXY_AT_100K}");
    for f in &failures {
        println!("failed: {f}");
    }
    anyhow::ensure!(failures.is_empty(), "{} rows failed", failures.len());
    Ok(())
}

/// `slb-bench --only ct-cleanup`: one UDP endpoint change with `entries` UDP conntrack
/// entries present (see `ct_cleanup`); printed, not written.
pub fn run_ct_cleanup(entries: u32) -> anyhow::Result<()> {
    let rows = super::ct_cleanup::measure(entries)?;
    let mut section = Section::new(
        "Control plane: one UDP endpoint change with a full conntrack table",
        "The daemon's Syncer on the real maps (nothing attached), a UDP ClusterIP of 10 \
         endpoints and N entries of its flows in the UDP conntrack map; one endpoint stops \
         serving and the incremental sync (`Syncer::apply`) is timed once.",
        &[
            "case",
            "conntrack entries",
            "sync (ms)",
            "entries flushed",
            "backends deleted",
        ],
    );
    for row in rows {
        section.push(vec![
            row.case.into(),
            count(u64::from(row.conntrack_entries)),
            format!("{:.2}", row.sync.as_secs_f64() * 1e3),
            count(row.flushed as u64),
            count(row.backends_retired as u64),
        ]);
    }
    println!("{}", section.text());
    Ok(())
}

/// Why the end-to-end table has no kube-proxy rows at 100k Services.
pub const KUBE_PROXY_AT_100K: &str = "not run: the rule generator holds at most 32,000 \
    ClusterIPs (one /17), and the ruleset loads measured here grow faster than linearly \
    (1k -> 10k Services: iptables-nft-restore 0.75 -> 16.2 s, iptables-legacy-restore \
    0.35 -> 9.4 s, nft -f 0.97 -> 149 s, docs/benchmarks.md of 2026-11-23), which puts \
    100k at minutes to hours per load";

fn e2e_section(config: &BenchConfig, failures: &mut Vec<String>) -> anyhow::Result<Vec<E2eRow>> {
    let mut rows = Vec::new();
    for &services in &config.e2e_services {
        for (target, result) in e2e::measure_all(&Target::ALL, services, config.e2e_bounds) {
            match result {
                Ok(row) => rows.push(row),
                Err(e) => failures.push(note(
                    &e,
                    &format!("{} with {services} services", target.name()),
                )),
            }
        }
    }
    Ok(rows)
}

fn floor_of(rows: &[E2eRow], services: u32) -> Option<&E2eRow> {
    rows.iter()
        .find(|r| r.services == services && r.target == Target::Direct)
}

fn ratio(value: Duration, base: Duration) -> String {
    if base.is_zero() {
        "–".into()
    } else {
        format!("{:.2}×", value.as_secs_f64() / base.as_secs_f64())
    }
}

fn e2e_table(rows: &[E2eRow]) -> Section {
    let mut section = Section::new(
        "End to end: connect + request/response",
        "A one-node cluster of namespaces per row (client pod, 4 backend pods on the same \
         node); the clusters of one N (one per target) are built first and measured side by side. \
         Sequential connections from the client: connect, read the server's greeting, one \
         request line and its answer, close; warm-up first, then the measured count spread \
         over 10 rounds that take each target in turn (so a slow spell of the machine falls \
         on all of them alike; bounded in time). service-lb: the daemon with N services (N-1 with 10 unreachable \
         endpoints, the measured one last with the 4 pods). kube-proxy: its generated ruleset \
         for N services loaded in the node namespace, the measured service LAST in \
         KUBE-SERVICES and its 10 endpoints pointed at the 4 pods; the iptables layout on \
         both of iptables' back ends (nf_tables and legacy). Ratios against the pod-IP \
         floor measured in the same run at the same N.",
        &[
            "target",
            "services",
            "p50 (µs)",
            "p99 (µs)",
            "conn/s (sequential)",
            "p50 vs floor",
            "p99 vs floor",
            "connections",
            "errors",
        ],
    );
    let us = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
    for row in rows {
        let floor = floor_of(rows, row.services);
        section.push(vec![
            row.target.name().into(),
            count(u64::from(row.services)),
            us(row.p50),
            us(row.p99),
            format!("{:.0}", row.connections_per_s),
            floor.map_or("–".into(), |f| ratio(row.p50, f.p50)),
            floor.map_or("–".into(), |f| ratio(row.p99, f.p99)),
            count(row.connections as u64),
            row.errors.to_string(),
        ]);
    }
    println!("{}", section.text());
    section
}

/// service-lb's connect + request/response latency against the floor and each kube-proxy
/// layout (same run, same N).
fn latency_ratio_table(e2e: &[E2eRow]) -> Section {
    let mut section = Section::new(
        "Headline: service-lb latency against the floor and each kube-proxy layout",
        "service-lb's connect + request/response p50 and p99 divided by the other target's, \
         at the same N in the same run (from the end-to-end table below; below 1: service-lb \
         is faster).",
        &["service-lb against", "services", "p50 ratio", "p99 ratio"],
    );
    for ours in e2e.iter().filter(|r| r.target == Target::ServiceLb) {
        for theirs in e2e
            .iter()
            .filter(|r| r.services == ours.services && r.target != Target::ServiceLb)
        {
            section.push(vec![
                theirs.target.name().into(),
                count(u64::from(ours.services)),
                ratio(ours.p50, theirs.p50),
                ratio(ours.p99, theirs.p99),
            ]);
        }
    }
    println!("{}", section.text());
    section
}

/// service-lb's full sync against each kube-proxy ruleset load of the same N.
fn sync_ratio_table(sync: &[SyncRow], loads: &[(u32, Layout, LoadTime)]) -> Section {
    let mut section = Section::new(
        "Headline: service-lb full sync against each kube-proxy ruleset load",
        "service-lb's time to program N services (full sync) divided by the time to load the \
         same N services in kube-proxy's layout (from the control-plane table below; below 1: \
         service-lb is faster).",
        &["service-lb against", "services", "ratio"],
    );
    for ours in sync {
        for layout in Layout::ALL {
            let Some(theirs) = load_of(loads, ours.services, layout).and_then(LoadTime::seconds)
            else {
                continue;
            };
            if theirs > 0.0 {
                section.push(vec![
                    layout.name().into(),
                    count(u64::from(ours.services)),
                    format!("{:.2}×", ours.sync.as_secs_f64() / theirs),
                ]);
            }
        }
    }
    println!("{}", section.text());
    section
}

fn bulk_table(rows: &[E2eRow], config: &BenchConfig) -> Section {
    let mut section = Section::new(
        "End to end: bulk throughput (one TCP stream)",
        &format!(
            "The client writes {} MiB over one TCP connection to a sink on a backend pod \
             (directly, or through the ClusterIP via service-lb); Gbit/s until the sink \
             acknowledges the end; the median of 3 streams, taken in turn with the direct one.",
            config.e2e_bounds.bulk_bytes >> 20
        ),
        &["target", "services", "Gbit/s", "vs direct"],
    );
    for row in rows {
        let Some(gbit) = row.bulk_gbit_s else {
            continue;
        };
        let direct = floor_of(rows, row.services).and_then(|f| f.bulk_gbit_s);
        section.push(vec![
            row.target.name().into(),
            count(u64::from(row.services)),
            format!("{gbit:.2}"),
            direct
                .filter(|d| *d > 0.0)
                .map_or("–".into(), |d| format!("{:.2}×", gbit / d)),
        ]);
    }
    println!("{}", section.text());
    section
}

fn e2e_chart(rows: &[E2eRow]) -> Chart {
    Chart {
        title: "Connect + request/response p50 vs services".into(),
        x_label: "services (log scale)".into(),
        y_label: "p50 latency (µs)".into(),
        series: Target::ALL
            .iter()
            .map(|target| Series {
                name: target.name().into(),
                points: rows
                    .iter()
                    .filter(|r| r.target == *target)
                    .map(|r| (f64::from(r.services), r.p50.as_secs_f64() * 1e6))
                    .collect(),
            })
            .collect(),
    }
}

/// A failed measurement for the report: what, and the error chain on one line.
fn note(error: &anyhow::Error, what: &str) -> String {
    eprintln!("slb-bench: {what} failed: {error:#}");
    let text = without_ansi(&format!("{what}: {error:#}"));
    text.chars().take(400).collect()
}

/// `text` without ANSI escape sequences (the daemon's coloured log lines).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::without_ansi;

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(
            without_ansi("\u{1b}[2mlog\u{1b}[0m line \u{1b}[32m INFO\u{1b}[0m"),
            "log line  INFO"
        );
    }
}

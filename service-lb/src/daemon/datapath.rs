//! The data plane's own view for `/metrics`, split by cost so that a scrape costs the same
//! whatever the maps hold (issue 13: no conntrack walk per scrape):
//!
//! - every scrape reads only the programs' per-CPU counters: a fixed-size array (hooks x
//!   reasons), whatever the number of Services or connections;
//! - map entries are sampled by [`run_sampler`], off the scrape path: the service,
//!   backend and reverse-NAT maps (their size follows the cluster's Services, like a sync)
//!   shortly after each sync that changed something and with every conntrack sample; the
//!   conntrack maps (their size follows the connections) every [`CONNTRACK_SAMPLE_INTERVAL`],
//!   counting keys only. `service_lb_map_entries_sampled_timestamp_seconds` says when.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use service_lb_common::maps;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    dataplane::{BpfMaps, Family, MapSizes, MapStore},
    telemetry::metrics::{DatapathCollector, MapFill, PathCounter},
};

/// How often the conntrack maps are counted.
pub const CONNTRACK_SAMPLE_INTERVAL: Duration = Duration::from_secs(30);
/// After a sync, how long the sampler waits (more syncs may follow) before it counts the
/// service maps again.
pub const SERVICE_SAMPLE_DELAY: Duration = Duration::from_secs(1);

/// What the scrape and the sampler read from the data plane.
pub trait DatapathView {
    /// Entries of the service, backend and reverse-NAT maps (a walk: the sampler only).
    fn service_fills(&self) -> Result<Vec<MapFill>, String>;
    /// Entries of the conntrack maps (a walk over every key: the sampler's timer only).
    fn conntrack_fills(&self) -> Result<Vec<MapFill>, String>;
    /// The programs' counters summed over CPUs (fixed size: every scrape).
    fn counters(&self) -> Result<Vec<PathCounter>, String>;
}

/// The pinned maps under a bpffs folder, opened for each read (a handful of syscalls).
pub struct PinnedView {
    pub bpffs: PathBuf,
    pub sizes: MapSizes,
}

impl PinnedView {
    fn open(&self) -> Result<BpfMaps, String> {
        BpfMaps::open_pinned(&self.bpffs).map_err(|e| e.to_string())
    }
}

impl DatapathView for PinnedView {
    fn service_fills(&self) -> Result<Vec<MapFill>, String> {
        service_fills(&self.open()?, &self.sizes).map_err(|e| e.to_string())
    }

    fn conntrack_fills(&self) -> Result<Vec<MapFill>, String> {
        let [t4, a4, t6, a6] = self.open()?.conntrack_lens().map_err(|e| e.to_string())?;
        Ok(vec![
            fill(maps::CT4_TCP, t4, self.sizes.ct_tcp),
            fill(maps::CT4_ANY, a4, self.sizes.ct_any),
            fill(maps::CT6_TCP, t6, self.sizes.ct_tcp),
            fill(maps::CT6_ANY, a6, self.sizes.ct_any),
        ])
    }

    fn counters(&self) -> Result<Vec<PathCounter>, String> {
        let counters = self.open()?.counters().map_err(|e| e.to_string())?;
        Ok(counters
            .into_iter()
            .map(|c| PathCounter {
                hook: c.hook.name(),
                reason: c.reason.name(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect())
    }
}

/// Entries of the service, backend and reverse-NAT maps of both families.
pub fn service_fills<M: MapStore>(
    store: &M,
    sizes: &MapSizes,
) -> Result<Vec<MapFill>, crate::dataplane::StoreError> {
    let mut fills = Vec::new();
    for family in Family::ALL {
        fills.push(fill(
            family.services_map(),
            store.list_services(family)?.len(),
            sizes.services,
        ));
        fills.push(fill(
            family.backends_map(),
            store.list_backends(family)?.len(),
            sizes.backends,
        ));
        fills.push(fill(
            family.revnat_map(),
            store.list_revnat(family)?.len(),
            sizes.revnat,
        ));
    }
    Ok(fills)
}

pub fn fill(map: &'static str, entries: usize, capacity: u32) -> MapFill {
    MapFill {
        map,
        entries: u64::try_from(entries).unwrap_or(u64::MAX),
        capacity: u64::from(capacity),
    }
}

/// The last sample of each group; a group that failed keeps its previous sample.
#[derive(Default)]
pub struct Sampler {
    service: Vec<MapFill>,
    conntrack: Vec<MapFill>,
}

impl Sampler {
    /// Samples the service maps, and the conntrack maps when `conntrack`, then publishes.
    pub fn sample<V: DatapathView + ?Sized>(
        &mut self,
        view: &V,
        conntrack: bool,
        collector: &DatapathCollector,
    ) {
        match view.service_fills() {
            Ok(f) => self.service = f,
            Err(error) => warn!(%error, "sampling the service maps' entries"),
        }
        if conntrack {
            match view.conntrack_fills() {
                Ok(f) => self.conntrack = f,
                Err(error) => warn!(%error, "sampling the conntrack maps' entries"),
            }
        }
        let all = self
            .service
            .iter()
            .chain(&self.conntrack)
            .cloned()
            .collect();
        collector.set_maps(all, SystemTime::now());
    }
}

/// Samples at once, then after each sync (`synced`, with [`SERVICE_SAMPLE_DELAY`]) and every
/// [`CONNTRACK_SAMPLE_INTERVAL`], until `cancel`. Each sample runs in a blocking task.
pub async fn run_sampler<V: DatapathView + Send + Sync + 'static>(
    view: Arc<V>,
    collector: DatapathCollector,
    synced: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut sampler = Sampler::default();
    let mut conntrack_due = Instant::now();
    loop {
        let conntrack = Instant::now() >= conntrack_due;
        if conntrack {
            conntrack_due = Instant::now() + CONNTRACK_SAMPLE_INTERVAL;
        }
        let (v, c) = (view.clone(), collector.clone());
        let joined = tokio::task::spawn_blocking(move || {
            sampler.sample(v.as_ref(), conntrack, &c);
            sampler
        })
        .await;
        sampler = match joined {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "the map sampler panicked; starting over");
                Sampler::default()
            }
        };
        debug!(conntrack, "sampled the maps' entries");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(conntrack_due.into()) => {}
            () = synced.notified() => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(SERVICE_SAMPLE_DELAY) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{
        dataplane::{BackendSpec, FakeMaps, FrontendKey, FrontendSpec, L4Proto, ServiceWriter},
        telemetry::http,
    };

    const CT_ENTRIES: usize = 200_000;

    /// A data plane with a few Services and a big conntrack map; counts what is walked.
    struct CountingView {
        maps: FakeMaps,
        conntrack: Vec<u8>,
        conntrack_visits: AtomicUsize,
        counter_reads: AtomicUsize,
    }

    impl DatapathView for CountingView {
        fn service_fills(&self) -> Result<Vec<MapFill>, String> {
            service_fills(&self.maps, &MapSizes::default()).map_err(|e| e.to_string())
        }
        fn conntrack_fills(&self) -> Result<Vec<MapFill>, String> {
            let mut n = 0;
            for proto in &self.conntrack {
                self.conntrack_visits.fetch_add(1, Ordering::Relaxed);
                n += usize::from(*proto == 6);
            }
            Ok(vec![fill(maps::CT4_TCP, n, 1 << 20)])
        }
        fn counters(&self) -> Result<Vec<PathCounter>, String> {
            self.counter_reads.fetch_add(1, Ordering::Relaxed);
            Ok(vec![PathCounter {
                hook: "from_pod",
                reason: "dnat_new_flow",
                packets: 5,
                bytes: 500,
            }])
        }
    }

    fn view() -> CountingView {
        let mut w = ServiceWriter::open(FakeMaps::new()).expect("opens");
        for i in 0..3u8 {
            w.upsert(&FrontendSpec {
                key: FrontendKey {
                    addr: format!("198.19.0.{}", 10 + i).parse().expect("ip"),
                    port: 80,
                    proto: L4Proto::Tcp,
                    scope: 0,
                },
                backends: vec![BackendSpec {
                    addr: format!("198.18.1.{}:8080", 2 + i).parse().expect("addr"),
                    state: 0,
                    local: false,
                }],
                flags: 0,
                affinity_timeout_s: 0,
                source_ranges: Vec::new(),
            })
            .expect("upserts");
        }
        CountingView {
            maps: w.into_store(),
            conntrack: vec![6; CT_ENTRIES],
            conntrack_visits: AtomicUsize::new(0),
            counter_reads: AtomicUsize::new(0),
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_scrape_reads_the_counters_and_walks_no_map() {
        let view = view();
        let mut registry = Registry::default();
        let collector = DatapathCollector::register(&mut registry);
        let mut sampler = Sampler::default();
        sampler.sample(&view, true, &collector);
        let walked = view.conntrack_visits.load(Ordering::Relaxed);
        assert_eq!(
            walked, CT_ENTRIES,
            "one sample walks the conntrack map once"
        );
        let lists = view.maps.list_calls.get();

        for _ in 0..50 {
            let text = http::scrape(&registry, &collector, view.counters()).expect("encodes");
            assert_eq!(
                value(&text, "service_lb_map_entries{map=\"SLB_CT4_TCP_V1\"}"),
                Some(CT_ENTRIES as f64)
            );
            // 3 masters + 3 slots.
            assert_eq!(
                value(&text, "service_lb_map_entries{map=\"SLB_SVC4_V1\"}"),
                Some(6.0)
            );
            assert_eq!(
                value(
                    &text,
                    "service_lb_datapath_packets_total{hook=\"from_pod\",reason=\"dnat_new_flow\"}"
                ),
                Some(5.0)
            );
        }
        assert_eq!(
            view.conntrack_visits.load(Ordering::Relaxed),
            walked,
            "scrapes walked the conntrack map"
        );
        assert_eq!(view.maps.list_calls.get(), lists, "scrapes listed a map");
        assert_eq!(view.counter_reads.load(Ordering::Relaxed), 50);

        // A sample without the conntrack timer leaves the conntrack count as it was.
        sampler.sample(&view, false, &collector);
        assert_eq!(view.conntrack_visits.load(Ordering::Relaxed), walked);
        let text = http::scrape(&registry, &collector, view.counters()).expect("encodes");
        assert_eq!(
            value(&text, "service_lb_map_entries{map=\"SLB_CT4_TCP_V1\"}"),
            Some(CT_ENTRIES as f64)
        );
        assert!(value(&text, "service_lb_map_entries_sampled_timestamp_seconds").is_some());
    }

    #[test]
    fn a_failed_counter_read_is_reported_and_the_samples_stay() {
        let view = view();
        let mut registry = Registry::default();
        let collector = DatapathCollector::register(&mut registry);
        Sampler::default().sample(&view, true, &collector);
        let text = http::scrape(&registry, &collector, Err("gone".into())).expect("encodes");
        assert_eq!(value(&text, "service_lb_datapath_read_errors"), Some(1.0));
        assert_eq!(
            value(&text, "service_lb_map_entries{map=\"SLB_SVC4_V1\"}"),
            Some(6.0)
        );
    }
}

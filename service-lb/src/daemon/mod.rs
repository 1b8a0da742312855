//! `service-lb run`: the daemon.
//!
//! Start-up, in this order: bind the admin ports (a busy port fails before anything is
//! touched); load the data plane (maps reused from their pins); subscribe to link events,
//! then attach to the interfaces present (replacing programs inside pinned links: no
//! gap); reopen the maps for writing (ids recovered); start the source; run the loop.
//!
//! Stopping (SIGTERM/SIGINT) leaves programs attached and maps pinned: the data plane
//! keeps serving; only `service-lb cleanup` removes it.
//!
//! - `config`: typed, validated configuration (usage errors);
//! - `reconcile`: events -> state -> syncs, with metrics and health;
//! - `event_loop`: timing (coalescing, periodic full resync, heartbeat);
//! - `datapath`: what a scrape reads from the pinned maps, and the map-entries sampler;
//! - `events`: Kubernetes Events (start on the Node, failed syncs on Services).

pub mod config;
pub mod datapath;
pub mod event_loop;
pub mod events;
pub mod node_addresses;
pub mod policy;
pub mod reconcile;
pub mod service_cidrs;

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use std::{io, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{ConfigError, DaemonConfig, NodeNameSources, SourceConfig};
use datapath::DatapathView as _;
pub use event_loop::{LoopError, LoopTiming};
pub use reconcile::{ReconcileError, Reconciler, SyncDone};

use crate::{
    dataplane::sync::Syncer,
    dataplane::{
        link_watch::{self, Attacher, LinkWatch, LinkWatchError},
        BpfMaps, Dataplane, DataplaneError, ServiceWriter, WriteError,
    },
    source::{self, SourceEvent},
    telemetry::{
        health::Health,
        http::{self, DatapathReader, HttpError},
        metrics::{DatapathCollector, Metrics},
        policy_metrics::PolicyMetrics,
        process::ProcessCollector,
        service_health::ServiceHealthServers,
    },
};

/// Room for a relist of a big cluster without blocking the source for long.
const EVENT_QUEUE: usize = 4096;
/// How long shutdown waits for the servers and the source to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Worker threads of the runtime (the daemon's work is mostly waiting).
const WORKERS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("installing the signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    LinkWatch(#[from] LinkWatchError),
    #[error("reading what the maps hold: {0}")]
    Writer(#[from] WriteError),
    #[error("the source failed: {0}")]
    Source(String),
    #[error("programming the service CIDRs: {0}")]
    ServiceCidrs(#[source] crate::dataplane::StoreError),
    #[error(transparent)]
    Loop(#[from] LoopError),
}

/// Builds the runtime (multi-thread, two workers) and runs the daemon until a signal.
pub fn run_blocking(config: DaemonConfig) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("service-lb")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run(config))
}

/// Runs the daemon until SIGTERM/SIGINT (Ok) or a fatal error.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let cancel = CancellationToken::new();
    let signals = spawn_signal_handler(cancel.clone())?;
    let result = run_until(config, cancel.clone()).await;
    signals.abort();
    result
}

/// Runs the daemon until `cancel` fires.
pub async fn run_until(config: DaemonConfig, cancel: CancellationToken) -> Result<(), DaemonError> {
    info!(
        node = %config.node_name,
        source = %config.source.describe(),
        bpffs = %config.dataplane.bpffs.display(),
        "starting"
    );
    let metrics_listener = http::bind(config.metrics_addr, "metrics").await?;
    let health_listener = http::bind(config.health_addr, "health").await?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let policy_metrics = PolicyMetrics::register(&mut registry);
    let collector = DatapathCollector::register(&mut registry);
    let health = Arc::new(Health::new());
    health.beat(std::time::Instant::now());
    // The initial list is the first pending change: /healthz turns 503 if it never lands.
    health.change_queued(std::time::SystemTime::now());

    ProcessCollector::register(&mut registry);
    let view = Arc::new(datapath::PinnedView {
        bpffs: config.dataplane.bpffs.clone(),
        sizes: config.dataplane.sizes,
    });
    let scrape_view = view.clone();
    let read_datapath: DatapathReader = Arc::new(move || scrape_view.counters());
    let synced = Arc::new(tokio::sync::Notify::new());

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    tasks.push(spawn_server(
        health_listener,
        http::health_router(health.clone(), config.health_timeout()),
        "health",
        cancel.clone(),
    ));
    tasks.push(spawn_server(
        metrics_listener,
        http::metrics_router(Arc::new(registry), collector.clone(), read_datapath),
        "metrics",
        cancel.clone(),
    ));

    let mut dataplane = Dataplane::open(&config.dataplane)?;
    for map in dataplane.recreated_maps() {
        warn!(
            ?map,
            "recreated a pinned map whose layout differed; its entries are lost"
        );
    }
    match &config.socket_lb_cgroup {
        Some(cgroup) => {
            let attached = dataplane.attach_sock(cgroup)?;
            info!(
                cgroup = %cgroup.display(),
                programs = attached.len(),
                replaced_in_pinned_links = attached.iter().filter(|a| a.replaced).count(),
                "socket LB attached"
            );
        }
        None => {
            let detached = crate::dataplane::sock::detach_all(&config.dataplane.bpffs)?;
            if detached > 0 {
                info!(detached, "socket LB off: its links were detached");
            }
        }
    }
    // Subscribe before listing: an interface created in between is seen either way.
    let watch = LinkWatch::subscribe()?;
    let mut attacher = Attacher::new(
        dataplane,
        &config.pod_interfaces,
        &config.external_interfaces,
    )?;
    let attached = attacher.attach_present()?;
    let replaced = attached.iter().filter(|a| a.replaced).count();
    info!(
        attachments = attached.len(),
        replaced_in_pinned_links = replaced,
        interfaces = attacher.attached().len(),
        "programs attached"
    );
    health.set_attached();
    let interface_metrics = metrics.clone();
    tasks.push(tokio::spawn(link_watch::run(
        watch,
        attacher,
        cancel.clone(),
        move |_| interface_metrics.count_interface_failure(),
    )));

    let mut maps = BpfMaps::open_pinned(&config.dataplane.bpffs)?;
    crate::dataplane::program_service_cidrs(&mut maps, &config.service_cidrs)
        .map_err(DaemonError::ServiceCidrs)?;
    let mut writer = ServiceWriter::open(maps)?;
    writer.set_maglev_table_size(config.maglev_table_size);
    let mut syncer = Syncer::new(writer);
    if config.socket_lb_cgroup.is_some() {
        syncer = syncer.with_socket_reaper(Box::new(
            crate::dataplane::sock_destroy::SockReaper::new(config.dataplane.bpffs.clone()),
        ));
    }
    let service_health = ServiceHealthServers::new(
        None,
        health.clone(),
        config.health_timeout(),
        cancel.clone(),
    );
    let mut reconciler = Reconciler::new(syncer, config.node_name.clone(), metrics, health.clone())
        .with_service_cidr_flag(&config.service_cidrs)
        .notify_on_sync(synced.clone())
        .with_events(event_sink(&config).await)
        .with_nodeport_addresses(config.nodeport_addresses.clone())
        .with_lb_algorithm(config.lb_algorithm)
        .with_service_health(service_health)
        .with_interface_addresses(interface_address_reader(&config)?);
    // Map entries for /metrics, sampled off the scrape path (after syncs, and on a timer
    // for conntrack); the maps exist from here on.
    tasks.push(tokio::spawn(datapath::run_sampler(
        view,
        collector,
        synced,
        cancel.clone(),
    )));
    if config.network_policy {
        let snapshot = policy::snapshot_path(&config.dataplane.bpffs);
        info!(snapshot = %snapshot.display(), "network policy on");
        reconciler = reconciler.with_policy(policy::PolicySync::new(
            &config.node_name,
            policy::default_sink(&config.dataplane.bpffs)?,
            policy_metrics,
            Some(snapshot),
        ));
    } else {
        info!("network policy off: no policy is compiled or programmed");
    }

    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    let source_task = tokio::spawn(run_source(config.source.clone(), tx, cancel.clone()));
    info!("waiting for the source's first complete list before touching any map");

    let timing = LoopTiming {
        min_sync_interval: config.min_sync_interval,
        resync_interval: config.resync_interval,
    };
    let result = event_loop::run(
        &mut reconciler,
        &mut rx,
        timing,
        health.clone(),
        cancel.clone(),
    )
    .await;
    health.stopped();
    cancel.cancel();
    drop(rx);

    let source_result = match tokio::time::timeout(SHUTDOWN_GRACE, source_task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("source task: {e}")),
        Err(_) => Err("the source did not stop in time".to_owned()),
    };
    for task in tasks {
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            warn!("a server did not stop in time");
        }
    }
    info!(
        bpffs = %config.dataplane.bpffs.display(),
        "stopped; programs stay attached and maps stay pinned, so the data plane keeps serving \
         what it was last given (`service-lb cleanup` removes it)"
    );
    match (result, source_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(LoopError::SourceEnded), Err(e)) => Err(DaemonError::Source(e)),
        (Err(e), _) => Err(e.into()),
        (Ok(()), Err(e)) => {
            warn!(error = %e, "the source ended with an error during shutdown");
            Ok(())
        }
    }
}

/// Events through the API with the API source (its client), log lines otherwise.
async fn event_sink(config: &DaemonConfig) -> Arc<dyn events::EventSink> {
    let SourceConfig::Kube(kube) = &config.source else {
        return Arc::new(events::LogEvents);
    };
    match source::kube_api::client(kube.kubeconfig.as_deref()).await {
        Ok(client) => Arc::new(events::KubeEvents::new(client, &config.node_name)),
        Err(e) => {
            warn!(
                error = format!("{e:#}"),
                "no API client for Kubernetes Events; logging them"
            );
            Arc::new(events::LogEvents)
        }
    }
}

/// Reads the addresses of the `--external-interfaces` (a failure reads as none, logged).
fn interface_address_reader(
    config: &DaemonConfig,
) -> Result<reconcile::InterfaceAddresses, DaemonError> {
    let roles = crate::dataplane::interfaces::Roles::new(&[], &config.external_interfaces)?;
    Ok(Box::new(move || {
        crate::dataplane::interfaces::external_addresses(&roles).unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the external interfaces' addresses");
            Vec::new()
        })
    }))
}

async fn run_source(
    source: SourceConfig,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let result = match source {
        SourceConfig::Kube(c) => source::kube_api::run(c, tx, cancel).await,
        SourceConfig::Manifests(c) => source::manifests::run(c, tx, cancel).await,
    };
    result.map_err(|e| {
        error!(error = format!("{e:#}"), "the source failed");
        format!("{e:#}")
    })
}

fn spawn_server(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    what: &'static str,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = http::serve(listener, router, what, cancel).await {
            error!(error = %e, "admin server stopped");
        }
    })
}

fn spawn_signal_handler(cancel: CancellationToken) -> Result<JoinHandle<()>, DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "stopping; the data plane stays in place");
        cancel.cancel();
    }))
}

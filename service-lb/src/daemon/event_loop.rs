//! The daemon loop: receive source events, take everything queued, then sync (bursts
//! coalesce: one sync takes every change queued when it starts; an optional minimum
//! interval between syncs, 0 by default), resync fully on a timer, beat for `/livez`.

use std::{future, sync::Arc, time::Duration};

use tokio::{
    sync::mpsc,
    time::{interval, interval_at, sleep_until, Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::reconcile::{ReconcileError, Reconciler};
use crate::{
    dataplane::MapStore,
    source::SourceEvent,
    telemetry::{health::Health, metrics::SyncKind},
};

/// How often the loop beats when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Events taken off the channel before a sync is considered again (keeps a flood of
/// events from starving the timers).
const MAX_EVENTS_PER_TURN: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct LoopTiming {
    pub min_sync_interval: Duration,
    pub resync_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("the source stopped sending events")]
    SourceEnded,
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// Runs until `cancel` fires (Ok) or the source ends or the writer is lost (Err).
pub async fn run<M: MapStore + Send + 'static>(
    reconciler: &mut Reconciler<M>,
    events: &mut mpsc::Receiver<SourceEvent>,
    timing: LoopTiming,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<(), LoopError> {
    let mut last_sync: Option<Instant> = None;
    let mut resync = interval_at(
        Instant::now() + timing.resync_interval,
        timing.resync_interval,
    );
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beat = interval(HEARTBEAT);
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        health.beat(std::time::Instant::now());
        let sync_at = reconciler
            .wants_sync()
            .then(|| last_sync.map_or_else(Instant::now, |t| t + timing.min_sync_interval));
        let sync_due = async {
            match sync_at {
                Some(at) => sleep_until(at).await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            // A due sync goes before more events, so a steady stream cannot starve it.
            biased;
            _ = cancel.cancelled() => {
                info!("stop requested");
                return Ok(());
            }
            _ = sync_due => {
                let done = reconciler.sync().await?;
                last_sync = Some(Instant::now());
                if done.is_some_and(|d| d.kind == SyncKind::Full) {
                    // The maps were just compared in full: the next resync is a whole
                    // period away (a first full sync longer than the period would
                    // otherwise be followed at once by another, and changes wait).
                    resync.reset();
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(LoopError::SourceEnded);
                };
                reconciler.on_event(event);
                // Take what is already queued: one sync for the whole burst.
                for _ in 0..MAX_EVENTS_PER_TURN {
                    match events.try_recv() {
                        Ok(event) => reconciler.on_event(event),
                        Err(_) => break,
                    }
                }
            }
            _ = resync.tick() => {
                if reconciler.resync().await?.is_some() {
                    last_sync = Some(Instant::now());
                    // Counted from the end of this one, not its start.
                    resync.reset();
                }
            }
            _ = beat.tick() => {}
        }
    }
}

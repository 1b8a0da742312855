//! Health of the daemon: what `/healthz` (kube-proxy compatible), `/livez` and `/readyz`
//! answer. The state is written by the daemon loop; the verdicts are pure functions of a
//! [`HealthSnapshot`] and the current time, so they are unit-tested without a server.
//!
//! kube-proxy's rule for `/healthz`: healthy unless a change has been pending (received
//! but not yet written) for longer than the health timeout (2x the sync period); the
//! body is `{"lastUpdated": ..., "currentTime": ..., "nodeEligible": ...}` and the code is
//! 200 or 503. A node that is being deleted, or tainted `ToBeDeletedByClusterAutoscaler`,
//! is not eligible (503 too, as kube-proxy does, so load balancers drain it). `/livez` is
//! the same rule without the node (body `{"lastUpdated": ..., "currentTime": ...}`), and
//! besides needs the daemon loop to beat.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

/// `/livez` fails when the loop has not beaten for this long.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Go's zero `time.Time`, which kube-proxy prints before its first update.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Everything the endpoints look at, copied out of the shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// When the maps were last written to match the cluster (any sync).
    pub last_updated: Option<SystemTime>,
    /// The oldest change received and not yet applied.
    pub oldest_pending: Option<SystemTime>,
    /// Programs attached to the interfaces present at start.
    pub attached: bool,
    /// The first full sync (after every source listed everything) was applied.
    pub first_full_sync: bool,
    /// This node is not being deleted.
    pub node_eligible: bool,
    /// Last time the daemon loop went round.
    pub heartbeat: Option<Instant>,
    /// The loop has stopped (shutdown in progress).
    pub stopped: bool,
}

impl Default for HealthSnapshot {
    fn default() -> Self {
        Self {
            last_updated: None,
            oldest_pending: None,
            attached: false,
            first_full_sync: false,
            node_eligible: true,
            heartbeat: None,
            stopped: false,
        }
    }
}

/// kube-proxy's `/healthz` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthzBody {
    pub last_updated: String,
    pub current_time: String,
    pub node_eligible: bool,
}

/// HTTP status and body of `/healthz` at `now`, with kube-proxy's `timeout`.
pub fn healthz(
    snapshot: &HealthSnapshot,
    now: SystemTime,
    timeout: Duration,
) -> (u16, HealthzBody) {
    let healthy = proxy_healthy(snapshot, now, timeout) && snapshot.node_eligible;
    let body = HealthzBody {
        last_updated: snapshot
            .last_updated
            .map_or_else(|| GO_ZERO_TIME.to_owned(), rfc3339),
        current_time: rfc3339(now),
        node_eligible: snapshot.node_eligible,
    };
    (if healthy { 200 } else { 503 }, body)
}

/// kube-proxy's `IsHealthy()`: no change has been pending for `timeout` or longer (the
/// Node's eligibility is not part of it).
pub fn proxy_healthy(snapshot: &HealthSnapshot, now: SystemTime, timeout: Duration) -> bool {
    snapshot
        .oldest_pending
        .is_none_or(|since| now.duration_since(since).unwrap_or_default() < timeout)
}

/// kube-proxy's `/livez` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LivezBody {
    pub last_updated: String,
    pub current_time: String,
}

/// HTTP status and body of `/livez`: kube-proxy's rule (the proxy is healthy, whatever
/// the Node's state; `lastUpdated` is `currentTime` when healthy) and, besides, the daemon
/// loop runs ([`livez`]).
pub fn livez_answer(
    snapshot: &HealthSnapshot,
    now: SystemTime,
    now_instant: Instant,
    timeout: Duration,
) -> (u16, LivezBody) {
    let healthy = proxy_healthy(snapshot, now, timeout) && livez(snapshot, now_instant);
    let last_updated = if healthy {
        rfc3339(now)
    } else {
        snapshot
            .last_updated
            .map_or_else(|| GO_ZERO_TIME.to_owned(), rfc3339)
    };
    let body = LivezBody {
        last_updated,
        current_time: rfc3339(now),
    };
    (if healthy { 200 } else { 503 }, body)
}

/// The daemon loop runs (it beat recently and has not stopped).
pub fn livez(snapshot: &HealthSnapshot, now: Instant) -> bool {
    !snapshot.stopped
        && snapshot
            .heartbeat
            .is_some_and(|beat| now.saturating_duration_since(beat) < LIVENESS_TIMEOUT)
}

/// `/readyz`: programs attached and the first full sync applied.
pub fn readyz(snapshot: &HealthSnapshot) -> bool {
    snapshot.attached && snapshot.first_full_sync && !snapshot.stopped
}

/// RFC 3339 in UTC with nanoseconds when there are any (Go's `time.RFC3339Nano`).
pub fn rfc3339(time: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(time) {
        Ok(ts) => ts.to_string(),
        Err(_) => GO_ZERO_TIME.to_owned(),
    }
}

/// The shared state the loop writes and the HTTP handlers read.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthSnapshot>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, f: impl FnOnce(&mut HealthSnapshot)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_attached(&self) {
        self.update(|s| s.attached = true);
    }

    /// A change arrived at `at`; keeps the oldest one.
    pub fn change_queued(&self, at: SystemTime) {
        self.update(|s| {
            s.oldest_pending.get_or_insert(at);
        });
    }

    /// Every change queued up to now has been written (`full`: a full sync).
    pub fn synced(&self, at: SystemTime, full: bool) {
        self.update(|s| {
            s.last_updated = Some(at);
            s.oldest_pending = None;
            if full {
                s.first_full_sync = true;
            }
        });
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.update(|s| s.node_eligible = eligible);
    }

    pub fn beat(&self, at: Instant) {
        self.update(|s| s.heartbeat = Some(at));
    }

    pub fn stopped(&self) {
        self.update(|s| s.stopped = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(120);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn healthz_is_healthy_without_pending_changes_and_prints_go_zero_time() {
        let (code, body) = healthz(&HealthSnapshot::default(), at(0), TIMEOUT);
        assert_eq!(code, 200);
        assert_eq!(body.last_updated, "0001-01-01T00:00:00Z");
        assert_eq!(body.current_time, "2023-11-14T22:13:20Z");
        assert!(body.node_eligible);
    }

    #[test]
    fn healthz_fails_once_a_change_waits_longer_than_the_timeout() {
        let snapshot = HealthSnapshot {
            last_updated: Some(at(0)),
            oldest_pending: Some(at(10)),
            ..HealthSnapshot::default()
        };
        assert_eq!(healthz(&snapshot, at(129), TIMEOUT).0, 200);
        let (code, body) = healthz(&snapshot, at(130), TIMEOUT);
        assert_eq!(code, 503);
        assert_eq!(body.last_updated, "2023-11-14T22:13:20Z");
    }

    #[test]
    fn healthz_fails_on_a_node_being_deleted() {
        let snapshot = HealthSnapshot {
            node_eligible: false,
            ..HealthSnapshot::default()
        };
        let (code, body) = healthz(&snapshot, at(0), TIMEOUT);
        assert_eq!(code, 503);
        assert!(!body.node_eligible);
    }

    #[test]
    fn healthz_body_has_kube_proxy_field_names() {
        let (_, body) = healthz(&HealthSnapshot::default(), at(0), TIMEOUT);
        let json = serde_json::to_value(&body).expect("serializes");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["currentTime", "lastUpdated", "nodeEligible"]);
    }

    #[test]
    fn readyz_needs_attachment_and_a_full_sync() {
        let health = Health::new();
        assert!(!readyz(&health.snapshot()));
        health.set_attached();
        assert!(!readyz(&health.snapshot()));
        health.synced(at(1), false);
        assert!(
            !readyz(&health.snapshot()),
            "an incremental sync is not enough"
        );
        health.synced(at(2), true);
        assert!(readyz(&health.snapshot()));
        health.stopped();
        assert!(!readyz(&health.snapshot()));
    }

    #[test]
    fn a_sync_clears_the_pending_change_and_keeps_the_oldest_until_then() {
        let health = Health::new();
        health.change_queued(at(5));
        health.change_queued(at(9));
        assert_eq!(health.snapshot().oldest_pending, Some(at(5)));
        health.synced(at(10), false);
        assert_eq!(health.snapshot().oldest_pending, None);
        assert_eq!(health.snapshot().last_updated, Some(at(10)));
    }

    #[test]
    fn livez_answers_as_kube_proxy_and_ignores_the_node() {
        let health = Health::new();
        let beat = Instant::now();
        health.beat(beat);
        health.set_node_eligible(false);
        let (code, body) = livez_answer(&health.snapshot(), at(0), beat, TIMEOUT);
        assert_eq!(code, 200, "a node being deleted is still live");
        assert_eq!(body.last_updated, body.current_time);
        let json = serde_json::to_value(&body).expect("serializes");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["currentTime", "lastUpdated"]);
        health.synced(at(1), true);
        health.change_queued(at(2));
        let (code, body) = livez_answer(&health.snapshot(), at(2) + TIMEOUT, beat, TIMEOUT);
        assert_eq!(code, 503, "a change pending for the whole timeout");
        assert_eq!(body.last_updated, rfc3339(at(1)));
        let (code, _) = livez_answer(&health.snapshot(), at(3), beat + LIVENESS_TIMEOUT, TIMEOUT);
        assert_eq!(code, 503, "the loop stopped beating");
    }

    #[test]
    fn livez_follows_the_heartbeat() {
        let health = Health::new();
        let now = Instant::now();
        assert!(!livez(&health.snapshot(), now), "no beat yet");
        health.beat(now);
        assert!(livez(&health.snapshot(), now + Duration::from_secs(1)));
        assert!(!livez(&health.snapshot(), now + LIVENESS_TIMEOUT));
        health.beat(now);
        health.stopped();
        assert!(!livez(&health.snapshot(), now));
    }
}

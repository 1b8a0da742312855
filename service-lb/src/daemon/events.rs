//! Kubernetes Events (`events.k8s.io/v1`): on this Node when the daemon has applied its
//! first full sync ("service-lb started, version X, N services programmed"), and on a
//! Service whose sync failed (reason `SyncFailed`, the error as the note).
//!
//! Only with the API source (`KubeEvents`, through kube's `events::Recorder`, which turns
//! a repeated event into a series: one create, then patches); with a manifests folder there
//! is no API to write to and `LogEvents` logs the same thing. Rate-limited on our side too:
//! at most one event per object and reason per [`MIN_EVENT_INTERVAL`], so a Service that
//! fails on every sync does not write to the API on every sync. Publishing runs in its own
//! task: a slow or failing API never delays a sync.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client,
};
use tracing::{info, warn};

use crate::model::ServiceName;

/// The shortest time between two events about one object with one reason.
pub const MIN_EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// `reportingController` of our events.
pub const CONTROLLER: &str = "service-lb";
/// Reason of the Node event at start.
pub const REASON_STARTED: &str = "Started";
/// Reason of a Service's failed sync.
pub const REASON_SYNC_FAILED: &str = "SyncFailed";
/// The API's limit for an event's note.
const NOTE_MAX: usize = 1024;

/// Where the daemon's events go.
pub trait EventSink: Send + Sync {
    /// The first full sync is applied: `services` Services are programmed.
    fn started(&self, node: &str, services: usize);
    /// A Service was left at its last good state.
    fn sync_failed(&self, service: &ServiceName, message: &str);
}

/// The text of the start event.
pub fn started_note(services: usize) -> String {
    format!(
        "service-lb started, version {}, {services} services programmed",
        env!("CARGO_PKG_VERSION")
    )
}

/// At most one event per key per interval.
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event with `key` may go out at `now` (and remembers it if so).
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget keys whose interval is over (bounded by the objects that failed lately).
        last.retain(|_, at| now.saturating_duration_since(*at) < self.interval);
        if last.contains_key(key) {
            return false;
        }
        last.insert(key.to_owned(), now);
        true
    }
}

/// Manifests mode: the events as log lines.
pub struct LogEvents;

impl EventSink for LogEvents {
    fn started(&self, node: &str, services: usize) {
        info!(node, reason = REASON_STARTED, "{}", started_note(services));
    }

    fn sync_failed(&self, service: &ServiceName, message: &str) {
        warn!(service = %service, reason = REASON_SYNC_FAILED, "{message}");
    }
}

/// Events through the API.
pub struct KubeEvents {
    recorder: Recorder,
    limiter: Arc<Limiter>,
}

impl KubeEvents {
    /// `node` is this node's name (the reporting instance).
    pub fn new(client: Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(format!("{CONTROLLER}-{node}")),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            limiter: Arc::new(Limiter::new(MIN_EVENT_INTERVAL)),
        }
    }

    fn publish(&self, key: String, event: Event, regarding: ObjectReference) {
        if !self.limiter.allow(&key, Instant::now()) {
            return;
        }
        let recorder = self.recorder.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(%key, "no async runtime: event not sent");
            return;
        };
        runtime.spawn(async move {
            if let Err(error) = recorder.publish(&event, &regarding).await {
                warn!(%key, %error, "could not write a Kubernetes Event");
            }
        });
    }
}

/// Cuts `s` to the API's note limit at a character boundary.
fn note(s: &str) -> String {
    let mut len = s.len().min(NOTE_MAX);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    s[..len].to_owned()
}

impl EventSink for KubeEvents {
    fn started(&self, node: &str, services: usize) {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: REASON_STARTED.into(),
            note: Some(started_note(services)),
            action: "Start".into(),
            secondary: None,
        };
        self.publish(format!("Node/{node}/{REASON_STARTED}"), event, regarding);
    }

    fn sync_failed(&self, service: &ServiceName, message: &str) {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(service.namespace.clone()),
            name: Some(service.name.clone()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: REASON_SYNC_FAILED.into(),
            note: Some(note(&format!(
                "service-lb could not program this Service on this node; it keeps its last good state: {message}"
            ))),
            action: "Sync".into(),
            secondary: None,
        };
        self.publish(
            format!("Service/{service}/{REASON_SYNC_FAILED}"),
            event,
            regarding,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_lets_one_event_per_key_and_interval_through() {
        let limiter = Limiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.allow("Service/default/web/SyncFailed", t0));
        assert!(!limiter.allow(
            "Service/default/web/SyncFailed",
            t0 + Duration::from_secs(59)
        ));
        assert!(limiter.allow(
            "Service/default/api/SyncFailed",
            t0 + Duration::from_secs(1)
        ));
        assert!(limiter.allow(
            "Service/default/web/SyncFailed",
            t0 + Duration::from_secs(60)
        ));
    }

    #[test]
    fn notes_fit_the_api_limit() {
        let long = "é".repeat(600);
        let n = note(&long);
        assert!(n.len() <= NOTE_MAX && n.chars().all(|c| c == 'é'));
        assert_eq!(
            started_note(3),
            format!(
                "service-lb started, version {}, 3 services programmed",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

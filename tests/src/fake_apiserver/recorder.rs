//! Receives a source's events in a test: keeps the order they came in (as short `Seen`
//! values) and mirrors each kind the way a reflector would (a relist replaces the set at
//! `InitDone`). Used by the API-source and the manifests-source tests.

use std::{collections::BTreeMap, fmt, time::Duration};

use anyhow::{anyhow, Context};
use kube::runtime::watcher::Event;
use serde::Serialize;
use serde_json::Value;
use service_lb::source::SourceEvent;
use tokio::sync::mpsc;

/// How long to wait for an event that must come (a hang guard, not a timing check).
pub const EVENT_WAIT: Duration = Duration::from_secs(30);

/// One event as seen by the test: kind, step, object (`namespace/name`, or name for Nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Init(&'static str),
    InitApply(&'static str, String),
    InitDone(&'static str),
    Apply(&'static str, String),
    Delete(&'static str, String),
    /// Origin and reason.
    Rejected(String, &'static str),
}

impl Seen {
    /// The object kind, or "Rejected".
    pub fn kind(&self) -> &'static str {
        match self {
            Seen::Init(k)
            | Seen::InitApply(k, _)
            | Seen::InitDone(k)
            | Seen::Apply(k, _)
            | Seen::Delete(k, _) => k,
            Seen::Rejected(..) => "Rejected",
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Init(k) => write!(f, "{k} Init"),
            Seen::InitApply(k, n) => write!(f, "{k} InitApply {n}"),
            Seen::InitDone(k) => write!(f, "{k} InitDone"),
            Seen::Apply(k, n) => write!(f, "{k} Apply {n}"),
            Seen::Delete(k, n) => write!(f, "{k} Delete {n}"),
            Seen::Rejected(origin, reason) => write!(f, "Rejected {reason} {origin}"),
        }
    }
}

/// What the test knows of one kind.
#[derive(Default)]
struct Mirror {
    objects: BTreeMap<String, Value>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    relisting: Option<BTreeMap<String, Value>>,
    init_done: usize,
}

pub struct Recorder {
    events: mpsc::Receiver<SourceEvent>,
    mirrors: BTreeMap<&'static str, Mirror>,
    /// Every event so far, in order.
    pub seen: Vec<Seen>,
}

impl Recorder {
    pub fn new(events: mpsc::Receiver<SourceEvent>) -> Self {
        Self {
            events,
            mirrors: BTreeMap::new(),
            seen: Vec::new(),
        }
    }

    /// The next event (errors after [`EVENT_WAIT`] or when the source hung up).
    pub async fn next(&mut self) -> anyhow::Result<Seen> {
        let event = tokio::time::timeout(EVENT_WAIT, self.events.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "no source event within {EVENT_WAIT:?}; so far: {}",
                    self.history()
                )
            })?
            .ok_or_else(|| anyhow!("the source hung up; so far: {}", self.history()))?;
        let seen = self.absorb(event)?;
        self.seen.push(seen.clone());
        Ok(seen)
    }

    /// Takes events until one matches `until` (included); returns them.
    pub async fn take_until(
        &mut self,
        mut until: impl FnMut(&Seen) -> bool,
    ) -> anyhow::Result<Vec<Seen>> {
        let mut taken = Vec::new();
        loop {
            let seen = self.next().await?;
            let done = until(&seen);
            taken.push(seen);
            if done {
                return Ok(taken);
            }
        }
    }

    /// Takes events until every kind in `kinds` has finished `rounds` lists in all.
    pub async fn until_listed(
        &mut self,
        kinds: &[&'static str],
        rounds: usize,
    ) -> anyhow::Result<Vec<Seen>> {
        let mut taken = Vec::new();
        while !kinds.iter().all(|k| self.lists_done(k) >= rounds) {
            taken.push(self.next().await?);
        }
        Ok(taken)
    }

    /// Events still queued, without waiting.
    pub fn drain_ready(&mut self) -> anyhow::Result<Vec<Seen>> {
        let mut taken = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            let seen = self.absorb(event)?;
            self.seen.push(seen.clone());
            taken.push(seen);
        }
        Ok(taken)
    }

    /// How many lists of `kind` have finished (`InitDone` seen).
    pub fn lists_done(&self, kind: &str) -> usize {
        self.mirrors.get(kind).map_or(0, |m| m.init_done)
    }

    /// Names of the objects of `kind` as the source has told them so far.
    pub fn names(&self, kind: &str) -> Vec<String> {
        self.mirrors
            .get(kind)
            .map(|m| m.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// One object of `kind`, as JSON.
    pub fn object(&self, kind: &str, name: &str) -> Option<&Value> {
        self.mirrors.get(kind)?.objects.get(name)
    }

    pub fn history(&self) -> String {
        let all: Vec<String> = self.seen.iter().map(ToString::to_string).collect();
        format!("[{}]", all.join(", "))
    }

    fn absorb(&mut self, event: SourceEvent) -> anyhow::Result<Seen> {
        match event {
            SourceEvent::Service(e) => self.absorb_kind("Service", *e),
            SourceEvent::EndpointSlice(e) => self.absorb_kind("EndpointSlice", *e),
            SourceEvent::Node(e) => self.absorb_kind("Node", *e),
            SourceEvent::Rejected(r) => Ok(Seen::Rejected(r.origin, r.reason)),
            SourceEvent::ServiceCidr(e) => self.absorb_kind("ServiceCIDR", *e),
            SourceEvent::Pod(e) => self.absorb_kind("Pod", *e),
            SourceEvent::Namespace(e) => self.absorb_kind("Namespace", *e),
            SourceEvent::NetworkPolicy(e) => self.absorb_kind("NetworkPolicy", *e),
        }
    }

    fn absorb_kind<K>(
        &mut self,
        kind: &'static str,
        event: Event<std::sync::Arc<K>>,
    ) -> anyhow::Result<Seen>
    where
        K: Serialize
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    {
        let mirror = self.mirrors.entry(kind).or_default();
        Ok(match event {
            Event::Init => {
                mirror.relisting = Some(BTreeMap::new());
                Seen::Init(kind)
            }
            Event::InitApply(object) => {
                let (name, value) = named(object.as_ref())?;
                mirror
                    .relisting
                    .as_mut()
                    .context("InitApply outside Init..InitDone")?
                    .insert(name.clone(), value);
                Seen::InitApply(kind, name)
            }
            Event::InitDone => {
                mirror.objects = mirror.relisting.take().context("InitDone without Init")?;
                mirror.init_done += 1;
                Seen::InitDone(kind)
            }
            Event::Apply(object) => {
                let (name, value) = named(object.as_ref())?;
                mirror.objects.insert(name.clone(), value);
                Seen::Apply(kind, name)
            }
            Event::Delete(object) => {
                let (name, _) = named(object.as_ref())?;
                mirror.objects.remove(&name);
                Seen::Delete(kind, name)
            }
        })
    }
}

fn named<K>(object: &K) -> anyhow::Result<(String, Value)>
where
    K: Serialize
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let meta = object.metadata();
    let name = meta.name.clone().context("object without a name")?;
    let name = match &meta.namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name,
    };
    Ok((name, serde_json::to_value(object)?))
}

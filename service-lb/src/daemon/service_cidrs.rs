//! The service CIDRs the data plane drops unowned addresses of (`SLB_SCIDR4/6`): the union
//! of the `--service-cidrs` flag and the `spec.cidrs` of every `networking.k8s.io/v1`
//! ServiceCIDR object (the default one is named `kubernetes`). Pure: events in, the union
//! to program out.
//!
//! - Until the first complete list of ServiceCIDR objects (`InitDone`) nothing but the flag
//!   is programmed (at start-up); an unsynced cache is never acted on. A relist (after a
//!   410 Gone) keeps the previous objects until its own `InitDone`.
//! - An object being deleted (`deletionTimestamp` set) still counts until it is gone, as
//!   upstream's allocator keeps serving it while ClusterIPs of it may exist.
//! - An API server without the kind (Kubernetes before 1.33) never lists it: the flag
//!   alone stays programmed, and Services sync regardless (this state is apart from the
//!   Services' `synced`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::watcher;
use tracing::warn;

use crate::dataplane::Cidr;

/// ServiceCIDR objects and the flag, and what was last programmed.
#[derive(Debug, Default)]
pub struct ServiceCidrs {
    flag: BTreeSet<Cidr>,
    /// The CIDRs of every listed object, by name.
    objects: BTreeMap<String, BTreeSet<Cidr>>,
    /// A (re)list in progress: replaces `objects` at its `InitDone`.
    listing: Option<BTreeMap<String, BTreeSet<Cidr>>>,
    synced: bool,
    /// What the maps hold, as far as this daemon wrote them; `None` = unknown (a write
    /// failed), so the next change writes again.
    programmed: Option<BTreeSet<Cidr>>,
}

impl ServiceCidrs {
    /// The flag's ranges, already programmed at start-up.
    pub fn new(flag: &[Cidr]) -> Self {
        let flag: BTreeSet<Cidr> = flag.iter().copied().collect();
        Self {
            programmed: Some(flag.clone()),
            flag,
            ..Self::default()
        }
    }

    /// Feeds one watcher event (ServiceCIDR objects are cluster-scoped: keyed by name).
    pub fn apply(&mut self, event: watcher::Event<Arc<ServiceCIDR>>) {
        match event {
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(object) => {
                if let Some((name, cidrs)) = entry(&object) {
                    self.listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name, cidrs);
                }
            }
            watcher::Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.synced = true;
            }
            watcher::Event::Apply(object) => {
                if let Some((name, cidrs)) = entry(&object) {
                    self.objects.insert(name, cidrs);
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(name) = object.metadata.name.as_deref() {
                    self.objects.remove(name);
                }
            }
        }
    }

    /// The objects have been listed completely at least once.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The ranges the maps should hold now: the flag's, plus the objects' once listed.
    pub fn wanted(&self) -> BTreeSet<Cidr> {
        let mut all = self.flag.clone();
        if self.synced {
            all.extend(self.objects.values().flatten().copied());
        }
        all
    }

    /// The ranges to write when they differ from what was last written (sorted).
    pub fn change(&self) -> Option<Vec<Cidr>> {
        let wanted = self.wanted();
        if self.programmed.as_ref() == Some(&wanted) {
            return None;
        }
        Some(wanted.into_iter().collect())
    }

    /// Records the outcome of writing `cidrs` (from [`Self::change`]).
    pub fn programmed(&mut self, cidrs: &[Cidr], ok: bool) {
        self.programmed = ok.then(|| cidrs.iter().copied().collect());
    }
}

/// Name and parsed `spec.cidrs` of an object; a range that does not parse is left out
/// with a warning (the API server validates them, so this is a foreign writer's mistake).
fn entry(object: &ServiceCIDR) -> Option<(String, BTreeSet<Cidr>)> {
    let Some(name) = object.metadata.name.clone() else {
        warn!("a ServiceCIDR without metadata.name is ignored");
        return None;
    };
    let texts = object
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_deref())
        .unwrap_or_default();
    let mut cidrs = BTreeSet::new();
    for text in texts {
        match text.parse::<Cidr>() {
            Ok(cidr) => {
                cidrs.insert(cidr);
            }
            Err(error) => warn!(service_cidr = %name, %error, "range ignored"),
        }
    }
    Some((name, cidrs))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::networking::v1::ServiceCIDRSpec,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
        jiff::Timestamp,
    };

    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("valid cidr")
    }

    fn object(name: &str, cidrs: &[&str]) -> Arc<ServiceCIDR> {
        Arc::new(ServiceCIDR {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceCIDRSpec {
                cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
            }),
            status: None,
        })
    }

    fn set(texts: &[&str]) -> Vec<Cidr> {
        let mut all: Vec<Cidr> = texts.iter().map(|t| cidr(t)).collect();
        all.sort();
        all
    }

    fn list(s: &mut ServiceCidrs, objects: &[Arc<ServiceCIDR>]) {
        s.apply(watcher::Event::Init);
        for o in objects {
            s.apply(watcher::Event::InitApply(o.clone()));
        }
        s.apply(watcher::Event::InitDone);
    }

    /// Writes what `change` asks for, as the reconciler does.
    fn write(s: &mut ServiceCidrs) -> Option<Vec<Cidr>> {
        let change = s.change()?;
        s.programmed(&change, true);
        Some(change)
    }

    #[test]
    fn nothing_but_the_flag_until_the_objects_are_listed() {
        let mut s = ServiceCidrs::new(&[cidr("198.19.0.0/17")]);
        assert_eq!(s.change(), None, "the flag is programmed at start-up");
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(object(
            "kubernetes",
            &["198.19.128.0/17", "fd00:19::/108"],
        )));
        assert!(!s.synced());
        assert_eq!(s.change(), None, "a partial list is not acted on");
        s.apply(watcher::Event::InitDone);
        assert_eq!(
            write(&mut s),
            Some(set(&["198.19.0.0/17", "198.19.128.0/17", "fd00:19::/108"]))
        );
        assert_eq!(s.change(), None);
    }

    #[test]
    fn objects_add_change_and_leave_the_union() {
        let mut s = ServiceCidrs::new(&[]);
        list(&mut s, &[object("kubernetes", &["198.19.0.0/17"])]);
        assert_eq!(write(&mut s), Some(set(&["198.19.0.0/17"])));
        s.apply(watcher::Event::Apply(object("extra", &["fd00:19::/108"])));
        assert_eq!(
            write(&mut s),
            Some(set(&["198.19.0.0/17", "fd00:19::/108"]))
        );
        s.apply(watcher::Event::Apply(object("extra", &["198.19.200.0/24"])));
        assert_eq!(
            write(&mut s),
            Some(set(&["198.19.0.0/17", "198.19.200.0/24"]))
        );
        s.apply(watcher::Event::Delete(object("extra", &[])));
        assert_eq!(write(&mut s), Some(set(&["198.19.0.0/17"])));
    }

    #[test]
    fn a_range_in_the_flag_and_an_object_stays_while_either_has_it() {
        let mut s = ServiceCidrs::new(&[cidr("198.19.0.0/17")]);
        list(&mut s, &[object("kubernetes", &["198.19.0.0/17"])]);
        assert_eq!(s.change(), None, "the union is the flag");
        s.apply(watcher::Event::Delete(object("kubernetes", &[])));
        assert_eq!(s.change(), None, "the flag still has it");
    }

    #[test]
    fn an_object_being_deleted_still_counts() {
        let mut s = ServiceCidrs::new(&[]);
        let mut dying = (*object("old", &["198.19.64.0/18"])).clone();
        dying.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        list(&mut s, &[Arc::new(dying)]);
        assert_eq!(write(&mut s), Some(set(&["198.19.64.0/18"])));
    }

    #[test]
    fn a_relist_keeps_the_old_objects_until_it_is_done_and_drops_the_vanished() {
        let mut s = ServiceCidrs::new(&[]);
        list(
            &mut s,
            &[
                object("kubernetes", &["198.19.0.0/17"]),
                object("gone", &["fd00:19::/108"]),
            ],
        );
        write(&mut s);
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(object(
            "kubernetes",
            &["198.19.0.0/17"],
        )));
        assert_eq!(s.change(), None, "mid-relist nothing moves");
        s.apply(watcher::Event::InitDone);
        assert_eq!(write(&mut s), Some(set(&["198.19.0.0/17"])));
    }

    #[test]
    fn a_failed_write_is_retried_on_the_next_look() {
        let mut s = ServiceCidrs::new(&[]);
        list(&mut s, &[object("kubernetes", &["198.19.0.0/17"])]);
        let change = s.change().expect("a change");
        s.programmed(&change, false);
        assert_eq!(s.change(), Some(change));
    }

    #[test]
    fn bad_ranges_are_left_out_and_host_bits_cleared() {
        let mut s = ServiceCidrs::new(&[]);
        list(
            &mut s,
            &[object(
                "kubernetes",
                &["198.19.0.1/17", "not-a-cidr", "fd00:19::/200"],
            )],
        );
        assert_eq!(write(&mut s), Some(set(&["198.19.0.0/17"])));
    }
}

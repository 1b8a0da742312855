//! Interfaces come and go: netlink link events (the RTNLGRP_LINK multicast group, no
//! polling) attach the programs to a new interface matching the pod or external globs,
//! and forget a vanished one (its link pins removed).
//!
//! Order at start: [`LinkWatch::subscribe`] first, then [`Attacher::attach_present`], then
//! [`run`]: an interface created in between is seen by both, and the second sight is a
//! no-op because the attacher remembers what it attached (by ifindex and name).

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use futures::{channel::mpsc::UnboundedReceiver, StreamExt};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        link::{LinkAttribute, LinkMessage},
        RouteNetlinkMessage,
    },
    sys::SocketAddr,
    MulticastGroup,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    attach::{parse_link_pin_name, Attachment},
    error::DataplaneError,
    interfaces::{Interface, Roles},
    loader::Dataplane,
    pin,
};

/// What a link message says about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (state, name...): `RTM_NEWLINK`.
    Present(Interface),
    /// Deleted or moved to another namespace: `RTM_DELLINK`.
    Gone(Interface),
}

/// Reads a link event out of a route netlink message (`None` for anything else, or a
/// link message without a name).
pub fn decode(message: &RouteNetlinkMessage) -> Option<LinkEvent> {
    let (link, present) = match message {
        RouteNetlinkMessage::NewLink(link) => (link, true),
        RouteNetlinkMessage::DelLink(link) => (link, false),
        _ => return None,
    };
    let iface = interface_of(link)?;
    Some(if present {
        LinkEvent::Present(iface)
    } else {
        LinkEvent::Gone(iface)
    })
}

fn interface_of(link: &LinkMessage) -> Option<Interface> {
    let ifname = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })?;
    Some(Interface {
        ifindex: link.header.index,
        ifname,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LinkWatchError {
    #[error("subscribing to netlink link events: {0}")]
    Subscribe(#[source] io::Error),
}

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to the link events of the calling thread's network namespace.
pub struct LinkWatch {
    messages: Messages,
    connection: tokio::task::JoinHandle<()>,
}

impl LinkWatch {
    /// Opens a netlink socket bound to RTNLGRP_LINK. Needs a tokio runtime (the socket is
    /// driven by a spawned task).
    pub fn subscribe() -> Result<Self, LinkWatchError> {
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(LinkWatchError::Subscribe)?;
        let connection = tokio::spawn(connection);
        Ok(Self {
            messages,
            connection,
        })
    }

    /// The next link event; `None` when the socket is gone.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    if let Some(event) = decode(&inner) {
                        return Some(event);
                    }
                }
                NetlinkPayload::Overrun(_) => {
                    warn!("netlink link events overran the socket buffer: some were lost");
                }
                _ => {}
            }
        }
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// What one event changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub attached: Vec<Attachment>,
    /// Link pins removed for a vanished (or renamed) interface.
    pub forgotten: usize,
}

/// Owns the loaded data plane and remembers which interfaces carry its programs.
pub struct Attacher {
    dataplane: Dataplane,
    roles: Roles,
    pod_globs: Vec<String>,
    external_globs: Vec<String>,
    /// ifindex -> name of every interface with attachments.
    attached: BTreeMap<u32, String>,
}

impl Attacher {
    pub fn new(
        dataplane: Dataplane,
        pod_globs: &[String],
        external_globs: &[String],
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            roles: Roles::new(pod_globs, external_globs)?,
            dataplane,
            pod_globs: pod_globs.to_vec(),
            external_globs: external_globs.to_vec(),
            attached: BTreeMap::new(),
        })
    }

    pub fn bpffs(&self) -> &Path {
        self.dataplane.bpffs()
    }

    /// Attaches to every matching interface present now (replacing the programs inside
    /// links pinned by an earlier run: no gap), and removes pins of vanished interfaces.
    pub fn attach_present(&mut self) -> Result<Vec<Attachment>, DataplaneError> {
        let done = self
            .dataplane
            .attach(&self.pod_globs, &self.external_globs)?;
        for a in &done {
            self.attached.insert(a.ifindex, a.ifname.clone());
        }
        Ok(done)
    }

    /// Interfaces that currently carry the programs.
    pub fn attached(&self) -> &BTreeMap<u32, String> {
        &self.attached
    }

    /// Applies one link event.
    pub fn apply(&mut self, event: &LinkEvent) -> Result<LinkChange, DataplaneError> {
        let mut change = LinkChange::default();
        match event {
            LinkEvent::Present(iface) => {
                match self.attached.get(&iface.ifindex) {
                    Some(name) if *name == iface.ifname => return Ok(change),
                    Some(_) => {
                        // Renamed: its pins carry the old name.
                        change.forgotten = self.forget(iface.ifindex)?;
                    }
                    None => {}
                }
                change.attached = self.dataplane.attach_interface(iface, &self.roles)?;
                if !change.attached.is_empty() {
                    self.attached.insert(iface.ifindex, iface.ifname.clone());
                }
            }
            LinkEvent::Gone(iface) => {
                change.forgotten = self.forget(iface.ifindex)?;
            }
        }
        Ok(change)
    }

    fn forget(&mut self, ifindex: u32) -> Result<usize, DataplaneError> {
        self.attached.remove(&ifindex);
        remove_link_pins(self.dataplane.bpffs(), ifindex)
    }
}

/// Removes every link pin of interface `ifindex`; returns how many.
pub fn remove_link_pins(bpffs: &Path, ifindex: u32) -> Result<usize, DataplaneError> {
    let dir = pin::links_dir(bpffs);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataplaneError::io("reading", dir, e)),
    };
    let mut doomed: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataplaneError::io("reading", &dir, e))?;
        let name = entry.file_name();
        if parse_link_pin_name(&name.to_string_lossy()).is_some_and(|(i, _, _)| i == ifindex) {
            doomed.push(entry.path());
        }
    }
    for path in &doomed {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::io("unpinning", path, e)),
        }
    }
    Ok(doomed.len())
}

/// Applies link events until `cancel` fires or the subscription ends. Errors of one
/// interface are logged and counted by `on_error`; the watch goes on.
pub async fn run(
    mut watch: LinkWatch,
    mut attacher: Attacher,
    cancel: CancellationToken,
    mut on_error: impl FnMut(&DataplaneError) + Send,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            event = watch.next() => event,
        };
        let Some(event) = event else {
            warn!("the netlink link subscription ended: new interfaces are no longer attached");
            return;
        };
        debug!(?event, "link event");
        match attacher.apply(&event) {
            Ok(change) => {
                for a in &change.attached {
                    info!(ifname = %a.ifname, ifindex = a.ifindex, hook = a.hook.name(), "new interface: attached");
                }
                if change.forgotten > 0 {
                    let iface = match &event {
                        LinkEvent::Present(i) | LinkEvent::Gone(i) => i,
                    };
                    info!(ifname = %iface.ifname, ifindex = iface.ifindex, pins = change.forgotten, "interface gone or renamed: link pins removed");
                }
            }
            Err(e) => {
                warn!(?event, error = %e, "could not follow an interface change");
                on_error(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::LinkHeader;

    use super::*;

    fn link(index: u32, name: Option<&str>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header = LinkHeader {
            index,
            ..LinkHeader::default()
        };
        if let Some(name) = name {
            message.attributes.push(LinkAttribute::IfName(name.into()));
        }
        message
    }

    #[test]
    fn decodes_new_and_deleted_links() {
        let iface = Interface {
            ifindex: 7,
            ifname: "slbp3".into(),
        };
        assert_eq!(
            decode(&RouteNetlinkMessage::NewLink(link(7, Some("slbp3")))),
            Some(LinkEvent::Present(iface.clone()))
        );
        assert_eq!(
            decode(&RouteNetlinkMessage::DelLink(link(7, Some("slbp3")))),
            Some(LinkEvent::Gone(iface))
        );
        assert_eq!(decode(&RouteNetlinkMessage::NewLink(link(7, None))), None);
    }

    #[test]
    fn pins_of_other_interfaces_are_kept() -> Result<(), Box<dyn std::error::Error>> {
        // A plain folder stands in for bpffs: pins are files.
        let root = std::env::temp_dir().join(format!("slb-linkwatch-{}", std::process::id()));
        let links = pin::links_dir(&root);
        fs::create_dir_all(&links)?;
        for name in [
            "7-slbp3-from_pod",
            "7-slbp3-to_pod",
            "8-slbp4-from_pod",
            "17-slbp5-to_pod",
        ] {
            fs::write(links.join(name), b"")?;
        }
        let removed = remove_link_pins(&root, 7)?;
        let mut left: Vec<String> = fs::read_dir(&links)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        fs::remove_dir_all(&root)?;
        assert_eq!(removed, 2);
        assert_eq!(left, ["17-slbp5-to_pod", "8-slbp4-from_pod"]);
        Ok(())
    }
}

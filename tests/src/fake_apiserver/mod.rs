//! A small Kubernetes API server for tests of the API source: Services, EndpointSlices,
//! Nodes, Pods, Namespaces and NetworkPolicies over real HTTP list and watch, as kube's client speaks them.
//!
//! - list with `resourceVersion` in the list metadata, `labelSelector`/`fieldSelector`
//!   honoured, `limit`/`continue` pagination (a consistent snapshot per list);
//! - `watch=true&resourceVersion=N` streams newline-delimited ADDED/MODIFIED/DELETED events
//!   replayed from the history after N, then live; BOOKMARK events when asked for;
//!   `sendInitialEvents` streaming lists; ERROR 410 for a resourceVersion older than the
//!   history kept.
//!
//! Events: `POST`/`PATCH` of `events.k8s.io/v1` Events are accepted and recorded
//! ([`FakeApiServer::events`]); nothing else is writable.
//!
//! Test controls: create/replace/delete objects (one global resourceVersion), forget the
//! history (`compact`), 410 on open watches (`expire_watches`), drop open watches
//! (`drop_watches`), hold new watches (`hold_watches`/`release_watches`), bookmarks, a
//! server-side page size cap, and the log of requests received.
//!
//! Plain HTTP on 127.0.0.1, no authentication: reach it with [`FakeApiServer::write_kubeconfig`].

mod http;
mod query;
pub mod recorder;
mod selector;
mod store;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};

use self::http::Shared;
pub use self::{
    http::{EventWrite, RecordedRequest},
    query::Query,
    store::Collection,
};

/// An object kind the fake server serves.
pub trait Served: Serialize + k8s_openapi::Metadata<Ty = ObjectMeta> {
    const COLLECTION: Collection;
}

impl Served for Service {
    const COLLECTION: Collection = Collection::Services;
}

impl Served for EndpointSlice {
    const COLLECTION: Collection = Collection::EndpointSlices;
}

impl Served for Node {
    const COLLECTION: Collection = Collection::Nodes;
}

impl Served for ServiceCIDR {
    const COLLECTION: Collection = Collection::ServiceCidrs;
}

impl Served for Pod {
    const COLLECTION: Collection = Collection::Pods;
}

impl Served for Namespace {
    const COLLECTION: Collection = Collection::Namespaces;
}

impl Served for NetworkPolicy {
    const COLLECTION: Collection = Collection::NetworkPolicies;
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts serving on `127.0.0.1:<free port>` in the current tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake API server")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let app = http::router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("fake API server stopped: {error}");
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes `dir/kubeconfig` pointing at this server (no TLS, no credentials).
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n\
             users:\n\
             - name: fake\n  user: {{}}\n",
            url = self.url()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The `events.k8s.io/v1` Event writes received, in order.
    pub fn events(&self) -> Vec<EventWrite> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Creates or replaces `object` (by namespace and name); returns its resourceVersion.
    pub fn apply<K: Served>(&self, object: &K) -> anyhow::Result<u64> {
        let mut value = serde_json::to_value(object).context("serializing a test object")?;
        if K::COLLECTION.namespaced() && object.metadata().namespace.is_none() {
            value["metadata"]["namespace"] = "default".into();
        }
        Ok(self.shared.store().upsert(K::COLLECTION, value))
    }

    /// Deletes an object (`namespace` is ignored for Nodes); `None` if it did not exist.
    pub fn delete<K: Served>(&self, namespace: &str, name: &str) -> Option<u64> {
        let namespace = if K::COLLECTION.namespaced() {
            namespace
        } else {
            ""
        };
        self.shared
            .store()
            .delete(K::COLLECTION, &(namespace.to_owned(), name.to_owned()))
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the change history: a watch from any older resourceVersion gets
    /// `410 Gone` (an ERROR event) and the client must list again.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Sends an ERROR 410 event on every open watch, closes them and forgets the history.
    pub fn expire_watches(&self) {
        self.shared.store().expire_watches();
    }

    /// Ends every open watch stream (the client sees its connection end).
    pub fn drop_watches(&self) {
        self.shared.store().close_watches(None);
    }

    /// New watch requests wait until [`release_watches`](Self::release_watches): with
    /// [`drop_watches`](Self::drop_watches) the client is cut off while objects change.
    pub fn hold_watches(&self) {
        self.shared.watches_held.send_replace(true);
    }

    pub fn release_watches(&self) {
        self.shared.watches_held.send_replace(false);
    }

    /// A BOOKMARK at the current resourceVersion on every watch that allows bookmarks.
    pub fn send_bookmarks(&self) {
        self.shared.store().send_bookmarks();
    }

    /// Caps list pages at `size` items whatever the client's `limit` (`None`: no cap).
    pub fn set_max_page_size(&self, size: Option<usize>) {
        self.shared.store().max_page_size = size;
    }

    /// Watches currently connected.
    pub fn open_watches(&self) -> usize {
        self.shared.store().open_watches()
    }

    /// Waits until at least `count` watches are connected; `false` after `limit`.
    pub async fn wait_for_open_watches(&self, count: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.open_watches() < count {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.store().close_watches(None);
        self.task.abort();
    }
}

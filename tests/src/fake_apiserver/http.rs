//! The HTTP side: list and watch of the three collections, as kube's client calls them;
//! create (POST) and patch (PATCH) of `events.k8s.io/v1` Events, recorded for the test.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    body::Body,
    extract::State,
    http::{header, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    query::Query,
    selector::{FieldSelector, LabelSelector},
    store::{gone_status, Collection, Filter, Store, WatchStart},
};

/// Watches without `timeoutSeconds` end after this long.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// One request the server received (for checks of the request shape).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub query: Query,
}

/// One Event write the server received.
#[derive(Clone, Debug)]
pub struct EventWrite {
    /// `POST` (create) or `PATCH` (a series update).
    pub method: String,
    /// The namespace of the path.
    pub namespace: String,
    /// The object name of the path (PATCH), `None` for a create.
    pub name: Option<String>,
    pub body: Value,
}

/// State shared by the handlers and the test controls.
pub(super) struct Shared {
    pub(super) events: Mutex<Vec<EventWrite>>,
    pub(super) store: Mutex<Store>,
    /// `true`: new watch requests wait (the client looks disconnected).
    pub(super) watches_held: watch::Sender<bool>,
    pub(super) requests: Mutex<Vec<RecordedRequest>>,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            store: Mutex::new(Store::default()),
            watches_held: watch::Sender::new(false),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The store, even if a panicking test thread poisoned the lock.
    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// `/apis/events.k8s.io/v1/namespaces/NS/events[/NAME]` -> namespace and name.
fn event_route(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/")?;
    let (namespace, tail) = rest.split_once('/')?;
    let name = tail.strip_prefix("events")?;
    match name.strip_prefix('/') {
        None if name.is_empty() => Some((namespace.to_owned(), None)),
        Some(n) if !n.is_empty() && !n.contains('/') => {
            Some((namespace.to_owned(), Some(n.to_owned())))
        }
        _ => None,
    }
}

/// Records an Event write and answers as the API would (the object back).
fn write_event(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Option<Response> {
    let (namespace, name) = event_route(path)?;
    let creating = *method == Method::POST && name.is_none();
    let patching = *method == Method::PATCH && name.is_some();
    if !creating && !patching {
        return Some(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "events: POST to the collection or PATCH an event",
        ));
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Some(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON",
        ));
    };
    shared
        .events
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(EventWrite {
            method: method.to_string(),
            namespace,
            name,
            body: body.clone(),
        });
    let code = if creating {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Some((code, Json(body)).into_response())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    let query = Query::parse(uri.query());
    shared.requests().push(RecordedRequest {
        path: uri.path().to_owned(),
        query: query.clone(),
    });
    if let Some(response) = write_event(&shared, &method, uri.path(), &body) {
        return response;
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "read-only fake",
        );
    }
    let Some((collection, namespace)) = route(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such collection");
    };
    let filter = match filter(&query, namespace) {
        Ok(filter) => filter,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if query.flag("watch") {
        watch(&shared, collection, filter, &query).await
    } else {
        list(&shared, collection, &filter, &query)
    }
}

/// `/api/v1/services`, `/api/v1/namespaces/NS/services`, ... -> collection and namespace.
fn route(path: &str) -> Option<(Collection, Option<String>)> {
    let path = path.trim_end_matches('/');
    [
        Collection::Services,
        Collection::EndpointSlices,
        Collection::Nodes,
        Collection::ServiceCidrs,
        Collection::Pods,
        Collection::Namespaces,
        Collection::NetworkPolicies,
    ]
    .into_iter()
    .find_map(|collection| {
        let (prefix, plural) = collection.path();
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        if rest == plural {
            return Some((collection, None));
        }
        let (namespace, tail) = rest.strip_prefix("namespaces/")?.split_once('/')?;
        (collection.namespaced() && tail == plural)
            .then(|| (collection, Some(namespace.to_owned())))
    })
}

fn filter(query: &Query, namespace: Option<String>) -> Result<Filter, String> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
        .map_err(|e| e.to_string())?;
    Ok(Filter {
        namespace,
        labels,
        fields,
    })
}

fn list(shared: &Shared, collection: Collection, filter: &Filter, query: &Query) -> Response {
    let limit = query.number("limit").and_then(|l| usize::try_from(l).ok());
    let page = shared
        .store()
        .list(collection, filter, limit, query.get("continue"));
    let Some(page) = page else {
        let gone = gone_status(0, shared.store().resource_version());
        return (StatusCode::GONE, Json(gone)).into_response();
    };
    let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
    if let Some(token) = page.continue_token {
        metadata["continue"] = Value::String(token);
    }
    let body = json!({
        "apiVersion": collection.api_version(),
        "kind": format!("{}List", collection.kind()),
        "metadata": metadata,
        "items": page.items,
    });
    Json(body).into_response()
}

async fn watch(shared: &Shared, collection: Collection, filter: Filter, query: &Query) -> Response {
    // A held watch waits here, as if the server could not be reached.
    let mut held = shared.watches_held.subscribe();
    if held.wait_for(|held| !*held).await.is_err() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "shutting down",
        );
    }
    let from = match query.get("resourceVersion").map(str::parse::<u64>) {
        None => None,
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "resourceVersion is not a number",
            )
        }
    };
    let start = shared.store().watch(
        collection,
        filter,
        from,
        query.flag("allowWatchBookmarks"),
        query.flag("sendInitialEvents"),
    );
    let timeout = query
        .number("timeoutSeconds")
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let lines = match start {
        WatchStart::Expired(line) => futures::stream::iter([line]).boxed(),
        WatchStart::Stream { first, rest } => {
            let rest = futures::stream::unfold(rest, |mut rx| async move {
                rx.recv().await.map(|line| (line, rx))
            });
            futures::stream::iter(first).chain(rest).boxed()
        }
    };
    let body = lines
        .take_until(tokio::time::sleep(timeout))
        .map(|line| Ok::<_, Infallible>(format!("{line}\n")));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/api/v1/services"),
            Some((Collection::Services, None))
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices"),
            Some((Collection::EndpointSlices, Some("kube-system".into())))
        );
        assert_eq!(route("/api/v1/nodes"), Some((Collection::Nodes, None)));
        assert_eq!(route("/api/v1/namespaces/x/nodes"), None);
        assert_eq!(route("/api/v1/pods"), None);
    }
}

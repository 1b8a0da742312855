//! The manifests-folder source: every `*.yaml`, `*.yml`, `*.json` file of a folder,
//! multi-document, watched for changes. (helper "model" writes `parse`, helper "sources"
//! writes the watching)
//!
//! The folder is read once and sent as one initial list per kind (`Init`, `InitApply`*,
//! `InitDone`), streamed file by file as the files are parsed (on every core). Afterwards inotify reports which files changed; after `debounce` of quiet
//! only those files are read again and only the objects whose content changed are sent
//! (`Apply`/`Delete`). A file that does not parse is reported (`Rejected`, `file:line`) and
//! its last good objects stay. A folder that disappears keeps the state until it is back.

mod files;
pub mod parse;
mod state;
mod watch;

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    time::Duration,
};

use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::{
    files::FileRead,
    parse::Object,
    state::{Change, FileObjects, FileUpdate, FolderState, Kind},
    watch::{Batch, FolderWatch},
};
use super::{Rejection, SourceEvent};

/// How often a missing folder is looked for again.
const FOLDER_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ManifestsConfig {
    pub dir: PathBuf,
    /// This node's name: only the Node object of that name is passed on.
    pub node_name: Option<String>,
    /// Quiet time after a change before the folder is read again.
    pub debounce: Duration,
}

/// Reads the folder, sends the initial list of every kind, then watches until `cancel`.
/// Ends early (with `Ok`) only when the receiver of `events` is gone.
pub async fn run(
    config: ManifestsConfig,
    events: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut source = FolderSource {
        config,
        events,
        state: FolderState::default(),
        listed: false,
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => {}
        Err(ReceiverGone) = source.run() => debug!("manifests source: receiver gone, stopping"),
    }
    Ok(())
}

/// The event receiver was dropped: nobody listens any more.
struct ReceiverGone;

struct FolderSource {
    config: ManifestsConfig,
    events: mpsc::Sender<SourceEvent>,
    state: FolderState,
    /// The initial lists have been sent.
    listed: bool,
}

impl FolderSource {
    /// Watches, (re)reads and forwards for ever; returns only when the receiver is gone.
    async fn run(&mut self) -> Result<Infallible, ReceiverGone> {
        loop {
            let mut watch = self.watch_folder().await;
            let read_all = if self.listed {
                self.read_all().await
            } else {
                self.send_initial_lists().await
            };
            if read_all? {
                self.follow(&mut watch).await?;
            } else {
                tokio::time::sleep(FOLDER_RETRY).await;
            }
            // The folder went away, cannot be read or its watch failed: keep the state and
            // watch it anew.
        }
    }

    /// Starts a watch of the folder, waiting for it to exist (a watch that started before
    /// the folder is read cannot miss a change).
    async fn watch_folder(&self) -> FolderWatch {
        let dir = &self.config.dir;
        let mut warned = false;
        loop {
            match FolderWatch::start(dir) {
                Ok(watch) => {
                    if warned {
                        info!(dir = %dir.display(), "manifests folder is back");
                    }
                    return watch;
                }
                Err(error) if !warned => {
                    warn!(dir = %dir.display(), %error, "cannot watch the manifests folder; keeping the last state and retrying");
                    warned = true;
                }
                Err(error) => {
                    debug!(dir = %dir.display(), %error, "manifests folder still not watchable")
                }
            }
            tokio::time::sleep(FOLDER_RETRY).await;
        }
    }

    /// Applies batches of changed files until the folder is lost.
    async fn follow(&mut self, watch: &mut FolderWatch) -> Result<(), ReceiverGone> {
        loop {
            let batch = watch.next_batch(self.config.debounce).await;
            debug!(?batch, "manifests folder changed");
            if batch.folder_lost || !self.config.dir.is_dir() {
                warn!(dir = %self.config.dir.display(), "manifests folder was removed or moved; keeping the last state");
                return Ok(());
            }
            let Batch { files, rescan, .. } = batch;
            if rescan {
                if !self.read_all().await? {
                    return Ok(());
                }
            } else {
                let files: Vec<PathBuf> = files.into_iter().collect();
                self.apply_files(&files).await?;
            }
        }
    }

    /// The first read: one list per kind, all three open at once (`Init`), filled file by
    /// file as the files are parsed (`InitApply`), closed when every file is in
    /// (`InitDone`). Files are parsed on every core while earlier ones are sent, and only
    /// a few files' parsed objects are in memory at a time. Files may come in any order:
    /// an object defined by several files is sent by a later-named file after the earlier
    /// one, and never by an earlier-named file after a later one, so the last by name wins
    /// as it does afterwards. `Ok(false)` when the folder cannot be listed (nothing is sent
    /// then: the lists are not known yet).
    async fn send_initial_lists(&mut self) -> Result<bool, ReceiverGone> {
        let Some(paths) = self.list() else {
            return Ok(false);
        };
        for kind in Kind::ALL {
            self.send(init_event(kind, InitStep::Init)).await?;
        }
        let (parsed_tx, mut parsed) = mpsc::channel(files::parallelism());
        let node_name = self.config.node_name.clone();
        let reader = tokio::task::spawn_blocking(move || {
            files::read_each(&paths, node_name.as_deref(), |index, read| {
                parsed_tx
                    .blocking_send((paths[index].clone(), read))
                    .is_ok()
            });
        });
        while let Some((path, read)) = parsed.recv().await {
            let update = self.absorb(vec![(path, read)]).await?;
            log_conflicts(&update);
            for change in update.changes {
                // Nothing is deleted while the state fills for the first time.
                if let Change::Apply(object) = change {
                    self.send(object_event(object, ObjectStep::InitApply))
                        .await?;
                }
            }
        }
        joined(reader.await)?;
        for kind in Kind::ALL {
            let count = self.state.count_of_kind(kind);
            info!(kind = ?kind, count, dir = %self.config.dir.display(), "manifests: initial list");
            self.send(init_event(kind, InitStep::InitDone)).await?;
        }
        self.listed = true;
        Ok(true)
    }

    /// Re-reads every file (and forgets files that are gone), sending only differences.
    /// `Ok(false)` when the folder cannot be listed.
    async fn read_all(&mut self) -> Result<bool, ReceiverGone> {
        let Some(paths) = self.list() else {
            return Ok(false);
        };
        let gone: Vec<PathBuf> = self
            .state
            .files()
            .filter(|known| paths.binary_search_by(|p| p.as_path().cmp(known)).is_err())
            .map(Path::to_path_buf)
            .collect();
        let mut all = gone;
        all.extend(paths);
        self.apply_files(&all).await?;
        Ok(true)
    }

    fn list(&self) -> Option<Vec<PathBuf>> {
        match files::list(&self.config.dir) {
            Ok(paths) => Some(paths),
            Err(error) => {
                warn!(dir = %self.config.dir.display(), %error, "cannot list the manifests folder; keeping the last state");
                None
            }
        }
    }

    /// Re-reads `paths` and sends what changed because of them, all files together (an
    /// object that moved between two of them did not change).
    async fn apply_files(&mut self, paths: &[PathBuf]) -> Result<(), ReceiverGone> {
        let update = self.read_files(paths).await?;
        log_conflicts(&update);
        if !update.changes.is_empty() {
            debug!(
                files = paths.len(),
                changes = update.changes.len(),
                "manifest files changed"
            );
        }
        for change in update.changes {
            let event = match change {
                Change::Apply(object) => object_event(object, ObjectStep::Apply),
                Change::Delete(object) => object_event(object, ObjectStep::Delete),
            };
            self.send(event).await?;
        }
        Ok(())
    }

    /// Reads `paths` into the state. A file that cannot be used is sent as `Rejected` and
    /// keeps its last good objects.
    async fn read_files(&mut self, paths: &[PathBuf]) -> Result<FileUpdate, ReceiverGone> {
        let reads = {
            let paths = paths.to_vec();
            let node_name = self.config.node_name.clone();
            joined(
                tokio::task::spawn_blocking(move || {
                    let reads = files::read_many(&paths, node_name.as_deref());
                    paths.into_iter().zip(reads).collect::<Vec<_>>()
                })
                .await,
            )?
        };
        self.absorb(reads).await
    }

    /// Takes files just read into the state (all together); unusable ones are reported.
    async fn absorb(
        &mut self,
        reads: Vec<(PathBuf, FileRead)>,
    ) -> Result<FileUpdate, ReceiverGone> {
        let mut contents = Vec::with_capacity(reads.len());
        for (path, read) in reads {
            match read {
                FileRead::Parsed { objects, rejected } => {
                    self.reject_all(rejected).await?;
                    contents.push((path, objects));
                }
                FileRead::Missing => contents.push((path, FileObjects::new())),
                FileRead::Rejected(rejection) => self.reject_all(vec![rejection]).await?,
            }
        }
        Ok(self.state.update(contents))
    }

    async fn reject_all(&self, rejected: Vec<Rejection>) -> Result<(), ReceiverGone> {
        for rejection in rejected {
            debug!(origin = %rejection.origin, reason = rejection.reason, detail = %rejection.detail, "manifest input not used; the last good objects stay");
            self.send(SourceEvent::Rejected(rejection)).await?;
        }
        Ok(())
    }

    async fn send(&self, event: SourceEvent) -> Result<(), ReceiverGone> {
        self.events.send(event).await.map_err(|_| ReceiverGone)
    }
}

/// The result of a parsing task. A panic while parsing is a bug: it is re-raised here. A
/// task cancelled by the runtime means the daemon is shutting down.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, ReceiverGone> {
    match result {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ReceiverGone),
    }
}

fn log_conflicts(update: &FileUpdate) {
    for conflict in &update.conflicts {
        let files: Vec<String> = conflict
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        let used = files.last().cloned().unwrap_or_default();
        warn!(object = %conflict.key, files = ?files, used = %used, "object defined in several manifest files; the last by name is used");
    }
}

enum InitStep {
    Init,
    InitDone,
}

fn init_event(kind: Kind, step: InitStep) -> SourceEvent {
    fn marker<K>(step: InitStep) -> Box<watcher::Event<K>> {
        Box::new(match step {
            InitStep::Init => watcher::Event::Init,
            InitStep::InitDone => watcher::Event::InitDone,
        })
    }
    match kind {
        Kind::Service => SourceEvent::Service(marker(step)),
        Kind::EndpointSlice => SourceEvent::EndpointSlice(marker(step)),
        Kind::Node => SourceEvent::Node(marker(step)),
        Kind::ServiceCidr => SourceEvent::ServiceCidr(marker(step)),
        Kind::Pod => SourceEvent::Pod(marker(step)),
        Kind::Namespace => SourceEvent::Namespace(marker(step)),
        Kind::NetworkPolicy => SourceEvent::NetworkPolicy(marker(step)),
    }
}

#[derive(Clone, Copy)]
enum ObjectStep {
    InitApply,
    Apply,
    Delete,
}

fn object_event(object: Object, step: ObjectStep) -> SourceEvent {
    fn wrap<K>(object: K, step: ObjectStep) -> Box<watcher::Event<K>> {
        Box::new(match step {
            ObjectStep::InitApply => watcher::Event::InitApply(object),
            ObjectStep::Apply => watcher::Event::Apply(object),
            ObjectStep::Delete => watcher::Event::Delete(object),
        })
    }
    match object {
        Object::Service(o) => SourceEvent::Service(wrap(o, step)),
        Object::EndpointSlice(o) => SourceEvent::EndpointSlice(wrap(o, step)),
        Object::Node(o) => SourceEvent::Node(wrap(o, step)),
        Object::ServiceCidr(o) => SourceEvent::ServiceCidr(wrap(o, step)),
        Object::Pod(o) => SourceEvent::Pod(wrap(o, step)),
        Object::Namespace(o) => SourceEvent::Namespace(wrap(o, step)),
        Object::NetworkPolicy(o) => SourceEvent::NetworkPolicy(wrap(o, step)),
    }
}

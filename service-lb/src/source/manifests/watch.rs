//! inotify (through `notify`) on the folder, turned into debounced batches of changed files.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{
    event::{AccessKind, AccessMode},
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher,
};
use tokio::{
    sync::mpsc,
    time::{timeout_at, Instant},
};
use tracing::warn;

use super::files::{is_manifest_name, ATOMIC_WRITER_LINK};

/// A burst that never goes quiet is still applied after this many debounce periods.
const MAX_BATCH_PERIODS: u32 = 20;

/// What changed during one burst of events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Manifest files that were created, written, deleted or renamed (from or to).
    pub(crate) files: BTreeSet<PathBuf>,
    /// Re-read every file (event queue overflow, ConfigMap-style symlink swap).
    pub(crate) rescan: bool,
    /// The folder itself was deleted or moved, or the watch failed: watch it anew.
    pub(crate) folder_lost: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && !self.rescan && !self.folder_lost
    }

    /// Adds one notify event about `dir`.
    pub(crate) fn absorb(&mut self, dir: &Path, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                warn!(dir = %dir.display(), %error, "folder watch failed; watching it anew");
                self.folder_lost = true;
                return;
            }
        };
        if event.need_rescan() {
            self.rescan = true;
        }
        if !changes_content(&event.kind) {
            return;
        }
        if event.paths.is_empty() && matches!(event.kind, EventKind::Any | EventKind::Other) {
            self.rescan = true;
        }
        for path in event.paths {
            if path == dir {
                self.folder_lost = true;
            } else if path.parent() != Some(dir) {
                continue;
            } else if path.file_name() == Some(ATOMIC_WRITER_LINK.as_ref()) {
                self.rescan = true;
            } else if path.file_name().is_some_and(is_manifest_name) {
                self.files.insert(path);
            }
        }
    }
}

/// Opening or reading a file (ours included) changes nothing; everything else may.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A live watch of one folder (not recursive).
pub(crate) struct FolderWatch {
    dir: PathBuf,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    /// Dropping it ends the watch.
    _watcher: RecommendedWatcher,
}

impl FolderWatch {
    /// Starts watching `dir`; fails when it does not exist.
    pub(crate) fn start(dir: &Path) -> notify::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the watch is being dropped.
            let _ = tx.send(event);
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            events,
            _watcher: watcher,
        })
    }

    /// Waits for a change, then for `debounce` of quiet (at most `MAX_BATCH_PERIODS`
    /// debounce periods in all), and returns everything that changed meanwhile.
    pub(crate) async fn next_batch(&mut self, debounce: Duration) -> Batch {
        let mut batch = Batch::default();
        while batch.is_empty() {
            match self.events.recv().await {
                Some(event) => batch.absorb(&self.dir, event),
                None => {
                    batch.folder_lost = true;
                    return batch;
                }
            }
        }
        let give_up = Instant::now() + debounce * MAX_BATCH_PERIODS;
        loop {
            let quiet_until = (Instant::now() + debounce).min(give_up);
            match timeout_at(quiet_until, self.events.recv()).await {
                Ok(Some(event)) => batch.absorb(&self.dir, event),
                Ok(None) => {
                    batch.folder_lost = true;
                    return batch;
                }
                Err(_quiet) => return batch,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut event = Event::new(kind);
        for path in paths {
            event = event.add_path(PathBuf::from(path));
        }
        Ok(event)
    }

    #[test]
    fn keeps_manifest_files_of_the_folder_only() {
        let dir = Path::new("/m");
        let mut batch = Batch::default();
        batch.absorb(
            dir,
            event(EventKind::Create(CreateKind::File), &["/m/a.yaml"]),
        );
        batch.absorb(
            dir,
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/m/.a.yaml.swp", "/m/b.json"],
            ),
        );
        batch.absorb(
            dir,
            event(EventKind::Remove(RemoveKind::File), &["/m/c.yml"]),
        );
        batch.absorb(
            dir,
            event(EventKind::Create(CreateKind::File), &["/m/sub/d.yaml"]),
        );
        batch.absorb(
            dir,
            event(EventKind::Create(CreateKind::File), &["/m/notes.txt"]),
        );
        let files: Vec<&str> = batch.files.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(files, ["/m/a.yaml", "/m/b.json", "/m/c.yml"]);
        assert!(!batch.rescan && !batch.folder_lost);
    }

    #[test]
    fn reads_are_not_changes() {
        let mut batch = Batch::default();
        for kind in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
        ] {
            batch.absorb(
                Path::new("/m"),
                event(EventKind::Access(kind), &["/m/a.yaml"]),
            );
        }
        assert!(batch.is_empty());
        batch.absorb(
            Path::new("/m"),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/m/a.yaml"],
            ),
        );
        assert_eq!(batch.files.len(), 1);
    }

    #[test]
    fn folder_events_and_symlink_swaps() {
        let dir = Path::new("/m");
        let mut batch = Batch::default();
        batch.absorb(
            dir,
            event(EventKind::Create(CreateKind::Any), &["/m/..data"]),
        );
        assert!(batch.rescan && !batch.folder_lost);
        batch.absorb(dir, event(EventKind::Remove(RemoveKind::Folder), &["/m"]));
        assert!(batch.folder_lost);
        let mut overflow = Batch::default();
        overflow.absorb(
            dir,
            Ok(Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)),
        );
        assert!(overflow.rescan);
    }
}

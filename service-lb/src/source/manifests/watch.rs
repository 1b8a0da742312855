//! inotify (through `notify`) on the folder, turned into batches of changed files: everything
//! queued when a change is seen (or, with a debounce, everything until a quiet period).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
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
    /// Dropping it ends the watch (`None` only in unit tests fed by hand).
    _watcher: Option<RecommendedWatcher>,
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
            _watcher: Some(watcher),
        })
    }

    /// A watch fed by hand (unit tests).
    #[cfg(test)]
    fn fed(dir: &Path) -> (mpsc::UnboundedSender<notify::Result<Event>>, Self) {
        let (tx, events) = mpsc::unbounded_channel();
        let watch = Self {
            dir: dir.to_path_buf(),
            events,
            _watcher: None,
        };
        (tx, watch)
    }

    /// Waits for a change, then takes everything already queued, and returns it.
    ///
    /// With a zero `debounce` (the default) no timer runs on the critical path: the batch
    /// is whatever inotify had reported when the first event was seen, plus a short
    /// settle (at most `SETTLE_MAX`) only while the batch is visibly half-done: a rename
    /// whose `MOVED_TO` half has not arrived yet (the halves come as separate events, and
    /// applying the `MOVED_FROM` alone would delete the objects of a renamed file for one
    /// sync), or a manifest file opened for writing in place whose `CLOSE_WRITE` has not
    /// come (reading it mid-write would reject a half-written file for one sync). Atomic
    /// writes (write a temporary file, rename it over the manifest: kubectl, kubelet's
    /// ConfigMap volumes, our tests) never wait.
    ///
    /// With a non-zero `debounce`, waits for `debounce` of quiet (at most
    /// `MAX_BATCH_PERIODS` debounce periods in all), as before.
    pub(crate) async fn next_batch(&mut self, debounce: Duration) -> Batch {
        let mut batch = Batch::default();
        let mut settle = Settle::default();
        while batch.is_empty() {
            match self.events.recv().await {
                Some(event) => {
                    settle.note(&self.dir, &event);
                    batch.absorb(&self.dir, event);
                }
                None => {
                    batch.folder_lost = true;
                    return batch;
                }
            }
        }
        if debounce.is_zero() {
            return self.take_queued(batch, settle).await;
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

    /// Adds every event already queued to `batch`; waits (bounded) only while `settle`
    /// says the batch is half-done.
    async fn take_queued(&mut self, mut batch: Batch, mut settle: Settle) -> Batch {
        let give_up = Instant::now() + SETTLE_MAX;
        loop {
            while let Ok(event) = self.events.try_recv() {
                settle.note(&self.dir, &event);
                batch.absorb(&self.dir, event);
            }
            if settle.is_done() {
                return batch;
            }
            match timeout_at(give_up, self.events.recv()).await {
                Ok(Some(event)) => {
                    settle.note(&self.dir, &event);
                    batch.absorb(&self.dir, event);
                }
                Ok(None) => {
                    batch.folder_lost = true;
                    return batch;
                }
                Err(_settle_over) => return batch,
            }
        }
    }
}

/// The longest a batch waits for the second half of a rename or for a file being
/// written in place to be closed.
const SETTLE_MAX: Duration = Duration::from_millis(20);

/// What of a batch is visibly half-done (see `FolderWatch::next_batch`).
#[derive(Debug, Default)]
struct Settle {
    /// A `MOVED_FROM` was the last rename event: its `MOVED_TO` half follows at once.
    rename_from: bool,
    /// Manifest files created or modified in place and not yet closed after writing.
    writing: BTreeSet<PathBuf>,
}

impl Settle {
    fn note(&mut self, dir: &Path, event: &notify::Result<Event>) {
        let Ok(event) = event else {
            return;
        };
        let manifests = || {
            event.paths.iter().filter(move |p| {
                p.parent() == Some(dir) && p.file_name().is_some_and(is_manifest_name)
            })
        };
        match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => self.rename_from = true,
            EventKind::Modify(ModifyKind::Name(_)) => {
                self.rename_from = false;
                for path in manifests() {
                    self.writing.remove(path);
                }
            }
            EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_)) => {
                self.writing.extend(manifests().cloned());
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Remove(_) => {
                for path in manifests() {
                    self.writing.remove(path);
                }
            }
            _ => {}
        }
    }

    fn is_done(&self) -> bool {
        !self.rename_from && self.writing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{DataChange, RemoveKind};

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

    fn renamed_to(path: &str) -> notify::Result<Event> {
        event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[path])
    }

    #[tokio::test]
    async fn everything_queued_is_one_batch() {
        let dir = Path::new("/m");
        let (tx, mut watch) = FolderWatch::fed(dir);
        // A burst of 1,000 atomic writes (temporary file renamed over the manifest), all
        // queued before the batch is taken: one batch, so one read and one sync.
        for i in 0..1_000 {
            let tmp = format!("/m/.s{i}.yaml.tmp");
            let file = format!("/m/s{i}.yaml");
            for e in [
                event(EventKind::Create(CreateKind::File), &[&tmp]),
                event(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &[&tmp],
                ),
                event(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &[&tmp],
                ),
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    &[&tmp],
                ),
                renamed_to(&file),
                event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &[&tmp, &file],
                ),
            ] {
                tx.send(e).expect("receiver alive");
            }
        }
        let batch = watch.next_batch(Duration::ZERO).await;
        assert_eq!(batch.files.len(), 1_000);
        assert!(batch.files.contains(Path::new("/m/s999.yaml")));
        assert!(!batch.rescan && !batch.folder_lost);
        // Nothing is left over for a second batch.
        assert!(watch.events.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_rename_waits_for_its_second_half() {
        let dir = Path::new("/m");
        let (tx, mut watch) = FolderWatch::fed(dir);
        tx.send(event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/m/a.yaml"],
        ))
        .expect("receiver alive");
        let late = tx.clone();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            late.send(renamed_to("/m/b.yaml")).expect("receiver alive");
        });
        let batch = watch.next_batch(Duration::ZERO).await;
        sender.await.expect("sender ran");
        let files: Vec<&str> = batch.files.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(files, ["/m/a.yaml", "/m/b.yaml"]);
    }

    #[tokio::test]
    async fn a_file_written_in_place_is_taken_once_closed() {
        let dir = Path::new("/m");
        let (tx, mut watch) = FolderWatch::fed(dir);
        tx.send(event(EventKind::Create(CreateKind::File), &["/m/a.yaml"]))
            .expect("receiver alive");
        tx.send(event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/m/a.yaml"],
        ))
        .expect("receiver alive");
        let late = tx.clone();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            late.send(event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/m/a.yaml"],
            ))
            .expect("receiver alive");
        });
        let first = watch.next_batch(Duration::ZERO).await;
        sender.await.expect("sender ran");
        assert!(first.files.contains(Path::new("/m/a.yaml")));
        // Nothing half-done is left: the next change is a batch of its own.
        tx.send(renamed_to("/m/c.yaml")).expect("receiver alive");
        let second = watch.next_batch(Duration::ZERO).await;
        let files: Vec<&str> = second.files.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(files, ["/m/c.yaml"]);
    }

    #[tokio::test]
    async fn a_half_done_batch_is_still_taken_after_the_settle() {
        let dir = Path::new("/m");
        let (tx, mut watch) = FolderWatch::fed(dir);
        // Renamed out of the folder: no second half ever comes.
        tx.send(event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/m/a.yaml"],
        ))
        .expect("receiver alive");
        let batch = watch.next_batch(Duration::ZERO).await;
        assert_eq!(batch.files.len(), 1);
        drop(tx);
    }
}

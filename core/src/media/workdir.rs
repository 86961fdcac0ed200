//! Working folders of processing jobs, and the sweep of those their process left behind.
//!
//! A job attempt works in `$TMPDIR/lectern-work-{job}-{attempt}-{what}-{media}` and holds an
//! exclusive lock on its `.lock` file while the folder is in use. The folder is removed when
//! the attempt ends; when the process dies first (SIGKILL, OOM, power), the kernel releases the
//! lock and the folder stays behind. Workers sweep such folders at start and periodically: a
//! folder whose lock can be taken belongs to no live process, whichever worker made it. Several
//! workers (or deployments) may share one temporary folder; a live one's folder stays locked.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use super::MediaError;

const PREFIX: &str = "lectern-work-";
const LOCK: &str = ".lock";
/// Folders of earlier versions (`lectern-transcode-*`, `lectern-image-*`) had no lock; they are
/// swept once older than the longest a job may run.
const LEGACY_PREFIXES: [&str; 2] = ["lectern-transcode-", "lectern-image-"];
const LEGACY_AGE: Duration = Duration::from_secs(24 * 3600);

/// A working folder, locked while it lives and removed when dropped, on every path.
pub(super) struct WorkDir {
    path: PathBuf,
    /// Held open for the folder's lifetime: the lock is what tells the sweep it is in use.
    _lock: File,
}

impl WorkDir {
    pub(super) fn new(what: &str, id: Uuid) -> Result<WorkDir, MediaError> {
        Self::new_in(&std::env::temp_dir(), what, id)
    }

    fn new_in(root: &Path, what: &str, id: Uuid) -> Result<WorkDir, MediaError> {
        // Named after the attempt for whoever reads the folder list; outside a job, a random id.
        let (job, attempt) =
            crate::jobs::current_job().map_or_else(|| (Uuid::new_v4(), 0), |j| (j.id, j.attempt));
        let path = root.join(format!(
            "{PREFIX}{}-{attempt}-{what}-{}",
            job.simple(),
            id.simple()
        ));
        // A folder of this very attempt left by a crash: start clean.
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path).map_err(MediaError::io)?;
        // Locked before it gets the name the sweep looks for, so no sweep ever sees it unlocked.
        let unnamed = path.join(".lock.new");
        let lock = File::create(&unnamed).map_err(MediaError::io)?;
        lock.lock().map_err(MediaError::io)?;
        std::fs::rename(&unnamed, path.join(LOCK)).map_err(MediaError::io)?;
        Ok(WorkDir { path, _lock: lock })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether no live process holds the folder: its lock can be taken (and is released at once).
fn abandoned(dir: &Path, name: &str) -> bool {
    if name.starts_with(PREFIX) {
        return match File::open(dir.join(LOCK)) {
            Ok(file) => file.try_lock().is_ok(),
            // No lock yet: the folder is being made this instant, or its maker died in
            // between; leave it to a later sweep unless it is old.
            Err(_) => older_than(dir, Duration::from_secs(3600)),
        };
    }
    LEGACY_PREFIXES.iter().any(|p| name.starts_with(p)) && older_than(dir, LEGACY_AGE)
}

fn older_than(dir: &Path, age: Duration) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

/// Removes the working folders under `root` that no live process holds; returns how many.
pub fn sweep_in(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || !abandoned(&path, &name) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            // Another worker's sweep may remove it at the same time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(()) => {
                tracing::info!(folder = %name, "removed the working folder of a dead job attempt");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(folder = %name, error = %e, "could not remove a stale working folder")
            }
        }
    }
    removed
}

/// [`sweep_in`] the temporary folder, off the async threads.
pub async fn sweep() -> usize {
    tokio::task::spawn_blocking(|| sweep_in(&std::env::temp_dir()))
        .await
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_no_live_process_holds_are_swept() {
        let root = std::env::temp_dir().join(format!("lectern-sweep-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&root).expect("root");
        let live = WorkDir::new_in(&root, "transcode", Uuid::new_v4()).expect("live");
        // What a killed attempt leaves: the folder and its lock file, no process holding it.
        let dead_path = root.join(format!(
            "{PREFIX}{}-1-image-{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dead_path.join("out")).expect("dead");
        File::create(dead_path.join(LOCK)).expect("lock");
        std::fs::create_dir_all(root.join("unrelated")).expect("unrelated");

        assert_eq!(sweep_in(&root), 1);
        assert!(live.path().exists(), "a live folder stays");
        assert!(!dead_path.exists(), "a dead attempt's folder goes");
        assert!(
            root.join("unrelated").exists(),
            "other folders are not Lectern's to remove"
        );
        drop(live);
        let _ = std::fs::remove_dir_all(&root);
    }
}

//! Reload on config file change (notify), in addition to SIGHUP.
//!
//! The watcher looks at the file's directory, not the file: editors replace files by
//! rename, and Kubernetes swaps ConfigMap mounts through a `..data` symlink. Events are
//! debounced; a reload happens only when the file's bytes changed since the last one
//! applied or refused, so a save that changes nothing does nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::state::Gateway;

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching `path`; reloads `gateway` when its content changes. Keep the returned
/// watcher alive for as long as reloads should happen.
pub fn watch(gateway: Arc<Gateway>, path: &Path) -> Result<notify::RecommendedWatcher, String> {
    let path = std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let directory = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|err| format!("cannot watch {}: {err}", directory.display()))?;
    watcher
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|err| format!("cannot watch {}: {err}", directory.display()))?;

    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let current = std::fs::read(&path).ok();
            if current.is_none() || current == last {
                continue;
            }
            last = current;
            match gateway.reload_async().await {
                Ok(()) => tracing::info!(file = %path.display(), "configuration changed; reloaded"),
                Err(err) => tracing::error!(
                    file = %path.display(),
                    error = %err,
                    "configuration changed but was refused; the previous one keeps serving"
                ),
            }
        }
    });
    Ok(watcher)
}

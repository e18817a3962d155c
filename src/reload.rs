//! Reload on config file change (notify), in addition to SIGHUP.
//!
//! The watcher looks at the file's directory, not the file: editors replace files by
//! rename, and Kubernetes swaps ConfigMap mounts through a `..data` symlink. Only events
//! that name the config file (or `..data`, or carry no path at all, as a rescan does)
//! count; other files in the folder, such as the gateway's own log when run as
//! `scopegate run > gateway.log`, are ignored. Events are debounced: the file is read
//! once they have been quiet for [`DEBOUNCE`], or [`MAX_DELAY`] after the first of them
//! at the latest, so a file that keeps changing cannot postpone a reload forever. A
//! reload happens only when the file's bytes changed since the last one applied or
//! refused, so a save that changes nothing does nothing. The first comparison is with
//! the bytes the running config was loaded from, so a change made while the gateway was
//! starting (before the watcher existed) is applied too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::time::Instant;

use crate::state::Gateway;

/// Quiet time after the last event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// The longest a reload waits after the first event, however often events come.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The symlink Kubernetes swaps atomically when a mounted ConfigMap changes.
const KUBERNETES_DATA: &str = "..data";

/// True if `event` may have changed the file named `name` in the watched folder.
fn concerns(event: &notify::Event, name: &OsString) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    // No path: a rescan or an overflow, after which anything may have changed.
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|file| file == name.as_os_str() || file == KUBERNETES_DATA)
        })
}

/// Starts watching `path`; reloads `gateway` when its content differs from the last
/// content applied or refused, starting with `loaded` (the bytes the running config came
/// from; `None`: the file as it is now). Keep the returned watcher alive for as long as
/// reloads should happen.
pub fn watch(
    gateway: Arc<Gateway>,
    path: &Path,
    loaded: Option<Vec<u8>>,
) -> Result<notify::RecommendedWatcher, String> {
    let path = std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let directory = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path
        .file_name()
        .map(OsString::from)
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let check = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && concerns(&event, &name)
        {
            let _ = tx.send(());
        }
    })
    .map_err(|err| format!("cannot watch {}: {err}", directory.display()))?;
    watcher
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|err| format!("cannot watch {}: {err}", directory.display()))?;
    // Read here, not in the task: a change made before the task first runs must still
    // differ from `last`.
    let mut last = loaded.or_else(|| std::fs::read(&path).ok());
    if std::fs::read(&path).ok() != last {
        let _ = check.send(());
    }

    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for DEBOUNCE, at most MAX_DELAY in all.
            let deadline = Instant::now() + MAX_DELAY;
            loop {
                let quiet = (Instant::now() + DEBOUNCE).min(deadline);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(())) if Instant::now() < deadline => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            let current = std::fs::read(&path).ok();
            if current.is_none() || current == last {
                continue;
            }
            last = current;
            match gateway.reload().await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(route: &str) -> String {
        format!(
            "routes:\n  - {{ name: {route}, match: {{ path: /{route} }}, upstream: builtin:echo, auth: none }}\n"
        )
    }

    #[test]
    fn only_events_naming_the_file_or_the_kubernetes_link_count() {
        use notify::event::{CreateKind, DataChange, EventKind, ModifyKind};
        let name = OsString::from("gateway.yaml");
        let event = |kind: EventKind, path: &str| {
            notify::Event::new(kind).add_path(PathBuf::from("/etc/scopegate").join(path))
        };
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(concerns(&event(write, "gateway.yaml"), &name));
        assert!(concerns(
            &event(EventKind::Create(CreateKind::Any), "..data"),
            &name
        ));
        assert!(!concerns(&event(write, "gateway.log"), &name));
        assert!(!concerns(&event(write, "gateway.yaml.swp"), &name));
        assert!(concerns(&notify::Event::new(EventKind::Any), &name));
    }

    /// The file changed between the gateway's load and the watcher's start (no event
    /// will ever say so): the watcher applies it all the same.
    #[tokio::test]
    async fn a_change_made_before_the_watcher_started_is_applied() {
        let dir = std::env::temp_dir().join(format!("scopegate-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.yaml");
        let first = yaml("first");
        std::fs::write(&path, yaml("second")).unwrap();
        let config = crate::config::Config::from_yaml(&first).unwrap();
        let gateway = Gateway::start(config, Some(path.clone())).await.unwrap();
        let _watcher = watch(gateway.clone(), &path, Some(first.into_bytes())).unwrap();
        let mut applied = false;
        for _ in 0..200 {
            if gateway
                .state()
                .pipeline
                .routes
                .iter()
                .any(|r| &*r.name == "second")
            {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(applied, "the change was never applied");
    }
}

//! Reload on config file change (notify), in addition to SIGHUP. The OpenAPI documents
//! that `openapi:` generates routes from are watched the same way, as part of the config.
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

/// True if `event` may have changed a file named in `names` in a watched folder.
fn concerns(event: &notify::Event, names: &[OsString]) -> bool {
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    // No path: a rescan or an overflow, after which anything may have changed.
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name().is_some_and(|file| {
                file == KUBERNETES_DATA || names.iter().any(|name| file == name.as_os_str())
            })
        })
}

/// The bytes a reload compares: the config file's, then each OpenAPI document's (each
/// behind its length, so moving bytes between files is a change). `None` when the
/// config file cannot be read.
fn fingerprint(config: Option<Vec<u8>>, documents: &[PathBuf]) -> Option<Vec<u8>> {
    let mut bytes = config?;
    for document in documents {
        let content = std::fs::read(document).unwrap_or_default();
        bytes.extend_from_slice(&(content.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&content);
    }
    Some(bytes)
}

/// The OpenAPI documents the running config was generated from.
fn documents(gateway: &Gateway) -> Vec<PathBuf> {
    gateway.state().config.openapi_routes.files.clone()
}

/// Starts watching `path` and the OpenAPI documents (`openapi[].file`) of the running
/// config; reloads `gateway` when their content differs from the last content applied
/// or refused, starting with `loaded` (the bytes the running config came from; `None`:
/// the file as it is now). Keep the returned watcher alive for as long as reloads
/// should happen. The folders watched are those of the files at start: a document
/// added to `openapi:` in another folder later is read by every reload, but its own
/// edits are noticed only after a restart (or SIGHUP).
pub fn watch(
    gateway: Arc<Gateway>,
    path: &Path,
    loaded: Option<Vec<u8>>,
) -> Result<notify::RecommendedWatcher, String> {
    let path = std::path::absolute(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut watched = vec![path.clone()];
    for document in documents(&gateway) {
        watched.push(
            std::path::absolute(&document)
                .map_err(|err| format!("{}: {err}", document.display()))?,
        );
    }
    let mut names = Vec::new();
    let mut directories: Vec<PathBuf> = Vec::new();
    for file in &watched {
        let directory = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = file
            .file_name()
            .map(OsString::from)
            .ok_or_else(|| format!("{} names no file", file.display()))?;
        names.push(name);
        if !directories.contains(&directory) {
            directories.push(directory);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let check = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && concerns(&event, &names)
        {
            let _ = tx.send(());
        }
    })
    .map_err(|err| format!("cannot watch {}: {err}", path.display()))?;
    for directory in &directories {
        watcher
            .watch(directory, RecursiveMode::NonRecursive)
            .map_err(|err| format!("cannot watch {}: {err}", directory.display()))?;
    }
    // Read here, not in the task: a change made before the task first runs must still
    // differ from `last`.
    let mut files = documents(&gateway);
    let mut last = fingerprint(loaded.or_else(|| std::fs::read(&path).ok()), &files);
    if fingerprint(std::fs::read(&path).ok(), &files) != last {
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
            let current = fingerprint(std::fs::read(&path).ok(), &files);
            if current.is_none() || current == last {
                continue;
            }
            let result = gateway.reload().await;
            // The documents of the config now serving (a reload may list others).
            let now = documents(&gateway);
            last = if now == files {
                current
            } else {
                fingerprint(std::fs::read(&path).ok(), &now)
            };
            files = now;
            match result {
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
        let name = [OsString::from("gateway.yaml")];
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

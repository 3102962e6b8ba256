//! Reloading the config: on SIGHUP and when one of the files it was built from changes. A
//! reload parses, validates and compiles on a blocking thread (file reads, key parsing, an
//! argon2 hash are not for the async workers), then swaps; a bad config is logged with its
//! locations, counted, and the running one keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::gateway::Gateway;
use crate::snapshot::Loaded;

/// Reloads the config on SIGHUP. The handler is installed before this returns, so a SIGHUP
/// sent after "listening" is logged can never kill the process.
pub fn reload_on_sighup(gateway: Arc<Gateway>, config: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                reload_off_workers(&gateway, &config).await;
            }
        });
    }
}

/// [`reload`] on a blocking thread.
async fn reload_off_workers(gateway: &Arc<Gateway>, config: &Path) -> bool {
    let (gateway, config) = (gateway.clone(), config.to_path_buf());
    tokio::task::spawn_blocking(move || reload(&gateway, &config))
        .await
        .unwrap_or(false)
}

/// One reload: parse, validate, compile, then swap. A bad config is logged with its
/// locations, counted, and the running one keeps serving. Returns whether it swapped.
pub fn reload(gateway: &Gateway, config: &Path) -> bool {
    // The HTTPS certificate first: a renewed certificate must not wait on a valid config.
    if let Some(tls) = gateway.tls() {
        match tls.reload() {
            Ok(()) => tracing::debug!("TLS certificate and key (re)loaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed, keeping the one in use")
            }
        }
    }
    match Loaded::load(config) {
        Ok(Loaded { boot, snapshot }) => {
            boot.warn_changes(gateway.boot());
            for w in &snapshot.warnings {
                tracing::warn!("{w}");
            }
            gateway.replace(snapshot);
            gateway.metrics().reload(true);
            tracing::info!(config = %config.display(), "config reloaded");
            true
        }
        Err(e) => {
            gateway.metrics().reload(false);
            for line in e.diagnostics() {
                tracing::error!("config reload failed, keeping the running config: {line}");
            }
            false
        }
    }
}

/// The contents of every file a runtime was built from, hashed: a reload happens only when
/// it changes (editors and ConfigMap symlink swaps fire many events for one change).
fn fingerprint(files: &[PathBuf]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"\0missing"),
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// The directory entries whose changes matter: for each file, its own name, and every name a
/// symlink on the way to it goes through (a Kubernetes ConfigMap mounts `gateway.yaml` as a
/// link to `..data/gateway.yaml` and updates by swapping the `..data` link). Everything else
/// in those directories — the gateway's own log file, editors' swap files — is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct WatchSet {
    names: BTreeMap<PathBuf, BTreeSet<OsString>>,
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl WatchSet {
    fn new(files: &[PathBuf]) -> WatchSet {
        let mut set = WatchSet::default();
        for file in files {
            let mut path = file.clone();
            // Follow a bounded chain of links: a loop must not hang the watcher.
            for _ in 0..8 {
                let dir = dir_of(&path);
                if let Some(name) = path.file_name() {
                    set.add(&dir, name.to_owned());
                }
                let Ok(target) = std::fs::read_link(&path) else {
                    break;
                };
                if target.is_relative() {
                    if let Some(Component::Normal(first)) = target.components().next() {
                        set.add(&dir, first.to_owned());
                    }
                    path = dir.join(target);
                } else {
                    path = target;
                }
            }
        }
        set
    }

    fn add(&mut self, dir: &Path, name: OsString) {
        self.names
            .entry(dir.to_path_buf())
            .or_default()
            .insert(name);
    }

    fn matters(&self, event_path: &Path) -> bool {
        match (event_path.file_name(), self.names.get(&dir_of(event_path))) {
            (Some(name), Some(names)) => names.contains(name),
            _ => false,
        }
    }
}

/// Quiet time after the last relevant event before reloading (editors write in bursts)...
const QUIET: Duration = Duration::from_millis(100);
/// ...but never more than this after the first one.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Whether a file event may mean new contents: anything but a read (an open, a read, a close
/// after reading); a close after writing counts.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// Watches the config file, the users file and key files — through their directories, so
/// editors that save by writing a new file and renaming it over the old one, and ConfigMap
/// symlink swaps, are seen — and reloads when their contents change.
pub fn watch_files(gateway: Arc<Gateway>, config: PathBuf) -> Result<(), String> {
    use notify::{RecursiveMode, Watcher};
    let files = gateway.snapshot().files.clone();
    let relevant = Arc::new(ArcSwap::from_pointee(WatchSet::new(&files)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    let filter = relevant.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads are not changes, and the check below reads the files: counting its own
        // opens and closes would re-trigger it forever (the files re-read ten times a second).
        if event
            .is_ok_and(|e| is_change(&e.kind) && e.paths.iter().any(|p| filter.load().matters(p)))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut watch_dirs = move |set: &WatchSet| {
        for dir in set.names.keys() {
            if watched.insert(dir.clone())
                && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; use SIGHUP to reload");
            }
        }
    };
    watch_dirs(&relevant.load());
    tokio::spawn(async move {
        let mut files = files;
        let mut last = fingerprint(&files);
        while rx.recv().await.is_some() {
            let deadline = tokio::time::Instant::now() + MAX_WAIT;
            while let Ok(Some(())) = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + QUIET),
                rx.recv(),
            )
            .await
            {}
            if fingerprint(&files) == last {
                continue;
            }
            tracing::info!("config files changed: reloading");
            if reload_off_workers(&gateway, &config).await {
                files = gateway.snapshot().files.clone();
            }
            // Links may have moved and files may have been added: watch what matters now.
            let now = WatchSet::new(&files);
            watch_dirs(&now);
            relevant.store(Arc::new(now));
            last = fingerprint(&files);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_and_the_links_to_them_matter() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/gateway.yaml"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gateway.yaml", d.join("gateway.yaml")).unwrap();
        let set = WatchSet::new(&[d.join("gateway.yaml"), d.join("users.yaml")]);
        assert!(set.matters(&d.join("gateway.yaml")));
        assert!(set.matters(&d.join("users.yaml")));
        assert!(set.matters(&d.join("..data")), "the ConfigMap swap");
        assert!(!set.matters(&d.join("authgate.log")));
        assert!(!set.matters(&d.join(".gateway.yaml.swp")));
        assert!(!set.matters(&d.join("..data_tmp")));
    }
}

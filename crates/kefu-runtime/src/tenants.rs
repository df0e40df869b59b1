//! The tenants a service reads (the gateway's keys, the channel service's channels), reloaded without a restart: when a
//! `tenant.toml` changes on disk (a ConfigMap update, an edited file) or on ReloadTenant.
//! A file that does not parse leaves the last good set in place.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::Shutdown;
use kefu_tenant::Tenants;

/// How often the tenants directory is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Path, modification time and size of every tenant file: what "changed" means.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

pub struct LiveTenants {
    dir: PathBuf,
    current: RwLock<Arc<Tenants>>,
    seen: Mutex<Fingerprint>,
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.path().join("tenant.toml");
            let metadata = std::fs::metadata(&file).ok()?;
            Some((file, metadata.modified().ok(), metadata.len()))
        })
        .collect();
    files.sort();
    files
}

impl LiveTenants {
    pub fn load(dir: &Path) -> anyhow::Result<Arc<Self>> {
        let seen = fingerprint(dir);
        let tenants = Tenants::load_dir(dir)?;
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(tenants)),
            seen: Mutex::new(seen),
        }))
    }

    pub fn current(&self) -> Arc<Tenants> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the directory again; on error the previous tenants stay.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let seen = fingerprint(&self.dir);
        let tenants = Tenants::load_dir(&self.dir)?;
        let count = tenants.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tenants);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        Ok(count)
    }

    /// Reloads whenever a tenant file changes, until shutdown.
    pub fn watch(self: Arc<Self>, shutdown: &Shutdown) {
        shutdown.every(WATCH_INTERVAL, move || {
            self.reload_if_changed();
            std::future::ready(())
        });
    }

    fn reload_if_changed(&self) {
        let seen = fingerprint(&self.dir);
        if seen == *self.seen.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        match self.reload() {
            Ok(tenants) => tracing::info!(tenants, "tenant files changed; keys reloaded"),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "tenant files changed but do not load; keeping the previous keys");
                // Not again until the files change once more.
                *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
            }
        }
    }
}

//! DescribeDisks batching: concurrent waiters asking about single disks share
//! one call per window (up to 100 IDs per call), which keeps a burst of
//! creates and attaches far below ECS's API rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use omnidisk_provider_api::{ProviderError, Result};
use tokio::sync::oneshot;

use crate::client::{Disk, DiskQuery, EcsApi, MAX_IDS_PER_DESCRIBE};

type Reply = oneshot::Sender<Result<Option<Disk>>>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<String, Vec<Reply>>,
    flush_scheduled: bool,
}

/// Gathers single-disk lookups into batched DescribeDisks calls.
pub struct DiskBatcher {
    api: Arc<dyn EcsApi>,
    window: Duration,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for DiskBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBatcher")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl DiskBatcher {
    /// A batcher that waits `window` for company before calling.
    pub fn new(api: Arc<dyn EcsApi>, window: Duration) -> Arc<Self> {
        Arc::new(Self {
            api,
            window,
            pending: Mutex::new(Pending::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // The map holds only senders; a panic elsewhere cannot corrupt it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Describes one disk; `None` when ECS does not know it.
    pub async fn describe(self: &Arc<Self>, disk_id: &str) -> Result<Option<Disk>> {
        let (tx, rx) = oneshot::channel();
        let schedule = {
            let mut pending = self.lock();
            pending
                .waiters
                .entry(disk_id.to_owned())
                .or_default()
                .push(tx);
            let full = pending.waiters.len() >= MAX_IDS_PER_DESCRIBE;
            let first = !pending.flush_scheduled;
            pending.flush_scheduled = true;
            if full {
                Some(Duration::ZERO)
            } else if first {
                Some(self.window)
            } else {
                None
            }
        };
        if let Some(delay) = schedule {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                me.flush().await;
            });
        }
        rx.await.map_err(|_| {
            ProviderError::internal(format!("the DescribeDisks batch for {disk_id} was dropped"))
        })?
    }

    async fn flush(&self) {
        let waiters = {
            let mut pending = self.lock();
            pending.flush_scheduled = false;
            std::mem::take(&mut pending.waiters)
        };
        if waiters.is_empty() {
            return;
        }
        let mut waiters = waiters;
        let ids: Vec<String> = waiters.keys().cloned().collect();
        for chunk in ids.chunks(MAX_IDS_PER_DESCRIBE) {
            let query = DiskQuery {
                disk_ids: chunk.to_vec(),
                max_results: Some(100),
                ..DiskQuery::default()
            };
            let result = self.api.describe_disks(&query).await;
            match result {
                Ok(page) => {
                    let mut found: HashMap<String, Disk> = page
                        .disks
                        .into_iter()
                        .map(|d| (d.disk_id.clone(), d))
                        .collect();
                    for id in chunk {
                        let disk = found.remove(id);
                        for reply in waiters.remove(id).unwrap_or_default() {
                            // A waiter that gave up has dropped its receiver.
                            let _ = reply.send(Ok(disk.clone()));
                        }
                    }
                }
                Err(e) => {
                    let kind = e.kind();
                    let shared = Arc::new(e);
                    for id in chunk {
                        for reply in waiters.remove(id).unwrap_or_default() {
                            let _ = reply.send(Err(ProviderError::new(
                                kind,
                                format!("describing disk {id}"),
                            )
                            .with_source(Arc::clone(&shared))));
                        }
                    }
                }
            }
        }
    }
}

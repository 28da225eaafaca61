//! Batching of DescribeVolumes across concurrent callers.
//!
//! Every waiter (create, attach, detach, delete checks) asks for one volume
//! at a time; EC2 answers many per call and throttles per call. Requests
//! arriving within a short window, plus everything that queues up while a
//! call is in flight, go out together: IDs as one `volume-id` filter, CSI
//! names as one `tag:CSIVolumeName` filter (filters, not `VolumeIds`, so an
//! absent ID is simply missing instead of failing the whole batch).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::client::{ClientError, ClientResult, Disk, DiskQuery, Ec2Api, PageRequest};
use crate::ids::VolumeId;
use crate::retry::Retrier;

/// Most filter values per call (EC2 caps filter values at 200).
const MAX_VALUES_PER_CALL: usize = 200;
/// Most requests gathered in one round.
const MAX_BATCH: usize = 1000;

/// Why a batched lookup produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The describe call failed.
    #[error("batched volume lookup failed")]
    Describe(#[source] ClientError),
    /// The batching task is gone (the provider is shutting down).
    #[error("the volume lookup batcher has stopped")]
    Stopped,
}

#[derive(Debug)]
enum Lookup {
    Id(VolumeId),
    Name(String),
}

#[derive(Debug)]
struct Request {
    lookup: Lookup,
    deadline: Instant,
    reply: oneshot::Sender<ClientResult<Vec<Disk>>>,
}

/// A handle to the batching task; cheap to clone.
#[derive(Debug, Clone)]
pub struct DescribeBatcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl DescribeBatcher {
    /// Starts the batching task on the current runtime. It stops when the
    /// last handle is dropped. `name_tag` is the tag that holds CSI names.
    pub fn spawn(
        api: Arc<dyn Ec2Api>,
        retrier: Arc<Retrier>,
        window: Duration,
        name_tag: &'static str,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(api, retrier, window, name_tag, rx));
        Self { tx }
    }

    async fn ask(&self, lookup: Lookup, deadline: Instant) -> Result<Vec<Disk>, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                lookup,
                deadline,
                reply,
            })
            .map_err(|_| BatchError::Stopped)?;
        answer
            .await
            .map_err(|_| BatchError::Stopped)?
            .map_err(BatchError::Describe)
    }

    /// The volume with this ID, if it exists. Throttling is absorbed until
    /// `deadline` (the latest deadline of a batch applies to all of it).
    pub async fn by_id(
        &self,
        id: &VolumeId,
        deadline: Instant,
    ) -> Result<Option<Disk>, BatchError> {
        Ok(self
            .ask(Lookup::Id(id.clone()), deadline)
            .await?
            .into_iter()
            .next())
    }

    /// Every volume tagged with this CSI name.
    pub async fn by_name(&self, name: &str, deadline: Instant) -> Result<Vec<Disk>, BatchError> {
        self.ask(Lookup::Name(name.to_owned()), deadline).await
    }
}

async fn run(
    api: Arc<dyn Ec2Api>,
    retrier: Arc<Retrier>,
    window: Duration,
    name_tag: &'static str,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = Instant::now() + window;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(req) => batch.push(req),
                    None => break,
                },
                () = tokio::time::sleep_until(until) => break,
            }
        }
        // Whatever queued while the window was open (or while the previous
        // round was in flight) joins this round too.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        serve(api.as_ref(), &retrier, name_tag, batch).await;
    }
}

async fn describe_all(
    api: &dyn Ec2Api,
    retrier: &Retrier,
    query: DiskQuery,
    deadline: Instant,
) -> ClientResult<Vec<Disk>> {
    let mut out = Vec::new();
    let mut next_token = None;
    loop {
        let page = PageRequest {
            max_results: None,
            next_token: next_token.take(),
        };
        let got = retrier
            .run("DescribeVolumes", deadline, || {
                api.describe_disks(query.clone(), page.clone())
            })
            .await?;
        out.extend(got.items);
        match got.next_token {
            Some(t) => next_token = Some(t),
            None => return Ok(out),
        }
    }
}

async fn serve(api: &dyn Ec2Api, retrier: &Retrier, name_tag: &'static str, batch: Vec<Request>) {
    // Waiters that gave up have dropped their receivers; the others share
    // the most patient deadline (at least one call's worth).
    let deadline = batch
        .iter()
        .filter(|r| !r.reply.is_closed())
        .map(|r| r.deadline)
        .max()
        .unwrap_or_else(Instant::now)
        .max(Instant::now() + retrier.api_timeout());
    let ids: BTreeSet<VolumeId> = batch
        .iter()
        .filter_map(|r| match &r.lookup {
            Lookup::Id(id) => Some(id.clone()),
            Lookup::Name(_) => None,
        })
        .collect();
    let names: BTreeSet<String> = batch
        .iter()
        .filter_map(|r| match &r.lookup {
            Lookup::Name(n) => Some(n.clone()),
            Lookup::Id(_) => None,
        })
        .collect();

    let mut by_id: BTreeMap<VolumeId, ClientResult<Disk>> = BTreeMap::new();
    let mut failed_ids: BTreeMap<VolumeId, ClientError> = BTreeMap::new();
    let ids: Vec<VolumeId> = ids.into_iter().collect();
    for chunk in ids.chunks(MAX_VALUES_PER_CALL) {
        let query = DiskQuery {
            ids: chunk.to_vec(),
            ..DiskQuery::default()
        };
        match describe_all(api, retrier, query, deadline).await {
            Ok(disks) => {
                for disk in disks {
                    by_id.insert(disk.id.clone(), Ok(disk));
                }
            }
            Err(err) => {
                for id in chunk {
                    failed_ids.insert(id.clone(), err.clone());
                }
            }
        }
    }

    let mut by_name: BTreeMap<String, Vec<Disk>> = BTreeMap::new();
    let mut failed_names: BTreeMap<String, ClientError> = BTreeMap::new();
    let names: Vec<String> = names.into_iter().collect();
    for chunk in names.chunks(MAX_VALUES_PER_CALL) {
        let query = DiskQuery {
            tag_values: Some((name_tag.to_owned(), chunk.to_vec())),
            ..DiskQuery::default()
        };
        match describe_all(api, retrier, query, deadline).await {
            Ok(disks) => {
                for disk in disks {
                    if let Some(name) = disk.tags.get(name_tag) {
                        by_name.entry(name.clone()).or_default().push(disk);
                    }
                }
            }
            Err(err) => {
                for name in chunk {
                    failed_names.insert(name.clone(), err.clone());
                }
            }
        }
    }

    for req in batch {
        let answer = match &req.lookup {
            Lookup::Id(id) => match failed_ids.get(id) {
                Some(err) => Err(err.clone()),
                None => match by_id.get(id) {
                    Some(Ok(disk)) => Ok(vec![disk.clone()]),
                    Some(Err(err)) => Err(err.clone()),
                    None => Ok(Vec::new()),
                },
            },
            Lookup::Name(name) => match failed_names.get(name) {
                Some(err) => Err(err.clone()),
                None => Ok(by_name.get(name).cloned().unwrap_or_default()),
            },
        };
        // The caller may have given up (its future was dropped); that is fine.
        let _ = req.reply.send(answer);
    }
}

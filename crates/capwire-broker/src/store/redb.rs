//! The embedded store: one redb file, one writer thread doing group commit.
//!
//! Every [`Store::commit`] call becomes a job on a queue. The writer thread
//! takes the first job, then every job that queued up meanwhile (up to
//! `max_batch`), applies them all in one write transaction, commits it with
//! `Durability::Immediate` (checksummed, fsync'd) and only then answers each
//! job. Under load many sends share one fsync; alone, a send pays one.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ::redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::{
    CorrelationRecord, EndpointRecord, Envelope, InboxEntry, Snapshot, Store, StoreError,
    StoreStats, StoredMessage, Write,
};

const MESSAGES: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("messages");
const DELIVERIES: TableDefinition<'_, (u64, u64), u32> = TableDefinition::new("deliveries");
const ENDPOINTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("endpoints");
const INBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("inbox");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// (receiver, correlation id) -> (origin, expires at ms).
const CORRELATIONS: TableDefinition<'_, (u64, &str), (u64, u64)> =
    TableDefinition::new("correlations");

const NEXT_ENDPOINT: &str = "next_endpoint_id";
const NEXT_INBOX: &str = "next_inbox_id";

/// Jobs one transaction carries at most, by default.
const DEFAULT_MAX_BATCH: usize = 4096;

fn db_err(e: impl Into<::redb::Error>) -> StoreError {
    StoreError::Database(e.into().to_string())
}

/// Where a job's outcome goes.
type Done = oneshot::Sender<Result<(), StoreError>>;

enum Command {
    Job(Vec<Write>, Done),
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    writes: AtomicU64,
}

/// A [`Store`] in one redb file, with group commit.
pub struct RedbStore {
    /// Released by `close`, so that the file can be opened again while
    /// clones of the broker that held this store are still being dropped.
    db: Mutex<Option<Arc<Database>>>,
    jobs: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    /// A file left by a killed process is recovered by redb (the last
    /// committed transaction wins).
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(path, DEFAULT_MAX_BATCH)
    }

    /// [`RedbStore::open`], with at most `max_batch` commit calls per
    /// transaction.
    pub fn open_with(path: &Path, max_batch: usize) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        // Create the tables, so that reads never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(MESSAGES).map_err(db_err)?;
        txn.open_table(DELIVERIES).map_err(db_err)?;
        txn.open_table(ENDPOINTS).map_err(db_err)?;
        txn.open_table(INBOX).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(CORRELATIONS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let (writer_db, writer_counters) = (db.clone(), counters.clone());
        // Inside a tokio runtime, a task there answers each transaction's
        // jobs: the writer thread wakes it once per transaction instead of
        // waking every job's task from outside the runtime, which costs a
        // system call each and delays the next transaction.
        let answers = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Answered>();
            runtime.spawn(async move {
                while let Some((jobs, outcome)) = rx.recv().await {
                    answer(jobs, &outcome);
                }
            });
            tx
        });
        std::thread::Builder::new()
            .name("capwire-broker-store".into())
            .spawn(move || {
                writer(
                    writer_db,
                    rx,
                    max_batch.max(1),
                    &writer_counters,
                    answers.as_ref(),
                )
            })
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(RedbStore {
            db: Mutex::new(Some(db)),
            jobs: Mutex::new(Some(tx)),
            counters,
        })
    }

    fn sender(&self) -> Option<mpsc::UnboundedSender<Command>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let txn = db.begin_read().map_err(db_err)?;
        let mut snapshot = Snapshot::default();
        let endpoints = txn.open_table(ENDPOINTS).map_err(db_err)?;
        for row in endpoints.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            snapshot
                .endpoints
                .push(serde_json::from_slice::<EndpointRecord>(v.value())?);
        }
        let deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
        let messages = txn.open_table(MESSAGES).map_err(db_err)?;
        for row in messages.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (endpoint, seq) = k.value();
            let bytes = v.value();
            let count = deliveries
                .get((endpoint, seq))
                .map_err(db_err)?
                .map_or(0, |c| c.value());
            snapshot.messages.push(StoredMessage {
                endpoint,
                seq,
                envelope: serde_json::from_slice::<Envelope>(bytes)?,
                deliveries: count,
                bytes: bytes.len(),
            });
        }
        let inbox = txn.open_table(INBOX).map_err(db_err)?;
        for row in inbox.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            snapshot
                .inbox
                .push(serde_json::from_slice::<InboxEntry>(v.value())?);
        }
        let correlations = txn.open_table(CORRELATIONS).map_err(db_err)?;
        for row in correlations.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (receiver, correlation_id) = k.value();
            let (origin, expires_at_ms) = v.value();
            snapshot.correlations.push((
                receiver,
                CorrelationRecord {
                    correlation_id: correlation_id.to_owned(),
                    origin,
                    expires_at_ms,
                },
            ));
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        let counter = |name: &str| -> Result<u64, StoreError> {
            Ok(meta.get(name).map_err(db_err)?.map_or(1, |v| v.value()))
        };
        snapshot.next_endpoint_id = counter(NEXT_ENDPOINT)?;
        snapshot.next_inbox_id = counter(NEXT_INBOX)?;
        Ok(snapshot)
    }

    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'static, Result<(), StoreError>> {
        let (done, answer) = oneshot::channel();
        let queued = match self.sender() {
            Some(jobs) => jobs.send(Command::Job(writes, done)).is_ok(),
            None => false,
        };
        async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            answer.await.unwrap_or(Err(StoreError::Closed))
        }
        .boxed()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    fn close(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            let Some(jobs) = jobs else { return Ok(()) };
            let (done, closed) = oneshot::channel();
            if jobs.send(Command::Close(done)).is_ok() {
                let _ = closed.await;
            }
            // The writer thread has let go of its handle: this is the last.
            drop(db);
            Ok(())
        }
        .boxed()
    }
}

/// A transaction's jobs and its outcome, for the task that answers them.
type Answered = (Vec<Done>, Result<(), StoreError>);

/// Answers each job of a transaction.
fn answer(jobs: Vec<Done>, outcome: &Result<(), StoreError>) {
    for done in jobs {
        let _ = done.send(match outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Database(e.to_string())),
        });
    }
}

/// The writer thread: group commit until the queue closes or a `Close`.
/// `answers` is the runtime task that answers the jobs, if there is one;
/// without it the writer answers them itself.
fn writer(
    db: Arc<Database>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    max_batch: usize,
    counters: &Counters,
    answers: Option<&mpsc::UnboundedSender<Answered>>,
) {
    let mut closing = None;
    let mut writes = Vec::new();
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Job(job, done) => {
                    writes.push(job);
                    jobs.push(done);
                }
                Command::Close(done) => closing = Some(done),
            }
            if jobs.len() < max_batch && closing.is_none() {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let outcome = apply(&db, writes.iter().flatten());
        counters.commits.fetch_add(1, Ordering::Relaxed);
        counters
            .batches
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let count: usize = writes.iter().map(Vec::len).sum();
        counters.writes.fetch_add(count as u64, Ordering::Relaxed);
        writes.clear();
        if let Err(e) = &outcome {
            tracing::error!(error = %e, jobs = jobs.len(), "store commit failed");
        }
        match answers {
            Some(answers) => {
                if let Err(mpsc::error::SendError((jobs, outcome))) = answers.send((jobs, outcome))
                {
                    // The runtime is gone: answer from here.
                    answer(jobs, &outcome);
                }
            }
            None => answer(jobs, &outcome),
        }
    }
    // Refuse whatever is still queued: nothing after a close is written.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Job(_, done) = command {
            let _ = done.send(Err(StoreError::Closed));
        }
    }
    // Let go of the database before saying the store is closed.
    drop(db);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn apply<'a>(db: &Database, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate);
    write_all(&txn, writes)?;
    txn.commit().map_err(db_err)
}

fn write_all<'a>(
    txn: &WriteTransaction,
    writes: impl Iterator<Item = &'a Write>,
) -> Result<(), StoreError> {
    let mut messages = txn.open_table(MESSAGES).map_err(db_err)?;
    let mut deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
    let mut endpoints = txn.open_table(ENDPOINTS).map_err(db_err)?;
    let mut inbox = txn.open_table(INBOX).map_err(db_err)?;
    let mut meta = txn.open_table(META).map_err(db_err)?;
    let mut correlations = txn.open_table(CORRELATIONS).map_err(db_err)?;
    let mut bump = |name: &str, id: u64| -> Result<(), StoreError> {
        let next = meta.get(name).map_err(db_err)?.map_or(1, |v| v.value());
        if id >= next {
            meta.insert(name, id + 1).map_err(db_err)?;
        }
        Ok(())
    };
    for write in writes {
        match write {
            Write::Append {
                endpoint,
                seq,
                bytes,
            } => {
                messages
                    .insert((*endpoint, *seq), bytes.as_slice())
                    .map_err(db_err)?;
            }
            Write::Ack { endpoint, seqs } => {
                for seq in seqs {
                    messages.remove((*endpoint, *seq)).map_err(db_err)?;
                    deliveries.remove((*endpoint, *seq)).map_err(db_err)?;
                }
            }
            Write::Delivered { endpoint, seqs } => {
                for seq in seqs {
                    let key = (*endpoint, *seq);
                    // A message acknowledged meanwhile is not counted.
                    if messages.get(key).map_err(db_err)?.is_none() {
                        continue;
                    }
                    let count = deliveries
                        .get(key)
                        .map_err(db_err)?
                        .map_or(0, |c| c.value());
                    deliveries
                        .insert(key, count.saturating_add(1))
                        .map_err(db_err)?;
                }
            }
            Write::PutEndpoint(record) => {
                let bytes = serde_json::to_vec(record)?;
                endpoints
                    .insert(record.id, bytes.as_slice())
                    .map_err(db_err)?;
                bump(NEXT_ENDPOINT, record.id)?;
            }
            Write::RemoveEndpoint(id) => {
                endpoints.remove(*id).map_err(db_err)?;
            }
            Write::InboxAdd(entry) => {
                let bytes = serde_json::to_vec(entry)?;
                inbox.insert(entry.id, bytes.as_slice()).map_err(db_err)?;
                bump(NEXT_INBOX, entry.id)?;
            }
            Write::InboxRemove(id) => {
                inbox.remove(*id).map_err(db_err)?;
            }
            Write::PutCorrelations { receiver, records } => {
                for r in records {
                    correlations
                        .insert(
                            (*receiver, r.correlation_id.as_str()),
                            (r.origin, r.expires_at_ms),
                        )
                        .map_err(db_err)?;
                }
            }
            Write::ForgetCorrelations {
                receiver,
                correlation_ids,
            } => {
                for id in correlation_ids {
                    correlations
                        .remove((*receiver, id.as_str()))
                        .map_err(db_err)?;
                }
            }
            Write::ForgetEndpointCorrelations(receiver) => {
                let next = receiver.saturating_add(1);
                correlations
                    .retain_in((*receiver, "")..(next, ""), |_, _| false)
                    .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

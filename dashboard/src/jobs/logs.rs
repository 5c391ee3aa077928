//! A running job's output: read from the pipe its driver writes stdout and stderr to, and
//! kept in the GCS in bounded chunks (see the module invariants of `jobs`).

use std::collections::VecDeque;
use std::io::Read;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status;

use super::store::JobStore;

/// Largest chunk of output stored under one key.
pub(crate) const LOG_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks kept per job (16 MiB of output); older ones are deleted.
pub(crate) const MAX_LOG_CHUNKS: usize = 256;
/// Output is written to the GCS at least this often while the driver runs.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Appends a job's output to its chunks in the GCS, dropping the oldest past the bound.
pub(crate) struct LogWriter {
    store: JobStore,
    id: String,
    next_seq: u64,
    /// Kept chunks: (seq, length), oldest first.
    kept: VecDeque<(u64, usize)>,
    /// Bytes of output dropped so far.
    pub dropped: u64,
}

impl LogWriter {
    pub fn new(store: JobStore, id: String) -> Self {
        LogWriter {
            store,
            id,
            next_seq: 0,
            kept: VecDeque::new(),
            dropped: 0,
        }
    }

    pub async fn append(&mut self, bytes: &[u8]) -> Result<(), Status> {
        for chunk in bytes.chunks(LOG_CHUNK_BYTES) {
            self.store
                .put_log_chunk(&self.id, self.next_seq, chunk.to_vec())
                .await?;
            self.kept.push_back((self.next_seq, chunk.len()));
            self.next_seq += 1;
            while self.kept.len() > MAX_LOG_CHUNKS {
                if let Some((seq, len)) = self.kept.pop_front() {
                    self.store.delete_log_chunk(&self.id, seq).await?;
                    self.dropped += len as u64;
                }
            }
        }
        Ok(())
    }
}

/// Reads `pipe` on a thread of its own until every writer closed it, handing chunks over.
pub(crate) fn read_pipe(mut pipe: std::io::PipeReader) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; LOG_CHUNK_BYTES];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

/// Moves output from `rx` into `writer` until the pipe closes, in batches written at least
/// every `FLUSH_EVERY`. A GCS that refuses a write loses that batch (logged), not the job.
pub(crate) async fn pump(mut rx: mpsc::Receiver<Vec<u8>>, writer: &mut LogWriter) {
    let mut batch: Vec<u8> = Vec::new();
    let mut last_flush = Instant::now();
    loop {
        let next = tokio::time::timeout(FLUSH_EVERY, rx.recv()).await;
        let closed = matches!(next, Ok(None));
        if let Ok(Some(bytes)) = next {
            batch.extend_from_slice(&bytes);
        }
        let due = closed || last_flush.elapsed() >= FLUSH_EVERY || batch.len() >= LOG_CHUNK_BYTES;
        if due && !batch.is_empty() {
            if let Err(e) = writer.append(&batch).await {
                tracing::warn!(job = %writer.id, error = %e.message(), bytes = batch.len(), "could not store job output");
            }
            batch.clear();
            last_flush = Instant::now();
        }
        if closed {
            return;
        }
    }
}

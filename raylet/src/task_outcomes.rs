//! What exited workers had recorded about their tasks (their reply journals, see
//! `miniray_common::reply_journal`), kept for a while so that a caller whose push to a
//! worker failed can learn exactly which of its tasks finished, which one was running, and
//! which never started.
//!
//! Invariants:
//! - a worker's journals are read and removed once, when the pool reaps it, before anyone
//!   waiting for its exit is woken, so an answer given after the exit is final;
//! - an account is only given when every journal of the worker was read whole; otherwise
//!   the answer is "unknown" and the caller falls back to charging the first unfinished task;
//! - at most [`KEEP_EXITED`] accounts are kept (the oldest go first).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use miniray_common::WorkerId;
use miniray_common::reply_journal::{self, Entry};
use miniray_proto::PushTaskReply;
use prost::Message;

/// Accounts of exited workers kept for callers to ask about.
const KEEP_EXITED: usize = 1024;

/// What one worker recorded: per task it started, its reply if it finished.
#[derive(Debug, Default)]
pub struct TaskAccount {
    /// Started tasks in start order.
    pub order: Vec<Vec<u8>>,
    pub replies: HashMap<Vec<u8>, PushTaskReply>,
}

/// How a worker ended and what it recorded (`None`: no complete account).
#[derive(Debug)]
pub struct ExitRecord {
    pub status: String,
    pub account: Option<TaskAccount>,
}

/// What an exited worker did with the tasks a caller asked about.
#[derive(Debug, PartialEq)]
pub struct Outcomes {
    /// How it exited, e.g. "signal: 6 (SIGABRT)".
    pub exit_status: String,
    /// The asked-about tasks it started, in start order, each with its reply if it
    /// finished.
    pub started: Vec<(Vec<u8>, Option<PushTaskReply>)>,
}

/// The journal path prefix of a worker: `<dir>/<name>-journal-<worker id>`.
pub fn journal_prefix(dir: &Path, name: &str, worker: WorkerId) -> PathBuf {
    dir.join(format!("{name}-journal-{worker}"))
}

/// Reads and removes every journal under `prefix`. `None` if there is none, or one cannot be
/// read whole.
pub fn collect(prefix: &Path) -> Option<TaskAccount> {
    let dir = prefix.parent()?;
    let stem = format!("{}-", prefix.file_name()?.to_string_lossy());
    let paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
        .map(|e| e.path())
        .collect();
    let mut account = TaskAccount::default();
    let mut complete = !paths.is_empty();
    for path in &paths {
        let entries = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| reply_journal::parse(&bytes).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(path);
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot use a worker's reply journal");
                complete = false;
                continue;
            }
        };
        for entry in entries {
            match entry {
                Entry::Started(task_id) => account.order.push(task_id),
                Entry::Reply(bytes) => match PushTaskReply::decode(bytes.as_slice()) {
                    Ok(reply) => {
                        account.replies.insert(reply.task_id.clone(), reply);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "undecodable reply in a worker's journal");
                        complete = false;
                    }
                },
            }
        }
    }
    complete.then_some(account)
}

/// Removes journal files that start with `prefix` (a stopped raylet's leftovers).
pub fn remove_all(dir: &Path, name_prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(name_prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The accounts of recently exited workers.
#[derive(Default)]
pub struct ExitedWorkers {
    records: parking_lot::Mutex<VecDeque<(WorkerId, ExitRecord)>>,
}

impl ExitedWorkers {
    pub fn insert(&self, worker: WorkerId, record: ExitRecord) {
        let mut records = self.records.lock();
        records.push_back((worker, record));
        while records.len() > KEEP_EXITED {
            records.pop_front();
        }
    }

    /// The outcome of each of `task_ids` on `worker`, if its account is known: the started
    /// ones in start order, each with its reply if it finished.
    pub fn outcomes(&self, worker: WorkerId, task_ids: &[Vec<u8>]) -> Option<Outcomes> {
        let records = self.records.lock();
        let (_, record) = records.iter().rev().find(|(w, _)| *w == worker)?;
        let account = record.account.as_ref()?;
        let asked: std::collections::HashSet<&[u8]> =
            task_ids.iter().map(|t| t.as_slice()).collect();
        let started = account
            .order
            .iter()
            .filter(|t| asked.contains(t.as_slice()))
            .map(|t| (t.clone(), account.replies.get(t).cloned()))
            .collect();
        Some(Outcomes {
            exit_status: record.status.clone(),
            started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniray_common::reply_journal::{HEADER_LEN, KIND_REPLY, KIND_STARTED, MAGIC};

    fn write_journal(path: &Path, entries: &[(u8, Vec<u8>)]) {
        let mut body = Vec::new();
        for (kind, payload) in entries {
            body.extend_from_slice(&reply_journal::entry_header(*kind, payload.len()).unwrap());
            body.extend_from_slice(payload);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&body);
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn an_account_lists_started_tasks_with_their_replies_and_removes_the_journals() {
        let dir = tempfile::tempdir().unwrap();
        let worker = WorkerId::random();
        let prefix = journal_prefix(dir.path(), "seg", worker);
        let reply = PushTaskReply {
            task_id: b"t1".to_vec(),
            run_micros: 5,
            outcome: None,
            contained: Vec::new(),
        };
        write_journal(&reply_journal::session_path(&prefix, 0), &[]);
        write_journal(
            &reply_journal::session_path(&prefix, 1),
            &[
                (KIND_STARTED, b"t1".to_vec()),
                (KIND_REPLY, reply.encode_to_vec()),
                (KIND_STARTED, b"t2".to_vec()),
            ],
        );
        let account = collect(&prefix).expect("complete account");
        assert_eq!(account.order, vec![b"t1".to_vec(), b"t2".to_vec()]);
        assert_eq!(account.replies.get(b"t1".as_slice()), Some(&reply));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let exited = ExitedWorkers::default();
        exited.insert(
            worker,
            ExitRecord {
                status: "signal: 6".into(),
                account: Some(account),
            },
        );
        let started = exited
            .outcomes(worker, &[b"t2".to_vec(), b"t1".to_vec(), b"t3".to_vec()])
            .unwrap()
            .started;
        assert_eq!(
            started,
            vec![(b"t1".to_vec(), Some(reply)), (b"t2".to_vec(), None)]
        );
        assert!(exited.outcomes(WorkerId::random(), &[]).is_none());
    }

    #[test]
    fn a_missing_or_damaged_journal_gives_no_account() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = journal_prefix(dir.path(), "seg", WorkerId::random());
        assert!(collect(&prefix).is_none(), "no journal at all");
        write_journal(&reply_journal::session_path(&prefix, 0), &[]);
        std::fs::write(reply_journal::session_path(&prefix, 1), b"garbage").unwrap();
        assert!(collect(&prefix).is_none(), "one unreadable journal");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

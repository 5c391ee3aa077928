//! The reply journal: what a worker records, in shared memory, about the tasks of one push
//! session, so that its raylet can tell after the worker died which task was running and
//! hand over the replies that had not reached the caller yet.
//!
//! Why: a worker runs a batch of tasks in order and sends short tasks' replies in groups.
//! When it dies, the caller only knows which replies it received. Without the journal it
//! cannot tell a task that finished (reply still in the dead process) from the one that
//! crashed, and would charge a retry to the wrong task.
//!
//! Layout of one journal file (little endian): a 24-byte header — magic, the committed
//! length of the entries, flags — then entries, each `u32 payload length, u8 kind,
//! payload`. Kinds: [`KIND_STARTED`] (payload: the task id) written before a task runs,
//! [`KIND_REPLY`] (payload: the encoded `PushTaskReply`) written when it finished.
//!
//! Invariants:
//! - the writer (the worker's task thread) appends an entry's bytes first and publishes the
//!   new committed length after, so a reader never sees a torn entry;
//! - the writer resets the committed length to zero when the session's next batch starts:
//!   the caller sends a batch only after reading every reply of the previous one;
//! - a journal that could not record an entry (no space) carries [`FLAG_INCOMPLETE`], and a
//!   reader must then not draw conclusions from it.

/// First 8 bytes of every journal file.
pub const MAGIC: [u8; 8] = *b"MRJRNL01";
/// Bytes before the first entry.
pub const HEADER_LEN: usize = 24;
/// Offset of the committed length (an `AtomicU64` in the mapped file).
pub const COMMITTED_OFFSET: usize = 8;
/// Offset of the flags (an `AtomicU64` in the mapped file).
pub const FLAGS_OFFSET: usize = 16;
/// Set when an entry could not be recorded: the journal is not a complete account.
pub const FLAG_INCOMPLETE: u64 = 1;
/// Bytes before an entry's payload.
pub const ENTRY_HEADER_LEN: usize = 5;

/// The entry written before a task runs; its payload is the task id.
pub const KIND_STARTED: u8 = 1;
/// The entry written when a task finished; its payload is the encoded `PushTaskReply`.
pub const KIND_REPLY: u8 = 2;

/// The journal of push session `session` of the worker whose journals start with `prefix`:
/// `<prefix>-<session>`. Session 0 is created empty at worker start, so a worker that
/// journals always has a file, and a raylet that finds none knows nothing was recorded.
pub fn session_path(prefix: &std::path::Path, session: u64) -> std::path::PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!("-{session}"));
    std::path::PathBuf::from(name)
}

/// Encodes the header of an entry with `payload_len` bytes of payload.
pub fn entry_header(kind: u8, payload_len: usize) -> Option<[u8; ENTRY_HEADER_LEN]> {
    let len = u32::try_from(payload_len).ok()?;
    let mut out = [0u8; ENTRY_HEADER_LEN];
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4] = kind;
    Some(out)
}

/// One recorded entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Started(Vec<u8>),
    Reply(Vec<u8>),
}

/// Why a journal file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("not a reply journal (bad magic or too short)")]
    NotAJournal,
    #[error("the journal is incomplete: the worker could not record every entry")]
    Incomplete,
    #[error("the journal is corrupt at byte {0}")]
    Corrupt(usize),
}

/// Reads the committed entries of a journal file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, JournalError> {
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return Err(JournalError::NotAJournal);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if word(FLAGS_OFFSET) & FLAG_INCOMPLETE != 0 {
        return Err(JournalError::Incomplete);
    }
    let committed =
        usize::try_from(word(COMMITTED_OFFSET)).map_err(|_| JournalError::Corrupt(8))?;
    let end = HEADER_LEN
        .checked_add(committed)
        .filter(|&e| e <= bytes.len())
        .ok_or(JournalError::Corrupt(COMMITTED_OFFSET))?;
    let mut entries = Vec::new();
    let mut at = HEADER_LEN;
    while at < end {
        if end - at < ENTRY_HEADER_LEN {
            return Err(JournalError::Corrupt(at));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[at..at + 4]);
        let len = u32::from_le_bytes(len) as usize;
        let kind = bytes[at + 4];
        let start = at + ENTRY_HEADER_LEN;
        let stop = start
            .checked_add(len)
            .filter(|&s| s <= end)
            .ok_or(JournalError::Corrupt(at))?;
        let payload = bytes[start..stop].to_vec();
        entries.push(match kind {
            KIND_STARTED => Entry::Started(payload),
            KIND_REPLY => Entry::Reply(payload),
            _ => return Err(JournalError::Corrupt(at)),
        });
        at = stop;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(entries: &[(u8, &[u8])], flags: u64) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, payload) in entries {
            body.extend_from_slice(&entry_header(*kind, payload.len()).unwrap());
            body.extend_from_slice(payload);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&body);
        // Uncommitted garbage after the committed entries is ignored.
        out.extend_from_slice(&[7u8; 40]);
        out
    }

    #[test]
    fn committed_entries_are_read_in_order() {
        let bytes = journal(
            &[
                (KIND_STARTED, b"t1"),
                (KIND_REPLY, b"r1"),
                (KIND_STARTED, b"t2"),
            ],
            0,
        );
        assert_eq!(
            parse(&bytes).unwrap(),
            vec![
                Entry::Started(b"t1".to_vec()),
                Entry::Reply(b"r1".to_vec()),
                Entry::Started(b"t2".to_vec())
            ]
        );
    }

    #[test]
    fn bad_journals_are_refused_not_misread() {
        assert_eq!(parse(b"short"), Err(JournalError::NotAJournal));
        let incomplete = journal(&[(KIND_STARTED, b"t1")], FLAG_INCOMPLETE);
        assert_eq!(parse(&incomplete), Err(JournalError::Incomplete));
        let mut overlong = journal(&[(KIND_STARTED, b"t1")], 0);
        overlong[COMMITTED_OFFSET..COMMITTED_OFFSET + 8]
            .copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&overlong), Err(JournalError::Corrupt(_))));
        let mut bad_kind = journal(&[(KIND_STARTED, b"t1")], 0);
        bad_kind[HEADER_LEN + 4] = 9;
        assert!(matches!(parse(&bad_kind), Err(JournalError::Corrupt(_))));
    }
}

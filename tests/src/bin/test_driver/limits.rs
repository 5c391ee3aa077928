//! Limits a user meets as errors: a put into a node whose shared-memory folder is full.

use crate::{fnv, out, pattern, report};

/// The worker's reply journal prefix, and whether a journal file with it exists.
#[miniray::remote]
fn journal_of_worker() -> (String, bool) {
    let prefix = std::env::var("MINIRAY_REPLY_JOURNAL").unwrap_or_default();
    let path = std::path::Path::new(&prefix);
    let exists = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => std::fs::read_dir(dir).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&*name.to_string_lossy())
            })
        }),
        _ => false,
    };
    (prefix, exists)
}

/// `shm_full FILLER LEN`: the plasma folder is nearly full because of `FILLER` (another
/// user of the tmpfs): a put of `LEN` bytes fails with `ObjectStoreFull`, tasks still run,
/// and once the filler is gone the same put succeeds and reads back intact.
pub(crate) fn shm_full() -> anyhow::Result<()> {
    let filler = std::env::args().nth(2).unwrap_or_default();
    let len: usize = std::env::args().nth(3).unwrap_or_default().parse()?;
    let (prefix, exists) = miniray::get(&journal_of_worker::remote()?)?;
    out("journal_prefix", prefix);
    out("journal_exists", exists);
    report("full_put", miniray::put(pattern(len, 1)).map(|_| ()));
    // Tasks still run after the refused put.
    let (_, exists) = miniray::get(&journal_of_worker::remote()?)?;
    out("task_after_full", exists);
    std::fs::remove_file(&filler)?;
    // Removing the file gave its memory back at once: the same put now fits.
    let r = miniray::put(pattern(len, 2))?;
    out(
        "after_free",
        fnv(&miniray::get(&r)?) == fnv(&pattern(len, 2)),
    );
    Ok(())
}

/// `hold_actor RELEASE`: keeps an actor (so a worker's CoreWorker server) and this
/// driver's own server up until the file `RELEASE` exists, for the test to call them.
pub(crate) fn hold_actor() -> anyhow::Result<()> {
    let release = std::env::args().nth(2).unwrap_or_default();
    let counter = crate::actors::Counter::options()
        .name("auth-probe")
        .remote(1)?;
    out("incr", miniray::get(&counter.incr(1)?)?);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while std::fs::metadata(&release).is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "never released");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

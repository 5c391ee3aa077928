//! The wire form of a job executable, the same for the driver's upload and the GCS's
//! serving of it: `TRANSFER_CHUNK_SIZE` chunks, each a slice of one buffer (no copy),
//! the first naming the hash and total size. An empty executable is one empty chunk, so
//! the receiver always learns the hash.

use bytes::Bytes;
use miniray_proto::ExecutableChunk;

use crate::config::TRANSFER_CHUNK_SIZE;

/// `data`, the executable whose hash is `hash`, as the chunks that carry it.
pub fn chunks(hash: &str, data: Bytes) -> impl Iterator<Item = ExecutableChunk> + use<> {
    let hash = hash.to_string();
    let total = data.len();
    let count = total.div_ceil(TRANSFER_CHUNK_SIZE).max(1);
    (0..count).map(move |i| {
        let start = i * TRANSFER_CHUNK_SIZE;
        let end = (start + TRANSFER_CHUNK_SIZE).min(total);
        let first = i == 0;
        ExecutableChunk {
            hash: if first { hash.clone() } else { String::new() },
            total_size: if first { total as u64 } else { 0 },
            data: data.slice(start..end),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_chunk_names_the_executable_and_the_chunks_carry_it_whole() {
        let data: Bytes = (0..2 * TRANSFER_CHUNK_SIZE + 10)
            .map(|i| i as u8)
            .collect::<Vec<_>>()
            .into();
        let chunks: Vec<_> = chunks("h", data.clone()).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            (chunks[0].hash.as_str(), chunks[0].total_size),
            ("h", data.len() as u64)
        );
        assert!(
            chunks[1..]
                .iter()
                .all(|c| c.hash.is_empty() && c.total_size == 0)
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn an_empty_executable_is_one_empty_chunk_that_names_it() {
        let chunks: Vec<_> = chunks("h", Bytes::new()).collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].hash.as_str(), chunks[0].total_size), ("h", 0));
        assert!(chunks[0].data.is_empty());
    }
}

//! Values on the wire and in the object store: postcard, with a copy-free path for byte
//! vectors.
//!
//! Invariant: `encode`/`encode_into` produce exactly the bytes `postcard::to_stdvec` would,
//! so either side may take the fast path or the general one.

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

fn as_bytes<T: 'static>(value: &T) -> Option<&[u8]> {
    (value as &dyn Any)
        .downcast_ref::<Vec<u8>>()
        .map(Vec::as_slice)
}

/// Encoded size of a byte vector: varint length prefix plus the bytes.
fn bytes_header(len: usize) -> Result<Vec<u8>> {
    postcard::to_stdvec(&len).map_err(|e| Error::Serialize {
        what: "a length".into(),
        reason: e.to_string(),
    })
}

/// A value ready to be written somewhere: either fully encoded, or a byte vector's header
/// with the payload still in the caller's value (written without an intermediate copy).
pub(crate) enum Encoded<'a> {
    Owned(Vec<u8>),
    Bytes { header: Vec<u8>, payload: &'a [u8] },
}

impl Encoded<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Encoded::Owned(v) => v.len(),
            Encoded::Bytes { header, payload } => header.len() + payload.len(),
        }
    }

    /// Copies the encoding into `dst`, which must be exactly `len()` long.
    pub(crate) fn write_to(&self, dst: &mut [u8]) {
        match self {
            Encoded::Owned(v) => parallel_copy(dst, v),
            Encoded::Bytes { header, payload } => {
                dst[..header.len()].copy_from_slice(header);
                parallel_copy(&mut dst[header.len()..], payload);
            }
        }
    }

    /// The encoding in pieces of at most `size` bytes, each copied out: for streaming it
    /// to a store this process cannot map.
    pub(crate) fn chunks(&self, size: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let size = size.max(1);
        let len = self.len();
        let (head, tail): (&[u8], &[u8]) = match self {
            Encoded::Owned(v) => (v, &[]),
            Encoded::Bytes { header, payload } => (header, payload),
        };
        (0..len).step_by(size).map(move |start| {
            let end = (start + size).min(len);
            let mut out = Vec::with_capacity(end - start);
            if start < head.len() {
                out.extend_from_slice(&head[start..end.min(head.len())]);
            }
            if end > head.len() {
                out.extend_from_slice(&tail[start.max(head.len()) - head.len()..end - head.len()]);
            }
            out
        })
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Encoded::Owned(v) => v,
            Encoded::Bytes { header, payload } => {
                let mut v = Vec::with_capacity(header.len() + payload.len());
                v.extend_from_slice(&header);
                v.extend_from_slice(payload);
                v
            }
        }
    }
}

/// Copies at or above this size are split across threads: one core's memcpy does not
/// saturate memory bandwidth.
const PARALLEL_COPY_MIN: usize = 16 << 20;

fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    if src.len() < PARALLEL_COPY_MIN || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let chunk = src.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            scope.spawn(move || d.copy_from_slice(s));
        }
    });
}

/// Encodes a value, borrowing a `Vec<u8>`'s payload instead of copying it.
pub(crate) fn encode_lazy<T: Serialize + 'static>(value: &T) -> Result<Encoded<'_>> {
    if let Some(bytes) = as_bytes(value) {
        return Ok(Encoded::Bytes {
            header: bytes_header(bytes.len())?,
            payload: bytes,
        });
    }
    encode_general(value).map(Encoded::Owned)
}

/// Encodes a value into a fresh vector.
pub fn encode<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>> {
    Ok(encode_lazy(value)?.into_vec())
}

fn encode_general<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Serialize {
        what: std::any::type_name::<T>().into(),
        reason: e.to_string(),
    })
}

/// The payload of an encoded `Vec<u8>`, in place.
pub(crate) fn bytes_payload(bytes: &[u8]) -> Result<&[u8]> {
    let err = |reason: String| Error::Deserialize {
        what: "a byte vector".into(),
        reason,
    };
    let (len, rest) = postcard::take_from_bytes::<usize>(bytes).map_err(|e| err(e.to_string()))?;
    if rest.len() != len {
        return Err(err(format!(
            "byte vector says {len} bytes but {} follow",
            rest.len()
        )));
    }
    Ok(rest)
}

/// Decodes a value; a `Vec<u8>` is copied out in one `memcpy`.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T> {
    let err = |reason: String| Error::Deserialize {
        what: format!("a value of type {}", std::any::type_name::<T>()),
        reason,
    };
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let rest = bytes_payload(bytes)?;
        let len = rest.len();
        let out = if len < PARALLEL_COPY_MIN {
            rest.to_vec()
        } else {
            // A large zeroed allocation is fresh pages the kernel zeroes on first touch, so
            // the copy, spread over threads with its page faults, is the only pass.
            let mut out = vec![0u8; len];
            parallel_copy(&mut out, rest);
            out
        };
        let boxed: Box<dyn Any> = Box::new(out);
        return match boxed.downcast::<T>() {
            Ok(v) => Ok(*v),
            Err(_) => Err(err("type mismatch".into())),
        };
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(err(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_encoding_in_order() {
        let payload: Vec<u8> = (0..100u8).collect();
        let lazy = Encoded::Bytes {
            header: vec![200, 201, 202],
            payload: &payload,
        };
        let whole = Encoded::Owned(lazy.chunks(usize::MAX).flatten().collect()).into_vec();
        for size in [1, 2, 3, 4, 7, 103, 1000] {
            let chunks: Vec<Vec<u8>> = lazy.chunks(size).collect();
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= size));
            assert_eq!(chunks.concat(), whole, "chunk size {size}");
            let owned = Encoded::Owned(whole.clone());
            assert_eq!(owned.chunks(size).collect::<Vec<_>>().concat(), whole);
        }
        assert_eq!(whole.len(), 103);
        assert_eq!(Encoded::Owned(Vec::new()).chunks(4).count(), 0);
    }

    #[test]
    fn fast_path_matches_postcard() {
        let v: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        assert_eq!(encode(&v).unwrap(), postcard::to_stdvec(&v).unwrap());
        assert_eq!(decode::<Vec<u8>>(&encode(&v).unwrap()).unwrap(), v);
        let general: Vec<u8> = postcard::from_bytes(&encode(&v).unwrap()).unwrap();
        assert_eq!(general, v);
    }

    #[test]
    fn rejects_garbage_and_wrong_types() {
        assert!(decode::<u64>(&[]).is_err());
        assert!(decode::<Vec<u8>>(&[5, 1, 2]).is_err());
        let s = encode(&"hello".to_string()).unwrap();
        assert!(decode::<(String, u64)>(&s).is_err(), "missing field");
        assert!(decode::<bool>(&[7]).is_err(), "not a bool");
        assert!(decode::<u8>(&encode(&1u64).unwrap()[..]).is_ok());
        assert!(matches!(
            decode::<u8>(&encode(&(1u8, 2u8)).unwrap()),
            Err(Error::Deserialize { .. })
        ));
    }
}

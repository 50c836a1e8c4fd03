//! Encode buffers reused from export to export.
//!
//! A full export batch encodes to ~0.5 MiB, more than the allocator keeps pooled: a fresh
//! buffer per export came as fresh pages every time, zeroed by the kernel (perf on the tracing
//! benchmark: a visible share of a traced request's CPU on the batch thread). A buffer taken
//! from the [`BufferPool`] keeps the capacity it grew to, and the [`Bytes`] handed to the
//! transport give it back when the transport drops them.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers kept at most: one being encoded, one or two in flight.
const KEPT: usize = 3;

/// A pool of encode buffers; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// An empty buffer, with the capacity a previous export left in it when there is one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    /// `buf[start..]` as [`Bytes`] that give `buf` back to the pool when the last of them is
    /// dropped.
    pub(crate) fn share(&self, buf: Vec<u8>, start: usize) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            pool: self.clone(),
        })
        .slice(start..)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < KEPT
        {
            kept.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.0.lock().map_or(0, |kept| kept.len())
    }
}

/// A buffer lent to the transport as [`Bytes`].
struct Lent {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_with_its_capacity_once_its_bytes_are_dropped() {
        let pool = BufferPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(b"headbody");
        let ptr = buf.as_ptr();
        let bytes = pool.share(buf, 4);
        assert_eq!(&bytes[..], b"body");
        let copy = bytes.clone();
        drop(bytes);
        assert_eq!(pool.kept(), 0, "still lent while a copy lives");
        drop(copy);
        assert_eq!(pool.kept(), 1);
        let again = pool.take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 8);
        assert_eq!(again.as_ptr(), ptr, "the same memory");
    }

    #[test]
    fn the_pool_keeps_a_few_buffers_and_frees_the_rest() {
        let pool = BufferPool::default();
        let lent: Vec<Bytes> = (0..KEPT + 2).map(|_| pool.share(vec![1; 16], 0)).collect();
        drop(lent);
        assert_eq!(pool.kept(), KEPT);
    }
}

//! The paged KV store: keys and values of every layer, laid out by the block manager's blocks.
//!
//! Per layer, V is `[num_blocks, num_kv_heads, block_size, head_dim]` and K is
//! `[num_blocks, num_kv_heads, head_dim, block_size]`: keys are transposed within their block.
//! Both are IEEE half (as llama.cpp's default cache): attention reads every cached key and
//! value of a request at each step, so half the bytes is half of attention's memory traffic
//! and twice the tokens a given amount of memory holds. Keys and values are rounded to f16
//! once, when written.
//! A token in slot `s` (block `s / block_size`, offset `s % block_size`) keeps its value for
//! head `g` at `block_offset(block, g) + offset · head_dim`, and dimension `d` of its key at
//! `block_offset(block, g) + d · block_size + offset`. One head's block is contiguous in both, and
//! the transposed keys let attention score a whole block with lane-wise multiply-adds.
//!
//! The store knows nothing of sequences: the engine's block tables say which blocks a sequence
//! owns, and a freed block is simply overwritten by its next owner.
//!
//! Each layer's keys and values live in pages of their own, an anonymous memory map
//! ([`HalfPages`]): fresh zero pages from the OS, so the memory `--kv-cache-memory` reserves is
//! resident only once blocks are used (the block manager hands out the lowest free blocks
//! first). Written zero by zero, the default 1 GiB reserve made an idle server hold 1.3 GB.
//! Allocated zeroed from the heap, the store was handed the pages a model's load had just
//! freed, which the allocator then cleared: serving SmolLM2-135M's BF16 file held 477 MB after
//! one request, 389 MB with the maps. The maps ask for huge pages (`MADV_HUGEPAGE`): attention
//! jumps from block to block, and on 4 KiB pages 16-sequence decode ran ~12 % slower (the heap's
//! pages were huge ones too); a map then grows resident 2 MiB at a time.

use std::ops::{Deref, DerefMut};

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::ModelError;

/// The error for a store of `bytes` that no address fits.
fn past_address_space(bytes: u128) -> ModelError {
    ModelError::KvStore {
        bytes,
        error: std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            "more than the address space holds",
        ),
    }
}

/// `len` f16 values in an anonymous memory map of their own (see the module docs).
pub struct HalfPages {
    map: memmap2::MmapMut,
    len: usize,
}

impl HalfPages {
    /// `len` zeros, resident only where written; an error when the OS refuses the mapping.
    pub fn try_zeroed(len: usize) -> Result<Self, ModelError> {
        let want = len as u128 * std::mem::size_of::<f16>() as u128;
        let bytes = usize::try_from(want).map_err(|_| past_address_space(want))?;
        let map = memmap2::MmapMut::map_anon(bytes.max(1))
            .map_err(|error| ModelError::KvStore { bytes: want, error })?;
        // Huge pages where the kernel grants them on request: fewer TLB misses in attention.
        // Advice only: without them the store works the same.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(Self { map, len })
    }

    /// A copy of `values`.
    ///
    /// # Panics
    /// If the OS refuses the mapping.
    pub fn from_slice(values: &[f16]) -> Self {
        let mut pages = Self::try_zeroed(values.len()).unwrap_or_else(|e| panic!("{e}"));
        pages.copy_from_slice(values);
        pages
    }
}

impl Deref for HalfPages {
    type Target = [f16];
    fn deref(&self) -> &[f16] {
        // SAFETY: the map is page-aligned and holds at least `len` f16 values, any bits of
        // which are a valid f16; it lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for HalfPages {
    fn deref_mut(&mut self) -> &mut [f16] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len) }
    }
}

impl Clone for HalfPages {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl std::fmt::Debug for HalfPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HalfPages({} values)", self.len)
    }
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys.
    pub k: HalfPages,
    /// Values.
    pub v: HalfPages,
}

/// Geometry of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Slots per block.
    pub block_size: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl KvGeometry {
    /// Values of K (or V) per layer.
    pub fn values_per_layer(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes one token takes across `num_layers` layers (K and V).
    pub fn bytes_per_token(&self, num_layers: usize) -> usize {
        2 * num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f16>()
    }

    /// Offset of `slot`'s value vector for `head`.
    #[inline]
    pub fn offset(&self, slot: usize, head: usize) -> usize {
        let (block, off) = (slot / self.block_size, slot % self.block_size);
        ((block * self.num_kv_heads + head) * self.block_size + off) * self.head_dim
    }

    /// Offset of the start of `block` for `head` (then `block_size` vectors follow).
    #[inline]
    pub fn block_offset(&self, block: usize, head: usize) -> usize {
        (block * self.num_kv_heads + head) * self.block_size * self.head_dim
    }
}

/// The whole store.
#[derive(Debug, Clone)]
pub struct PagedKvStore {
    geometry: KvGeometry,
    layers: Vec<LayerKv>,
}

impl PagedKvStore {
    /// A zeroed store for `num_layers` layers; an error when the OS refuses its memory (or
    /// a layer would not fit the address space).
    pub fn try_new(geometry: KvGeometry, num_layers: usize) -> Result<Self, ModelError> {
        let g = geometry;
        let values = [g.num_kv_heads, g.block_size, g.head_dim]
            .into_iter()
            .fold(g.num_blocks as u128, |a, b| a.saturating_mul(b as u128));
        let n =
            usize::try_from(values).map_err(|_| past_address_space(values.saturating_mul(2)))?;
        let layers = (0..num_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: HalfPages::try_zeroed(n)?,
                    v: HalfPages::try_zeroed(n)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self { geometry, layers })
    }

    /// Its geometry.
    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// One layer.
    pub fn layer(&self, layer: usize) -> &LayerKv {
        &self.layers[layer]
    }

    /// Writes the keys and values of a step's tokens (`[tokens, kv_heads · head_dim]` each) into
    /// their slots.
    pub fn write(&mut self, layer: usize, slots: &[u32], k: &[f32], v: &[f32]) {
        let g = self.geometry;
        let (hd, bs) = (g.head_dim, g.block_size);
        let width = g.num_kv_heads * hd;
        let kv = &mut self.layers[layer];
        // A token's keys rounded in one vector conversion, then spread over the block.
        let mut key = vec![f16::ZERO; hd];
        for (t, &slot) in slots.iter().enumerate() {
            let (block, off) = (slot as usize / bs, slot as usize % bs);
            for head in 0..g.num_kv_heads {
                let src = t * width + head * hd;
                let dst = g.offset(slot as usize, head);
                kv.v[dst..dst + hd].convert_from_f32_slice(&v[src..src + hd]);
                key.convert_from_f32_slice(&k[src..src + hd]);
                let kt = &mut kv.k[g.block_offset(block, head)..][..hd * bs];
                for (d, &x) in key.iter().enumerate() {
                    kt[d * bs + off] = x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's anonymous resident memory, in bytes.
    #[cfg(target_os = "linux")]
    fn resident_anon() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kb: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon");
        kb * 1024
    }

    /// A 512 MiB store costs memory only for the blocks written (see the module docs), and
    /// reads back what was written.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_reserved_store_is_resident_only_where_written() {
        let g = KvGeometry {
            num_blocks: 8192,
            block_size: 16,
            num_kv_heads: 2,
            head_dim: 64,
        };
        let before = resident_anon();
        let mut kv = PagedKvStore::try_new(g, 8).expect("a lazily resident store");
        assert_eq!(kv.layer(7).k.len() * 2 * 2 * 8, 512 << 20);
        let k: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..128).map(|i| -(i as f32)).collect();
        kv.write(3, &[17], &k, &v);
        let grown = resident_anon().saturating_sub(before);
        // Other tests' threads allocate meanwhile: far below the 512 MiB a written store takes.
        assert!(grown < 128 << 20, "{grown} bytes resident");
        let layer = kv.layer(3);
        let want: Vec<f16> = v[64..].iter().map(|&x| f16::from_f32(x)).collect();
        assert_eq!(layer.v[g.offset(17, 1)..][..64], want[..]);
        assert_eq!(
            layer.k[g.block_offset(1, 0) + 5 * 16 + 1],
            f16::from_f32(5.0)
        );
        assert!(kv.layer(0).k.iter().take(4096).all(|x| *x == f16::ZERO));
    }

    /// A store larger than the address space is an error naming its size, not a panic nor a
    /// wrapped size.
    #[test]
    fn a_store_the_os_refuses_is_an_error() {
        let g = KvGeometry {
            num_blocks: 1 << 37,
            block_size: 16,
            num_kv_heads: 1,
            head_dim: 64,
        };
        let err = PagedKvStore::try_new(g, 1).expect_err("256 TiB cannot be mapped");
        assert!(
            matches!(err, ModelError::KvStore { bytes, .. } if bytes == 1 << 48),
            "{err}"
        );
        assert!(err.to_string().contains("--kv-cache-memory"), "{err}");
        // Past `usize` altogether: the size as it is, not wrapped.
        let g = KvGeometry {
            num_blocks: 1 << 60,
            ..g
        };
        let err = PagedKvStore::try_new(g, 1).expect_err("2^71 bytes");
        assert!(
            matches!(err, ModelError::KvStore { bytes, .. } if bytes == 1 << 71),
            "{err}"
        );
    }
}

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
//! The store is allocated zeroed as integers (`alloc_zeroed`: fresh pages from the OS, not
//! written), so the memory `--kv-cache-memory` reserves is resident only once blocks are used:
//! the block manager hands out the lowest free blocks first, and an idle server with the
//! default 1 GiB reserve held 1.3 GB resident where it now holds what its requests touched.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;

/// `n` zeros, allocated zeroed (see the module docs) rather than written one by one, as
/// `vec![f16::ZERO; n]` would: f16 is not an integer to the standard library.
fn zeroed(n: usize) -> Vec<f16> {
    vec![0u16; n].reinterpret_into()
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Keys.
    pub k: Vec<f16>,
    /// Values.
    pub v: Vec<f16>,
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
    /// A zeroed store for `num_layers` layers.
    pub fn new(geometry: KvGeometry, num_layers: usize) -> Self {
        let n = geometry.values_per_layer();
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                k: zeroed(n),
                v: zeroed(n),
            })
            .collect();
        Self { geometry, layers }
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
        let mut kv = PagedKvStore::new(g, 8);
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
}

//! Rotary position embeddings (RoFormer, Su et al. 2021, arXiv:2104.09864), in either pairing
//! of a head's dimensions ([`RopeLayout`]): the "rotate half" layout of the Hugging Face
//! implementations (dimension `i` pairs with `i + head_dim / 2`), or the interleaved layout of
//! the original paper (`2i` with `2i + 1`), which llama.cpp's GGUF files of Llama models expect:
//! their converter permutes the rows of the query and key projections into it.
//!
//! Scaling follows `rope_scaling` in `config.json`: none, `linear` (positions divided by
//! `factor`), or `llama3` (Llama 3.1's frequency-dependent scaling). Anything else is refused at
//! load time rather than silently ignored.

use crate::error::ModelError;

/// How the rotary frequencies are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1: long wavelengths scaled by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        /// Scale for low frequencies.
        factor: f32,
        /// Wavelengths longer than `original / low_freq_factor` are fully scaled.
        low_freq_factor: f32,
        /// Wavelengths shorter than `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was first trained at.
        original_max_position_embeddings: f32,
    },
}

impl RopeScaling {
    /// Reads `rope_scaling` from `config.json` (`null` or absent means none).
    pub fn from_hf(value: Option<&serde_json::Value>) -> Result<Self, ModelError> {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return Ok(Self::None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("");
        let num = |key: &str| -> Result<f32, ModelError> {
            v.get(key)
                .and_then(serde_json::Value::as_f64)
                .map(|x| x as f32)
                .ok_or_else(|| {
                    ModelError::InvalidConfig(format!(
                        "rope_scaling {kind:?} lacks a numeric {key:?}"
                    ))
                })
        };
        match kind {
            "default" => Ok(Self::None),
            "linear" => Ok(Self::Linear {
                factor: num("factor")?,
            }),
            "llama3" => Ok(Self::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            other => Err(ModelError::Unsupported(format!(
                "rope_scaling type {other:?}"
            ))),
        }
    }

    /// The inverse frequencies for a head of `head_dim` with base `theta`.
    pub fn inv_freq(self, head_dim: usize, theta: f32) -> Vec<f32> {
        let half = head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / f64::from(theta).powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        let scaled = base.iter().map(|&f| match self {
            Self::None => f,
            Self::Linear { factor } => f / f64::from(factor),
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, orig) = (
                    f64::from(factor),
                    f64::from(low_freq_factor),
                    f64::from(high_freq_factor),
                    f64::from(original_max_position_embeddings),
                );
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < orig / high {
                    f
                } else if wavelen > orig / low {
                    f / factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            }
        });
        scaled.map(|f| f as f32).collect()
    }
}

/// Which dimensions of a head rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopeLayout {
    /// `i` with `i + head_dim / 2` (Hugging Face; llama.cpp's "NEOX" rope).
    #[default]
    Halves,
    /// `2i` with `2i + 1` (llama.cpp's "NORM" rope, used for GGUF Llama models).
    Interleaved,
}

/// Precomputed cos/sin for every position up to a limit.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    layout: RopeLayout,
    half: usize,
    /// `[positions, half]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RotaryTable {
    /// Tables for positions `0..max_positions`, rotating pairs laid out as `layout`; each
    /// frequency divided by its entry of `freq_factors` when given (a GGUF file's
    /// `rope_freqs`, in which llama.cpp's converter stores Llama 3.1's scaling).
    pub fn new(
        scaling: RopeScaling,
        layout: RopeLayout,
        head_dim: usize,
        theta: f32,
        max_positions: usize,
        freq_factors: Option<&[f32]>,
    ) -> Self {
        let mut inv = scaling.inv_freq(head_dim, theta);
        if let Some(factors) = freq_factors {
            for (f, d) in inv.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in &inv {
                let angle = p as f64 * f64::from(f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            layout,
            half,
            cos,
            sin,
        }
    }

    /// Positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of `x` (`num_heads × head_dim` values of one token) for `position`.
    pub fn apply(&self, x: &mut [f32], position: usize) {
        let h = self.half;
        let cos = &self.cos[position * h..(position + 1) * h];
        let sin = &self.sin[position * h..(position + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            match self.layout {
                RopeLayout::Halves => {
                    let (a, b) = head.split_at_mut(h);
                    for i in 0..h {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x1 * cos[i] + x0 * sin[i];
                    }
                }
                RopeLayout::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * cos[i] - x1 * sin[i];
                        pair[1] = x1 * cos[i] + x0 * sin[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_rope_rotates_pairs_by_position_times_frequency() {
        let t = RotaryTable::new(RopeScaling::None, RopeLayout::Halves, 4, 100.0, 8, None);
        // Frequencies 1 and 1/10; at position 3 the first pair turns by 3 rad.
        let mut x = vec![1.0, 1.0, 0.0, 0.0];
        t.apply(&mut x, 3);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[2] - 3f32.sin()).abs() < 1e-6);
        assert!((x[1] - 0.3f32.cos()).abs() < 1e-6 && (x[3] - 0.3f32.sin()).abs() < 1e-6);
        let mut y = vec![0.5, -2.0, 0.25, 1.0];
        t.apply(&mut y, 0);
        assert_eq!(y, vec![0.5, -2.0, 0.25, 1.0], "position 0 is the identity");
    }

    #[test]
    fn interleaved_layout_is_halves_on_permuted_dimensions() {
        let halves = RotaryTable::new(RopeScaling::None, RopeLayout::Halves, 8, 100.0, 8, None);
        let inter = RotaryTable::new(
            RopeScaling::None,
            RopeLayout::Interleaved,
            8,
            100.0,
            8,
            None,
        );
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        // llama.cpp's converter: within each head, dimension `2i + j` takes `j · half + i`.
        let permute = |v: &[f32]| -> Vec<f32> {
            v.chunks_exact(8)
                .flat_map(|h| (0..8).map(move |d| h[(d % 2) * 4 + d / 2]))
                .collect()
        };
        let (mut a, mut b) = (x.clone(), permute(&x));
        halves.apply(&mut a, 5);
        inter.apply(&mut b, 5);
        assert_eq!(permute(&a), b);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let json = serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        });
        let s = RopeScaling::from_hf(Some(&json)).expect("valid");
        let plain = RopeScaling::None.inv_freq(128, 500_000.0);
        let scaled = s.inv_freq(128, 500_000.0);
        assert_eq!(scaled[0], plain[0], "the highest frequency is kept");
        assert!(
            (scaled[63] - plain[63] / 8.0).abs() < 1e-12,
            "the lowest is divided by 8"
        );
    }

    #[test]
    fn unknown_scaling_is_refused() {
        let json = serde_json::json!({"type": "yarn", "factor": 4.0});
        assert!(matches!(
            RopeScaling::from_hf(Some(&json)),
            Err(ModelError::Unsupported(_))
        ));
        assert_eq!(
            RopeScaling::from_hf(Some(&serde_json::Value::Null)).expect("null"),
            RopeScaling::None
        );
    }
}

//! [`QuantType`]: the ggml tensor types the quantized products read, with their block sizes
//! and names. A file of its own so that the products (`quant.rs`) and their integer kernels
//! (`quant_vnni.rs`) can both name it without importing each other.

use candle_core::quantized::GgmlDType;

/// A ggml tensor type wayfinder computes with: the block-quantized ones, and the float ones as
/// blocks of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 32-bit floats.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 values: f16 scale, 4-bit.
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit.
    Q4_1,
    /// 32 values: f16 scale, 5-bit.
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit.
    Q5_1,
    /// 32 values: f16 scale, 8-bit.
    Q8_0,
    /// 256 values in 16 sub-blocks, 2-bit.
    Q2K,
    /// 256 values in 16 sub-blocks, 3-bit.
    Q3K,
    /// 256 values in 8 sub-blocks, 4-bit.
    Q4K,
    /// 256 values in 8 sub-blocks, 5-bit.
    Q5K,
    /// 256 values in 16 sub-blocks, 6-bit.
    Q6K,
}

impl QuantType {
    /// The type for a ggml dtype, if it is one we compute with (not Q8_1 or Q8_K, which
    /// ggml uses only for activations).
    pub fn from_ggml(d: GgmlDType) -> Option<Self> {
        Some(match d {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::Bf16,
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q2K => Self::Q2K,
            GgmlDType::Q3K => Self::Q3K,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// The ggml dtype.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Self::F32 => GgmlDType::F32,
            Self::F16 => GgmlDType::F16,
            Self::Bf16 => GgmlDType::BF16,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4_1 => GgmlDType::Q4_1,
            Self::Q5_0 => GgmlDType::Q5_0,
            Self::Q5_1 => GgmlDType::Q5_1,
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q2K => GgmlDType::Q2K,
            Self::Q3K => GgmlDType::Q3K,
            Self::Q4K => GgmlDType::Q4K,
            Self::Q5K => GgmlDType::Q5K,
            Self::Q6K => GgmlDType::Q6K,
        }
    }

    /// The name llama.cpp prints (`Q4_1`, `Q4_K`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        self.ggml().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size()
    }

    /// Whether this is a float type rather than a block-quantized one.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::Bf16)
    }

    /// The alignment its blocks need in memory.
    pub(crate) fn align(self) -> usize {
        if self == Self::F32 { 4 } else { 2 }
    }
}

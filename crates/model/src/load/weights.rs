//! Reading weights from memory-mapped safetensors files.
//!
//! One [`WeightLoader`] spans all shards of a checkpoint and routes each tensor name to the file
//! that holds it. Every read checks the shape the config implies and converts to the dtype the
//! model runs in; errors name the tensor and the file.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use wayfinder_text::FileError;

use super::source::WeightSource;
use crate::error::ModelError;
use crate::kernels::{Linear, WeightData};

/// The dtype weights are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Dtype {
    /// Parses `f32`, `bf16`, `f16` (and the `torch_dtype` spellings `float32`, `bfloat16`,
    /// `float16`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" | "float" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "f16" | "float16" | "half" => Some(Self::F16),
            _ => None,
        }
    }

    /// The short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// The `torch_dtype` spelling in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    pub(crate) fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::Bf16 => safetensors::Dtype::BF16,
            Self::F16 => safetensors::Dtype::F16,
        }
    }

    fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        [Self::F32, Self::Bf16, Self::F16]
            .into_iter()
            .find(|t| t.safetensors() == d)
    }

    /// Appends `v` in this dtype, little-endian.
    pub(crate) fn encode_le(self, v: f32, out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend(v.to_le_bytes()),
            Self::Bf16 => out.extend(bf16::from_f32(v).to_le_bytes()),
            Self::F16 => out.extend(f16::from_f32(v).to_le_bytes()),
        }
    }

    pub(crate) fn candle(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// How far loading the weights has come, as told to [`WeightLoader::open`]'s callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Tensors read so far.
    pub loaded: usize,
    /// Tensors in the checkpoint.
    pub total: usize,
}

/// What is told of the loading's progress; the library itself draws nothing.
pub type ProgressFn<'a> = &'a dyn Fn(LoadProgress);

/// Every tensor of a checkpoint, across its shards.
pub struct WeightLoader<'a> {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// The dtype layers are converted to.
    dtype: Dtype,
    routing: HashMap<String, usize>,
    loaded: Cell<usize>,
    progress: ProgressFn<'a>,
}

impl std::fmt::Debug for WeightLoader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightLoader")
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.routing.len())
            .finish()
    }
}

impl<'a> WeightLoader<'a> {
    /// Maps `paths` and indexes their tensors; `progress` is told of each tensor read. Layers
    /// are read in f32 until [`Self::set_dtype`] says otherwise.
    pub fn open(paths: &[PathBuf], progress: ProgressFn<'a>) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            if !path.is_file() {
                return Err(FileError::Missing(path.clone()).into());
            }
            // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
            // being truncated while the model loads (the mapping is dropped after loading).
            let st =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push((path.clone(), st));
        }
        progress(LoadProgress {
            loaded: 0,
            total: routing.len(),
        });
        Ok(Self {
            files,
            dtype: Dtype::F32,
            routing,
            loaded: Cell::new(0),
            progress,
        })
    }

    /// Converts layers read from now on to `dtype`.
    pub fn set_dtype(&mut self, dtype: Dtype) {
        self.dtype = dtype;
    }

    fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [(p, _)] => p.clone(),
            _ => self
                .files
                .first()
                .and_then(|(p, _)| p.parent())
                .map_or_else(PathBuf::new, Path::to_path_buf),
        }
    }

    /// Loads `name`, checking its shape.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let &i = self
            .routing
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                file: self.describe(),
            })?;
        let (path, st) = &self.files[i];
        let t = st
            .load(name, &Device::Cpu)
            .map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: format!("tensor {name:?}: {e}"),
            })?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_owned(),
                file: path.clone(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        self.loaded.set(self.loaded.get() + 1);
        (self.progress)(LoadProgress {
            loaded: self.loaded.get(),
            total: self.routing.len(),
        });
        Ok(t)
    }

    /// The dtype most of the checkpoint's floating-point tensors have.
    pub fn stored_dtype(&self) -> Option<Dtype> {
        let mut counts: HashMap<Dtype, usize> = HashMap::new();
        for (_, st) in &self.files {
            for (_, view) in st.tensors() {
                if let Some(d) = Dtype::from_safetensors(view.dtype()) {
                    *counts.entry(d).or_default() += 1;
                }
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
    }
}

impl WeightSource for WeightLoader<'_> {
    fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self
            .tensor(name, &[len])?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn stacked_linear(
        &self,
        parts: &[(&str, usize)],
        cols: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let dtype = self.dtype;
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let mut tensors = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(rows);
        for (prefix, r) in parts {
            tensors.push(self.tensor(&format!("{prefix}.weight"), &[*r, cols])?);
            if bias {
                biases.extend(self.vector(&format!("{prefix}.bias"), *r)?);
            }
        }
        let stacked = Tensor::cat(&tensors, 0)?
            .to_dtype(dtype.candle())?
            .flatten_all()?;
        let data = match dtype {
            Dtype::F32 => WeightData::F32(stacked.to_vec1::<f32>()?),
            Dtype::Bf16 => WeightData::Bf16(stacked.to_vec1::<bf16>()?),
            Dtype::F16 => WeightData::F16(stacked.to_vec1::<f16>()?),
        };
        Ok(Linear::new(data, rows, cols, bias.then_some(biases)))
    }
}

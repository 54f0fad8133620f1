//! Reading GGUF files (versions 2 and 3): metadata, tensor directory, and dequantization of
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors to `f32`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ModelError;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// `f32` or `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    /// As a float, when numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// GGML tensor types trex can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: f16 scale, 32 × i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 16 bytes of 4-bit values (offset 8).
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 16 bytes of 4-bit values.
    Q4_1,
}

impl TensorType {
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// Bytes for `n` elements (`n` a multiple of the block size for block types).
    fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            Self::F32 => n.checked_mul(4),
            Self::F16 | Self::Bf16 => n.checked_mul(2),
            Self::Q8_0 => n.is_multiple_of(32).then(|| (n / 32).checked_mul(34)).flatten(),
            Self::Q4_0 => n.is_multiple_of(32).then(|| (n / 32).checked_mul(18)).flatten(),
            Self::Q4_1 => n.is_multiple_of(32).then(|| (n / 32).checked_mul(20)).flatten(),
        }
    }
}

fn ggml_type_name(code: u32) -> String {
    let name = match code {
        6 => "Q5_0",
        7 => "Q5_1",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16..=23 => "IQ (importance) quantization",
        _ => "unknown",
    };
    format!("{name} (ggml type {code})")
}

/// One tensor's directory entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions, fastest-varying first (GGUF order): a matrix `[cols, rows]`.
    pub dims: Vec<usize>,
    /// Storage type.
    pub ty: TensorType,
    /// Offset from the start of the data section.
    offset: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GGUF file read into memory.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn err(&self, what: &str) -> ModelError {
        ModelError::Corrupt {
            path: self.path.to_path_buf(),
            message: format!(
                "{what} at byte {} (the file is {} bytes; truncated or not GGUF?)",
                self.pos,
                self.bytes.len()
            ),
        }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        if self.pos + n > self.bytes.len() {
            return Err(self.err(&format!("unexpected end of file reading {n} bytes")));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self, what: &str) -> Result<usize, ModelError> {
        let n = self.u64()?;
        if n > (self.bytes.len() - self.pos) as u64 * 8 + 64 {
            return Err(self.err(&format!("implausible {what} length {n}")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.len("string")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U64(self.take(1)?[0] as u64),
            1 => Value::I64(self.take(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let n = self.len("array")?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => return Err(self.err(&format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Read and index `path`.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), message: e.to_string() })?;
        Self::parse(bytes, path)
    }

    fn parse(bytes: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        let mut c = Cursor { bytes: &bytes, pos: 0, path };
        if c.take(4)? != b"GGUF" {
            return Err(ModelError::Corrupt { path: path.into(), message: "not a GGUF file (bad magic)".into() });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Unsupported {
                path: path.into(),
                message: format!("GGUF version {version} (trex reads 2 and 3)"),
            });
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(c.err(&format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()? as usize);
            }
            let code = c.u32()?;
            let offset = c.u64()? as usize;
            let ty = TensorType::from_code(code).ok_or_else(|| ModelError::Unsupported {
                path: path.into(),
                message: format!(
                    "tensor `{name}` uses quantization {}; trex reads F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (re-quantize the model to one of these)",
                    ggml_type_name(code)
                ),
            })?;
            // Found by fuzzing: dimensions whose product overflows.
            if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
                return Err(
                    c.err(&format!("tensor `{name}` has dimensions {dims:?}, more elements than can be counted"))
                );
            }
            tensors.insert(name, TensorInfo { dims, ty, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32) as usize;
        let data_start =
            c.pos.div_ceil(alignment.max(1)).checked_mul(alignment.max(1)).ok_or_else(|| ModelError::Corrupt {
                path: path.into(),
                message: format!("general.alignment = {alignment} is out of range"),
            })?;
        for (name, t) in &tensors {
            let size = t.ty.bytes_for(t.len()).ok_or_else(|| ModelError::Corrupt {
                path: path.into(),
                message: format!("tensor `{name}` has {} elements, not a whole number of blocks", t.len()),
            })?;
            let end = data_start.checked_add(t.offset).and_then(|e| e.checked_add(size));
            if end.is_none_or(|e| e > bytes.len()) {
                return Err(ModelError::Corrupt {
                    path: path.into(),
                    message: format!(
                        "tensor `{name}` ends at byte {} but the file has {} bytes (truncated download?)",
                        end.map_or_else(|| "beyond 2^64".to_string(), |e| e.to_string()),
                        bytes.len()
                    ),
                });
            }
        }
        Ok(Self { path: path.to_path_buf(), metadata, tensors, bytes, data_start })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or an error naming the key.
    pub fn meta(&self, key: &str) -> Result<&Value, ModelError> {
        self.metadata
            .get(key)
            .ok_or_else(|| ModelError::Missing { path: self.path.clone(), what: format!("metadata key `{key}`") })
    }

    /// A tensor dequantized to `f32`, in row-major order of its reversed GGUF dims
    /// (a GGUF `[cols, rows]` matrix comes back as `rows × cols`).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Missing { path: self.path.clone(), what: format!("tensor `{name}`") })?;
        let n = info.len();
        let start = self.data_start + info.offset;
        let raw = &self.bytes[start..start + info.ty.bytes_for(n).expect("checked at open")];
        Ok(dequantize(info.ty, raw, n))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decode `n` elements of type `ty` from `raw`.
pub fn dequantize(ty: TensorType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        TensorType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4")))),
        TensorType::F16 => out.extend(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        TensorType::Bf16 => out.extend(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        TensorType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        TensorType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        TensorType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// Write a minimal GGUF file (F32/F16 tensors and scalar/string metadata): used by tests and
/// by tools that export small models.
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, Value)],
    tensors: &[(&str, &[usize], &[f32], TensorType)],
) -> std::io::Result<()> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    fn val(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U64(x) => {
                out.extend(10u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::I64(x) => {
                out.extend(11u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Value::F64(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend((*x as f32).to_le_bytes());
            }
            Value::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(*x as u8);
            }
            Value::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(out, x);
            }
            Value::Array(items) => {
                out.extend(9u32.to_le_bytes());
                let elem = match items.first() {
                    Some(Value::Str(_)) => 8u32,
                    Some(Value::F64(_)) => 6,
                    Some(Value::I64(_)) => 11,
                    _ => 10,
                };
                out.extend(elem.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for it in items {
                    let mut tmp = Vec::new();
                    val(&mut tmp, it);
                    out.extend(&tmp[4..]);
                }
            }
        }
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        s(&mut out, k);
        val(&mut out, v);
    }
    let mut data = Vec::new();
    for (name, dims, values, ty) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend((*d as u64).to_le_bytes());
        }
        let code: u32 = match ty {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            _ => return Err(std::io::Error::other("write_gguf writes F32 and F16 tensors only")),
        };
        out.extend(code.to_le_bytes());
        while data.len() % 32 != 0 {
            data.push(0);
        }
        out.extend((data.len() as u64).to_le_bytes());
        for v in *values {
            match ty {
                TensorType::F32 => data.extend(v.to_le_bytes()),
                _ => data.extend(half::f16::from_f32(*v).to_le_bytes()),
            }
        }
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    out.extend(data);
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_layout_low_nibbles_first() {
        // d = 0.5, m = -1.0, nibble values 0..15 then 15..0.
        let mut b = Vec::new();
        b.extend(half::f16::from_f32(0.5).to_le_bytes());
        b.extend(half::f16::from_f32(-1.0).to_le_bytes());
        for i in 0..16u8 {
            b.push(i | ((15 - i) << 4));
        }
        let v = dequantize(TensorType::Q4_1, &b, 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[15], 15.0 * 0.5 - 1.0);
        assert_eq!(v[16], 15.0 * 0.5 - 1.0, "element 16 is the high nibble of byte 0");
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn q4_0_and_q8_0() {
        let mut b = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|i| i | (i << 4)));
        let v = dequantize(TensorType::Q4_0, &b, 32);
        assert_eq!((v[0], v[8], v[16 + 15]), (-16.0, 0.0, 14.0));
        let mut b = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(TensorType::Q8_0, &b, 32);
        assert_eq!((v[0], v[31]), (-4.0, 3.75));
    }

    #[test]
    fn round_trip_and_truncation_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        let w: Vec<f32> = (0..64).map(|i| i as f32 / 8.0).collect();
        write_gguf(
            &p,
            &[("a.b", Value::U64(7)), ("name", Value::Str("x".into()))],
            &[("w", &[16, 4], &w, TensorType::F32), ("h", &[64], &w, TensorType::F16)],
        )
        .unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.meta("a.b").unwrap().as_u64(), Some(7));
        assert_eq!(f.tensor_f32("w").unwrap(), w);
        assert_eq!(f.tensor_f32("h").unwrap(), w);
        assert!(f.tensor_f32("nope").unwrap_err().to_string().contains("tensor `nope`"));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let err = GgufFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("truncated"), "{err}");
        std::fs::write(&p, b"GGML....").unwrap();
        assert!(GgufFile::open(&p).unwrap_err().to_string().contains("bad magic"));
    }
}

//! The CUDA backend (feature `cuda`): the same ops as [`crate::cpu`], as `.cu` kernels compiled
//! at run time with NVRTC and GEMMs through cuBLAS, driven by `cudarc`.
//!
//! Nothing CUDA is linked at build time: the driver, NVRTC and cuBLAS are loaded when first used,
//! so the crate builds, and its CPU backend runs, on machines without CUDA. A missing library or
//! device is a [`CudaError`] that says what to install, never a panic.
//!
//! Data types: activations and frozen weights are bf16 (stored as `u16`), LoRA master weights,
//! gradients, optimizer state, norms' statistics and the loss are f32; GEMMs take bf16 inputs
//! and accumulate in f32. Compiled PTX is cached on disk, keyed by the source, the target
//! architecture and the NVRTC version.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use cudarc::driver::CudaSlice;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Helpers every kernel file includes.
const COMMON: &str = include_str!("kernels/common.cuh");

/// Every kernel source, by module name.
pub const SOURCES: &[(&str, &str)] = &[
    ("norm", include_str!("kernels/norm.cu")),
    ("rope", include_str!("kernels/rope.cu")),
    ("elementwise", include_str!("kernels/elementwise.cu")),
    ("adamw", include_str!("kernels/adamw.cu")),
    ("cross_entropy", include_str!("kernels/cross_entropy.cu")),
    ("attention", include_str!("kernels/attention.cu")),
];

/// The kernels each module defines (loaded when the module is).
const FUNCTIONS: &[(&str, &[&str])] = &[
    ("norm", &["rmsnorm_forward", "rmsnorm_backward"]),
    ("rope", &["rope"]),
    (
        "elementwise",
        &[
            "swiglu_forward",
            "swiglu_backward",
            "embedding_forward",
            "embedding_backward",
            "cast_f32_to_bf16",
            "cast_bf16_to_f32",
            "add_bf16",
            "add_bias_bf16",
            "scatter_rows",
            "dropout_bf16",
            "dropout_add_bf16",
        ],
    ),
    ("adamw", &["adamw", "sum_squares"]),
    ("cross_entropy", &["ce_chunk_lse", "ce_finish", "ce_chunk_grad"]),
    (
        "attention",
        &["attention_forward", "attention_backward_delta", "attention_backward_dq", "attention_backward_dkv"],
    ),
];

/// Why the CUDA backend cannot do what was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum CudaError {
    /// A library could not be loaded; the message says which and how to get it.
    Missing(String),
    /// NVRTC refused a kernel; carries the compiler log.
    Compile {
        /// The kernel module.
        module: String,
        /// The target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A driver or cuBLAS call failed.
    Driver(String),
    /// Shapes that do not fit the op.
    Shape(String),
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaError::Missing(m) | CudaError::Driver(m) | CudaError::Shape(m) => f.write_str(m),
            CudaError::Compile { module, arch, log } => {
                write!(f, "NVRTC could not compile kernel module `{module}` for {arch}:\n{log}")
            }
        }
    }
}

impl std::error::Error for CudaError {}

fn driver_err(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("CUDA call failed: {e:?}"))
}

/// The CUDA version the bindings were built for (`CUDARC_CUDA_VERSION`, see .cargo/config.toml).
pub fn bindings_version() -> String {
    format!("{}.{}", env!("CUDA_MAJOR_VERSION_OF_BINDINGS"), env!("CUDA_MINOR_VERSION_OF_BINDINGS"))
}

/// Load a library through cudarc, turning the panic it raises when the library lacks a symbol of
/// the bindings' CUDA version (a CUDA 13 library under CUDA 12 bindings) into an error.
fn probe(what: &str, present: impl FnOnce() -> bool + std::panic::UnwindSafe) -> Result<bool, CudaError> {
    std::panic::catch_unwind(present).map_err(|_| {
        CudaError::Missing(format!(
            "{what} was found but does not match the CUDA {} API trex was built for: install the CUDA {} libraries, or rebuild trex with CUDARC_CUDA_VERSION set to the installed version (e.g. `CUDARC_CUDA_VERSION=13000 cargo build --release`)",
            bindings_version(),
            env!("CUDA_MAJOR_VERSION_OF_BINDINGS"),
        ))
    })
}

/// Whether NVRTC (`libnvrtc.so`) can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library.
    probe("NVRTC", || unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether the CUDA driver (`libcuda.so`) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the shared library.
    probe("the CUDA driver", || unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// The full source of a kernel module: the shared helpers, then the module.
pub fn source(module: &str) -> Option<String> {
    SOURCES.iter().find(|(m, _)| *m == module).map(|(_, src)| format!("{COMMON}\n{src}"))
}

/// Where compiled PTX is cached: `$TREX_CACHE_DIR/ptx`, else `$XDG_CACHE_HOME/trex/ptx`, else
/// `~/.cache/trex/ptx`.
pub fn ptx_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("TREX_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trex")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("trex")))?;
    Some(base.join("ptx"))
}

fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// NVRTC's version, as `major.minor`.
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: NVRTC is loaded (the caller checked); the call writes two integers.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    format!("{major}.{minor}")
}

/// The architectures NVRTC is asked for, by compute capability.
fn arch_name(major: i32, minor: i32) -> Result<&'static str, CudaError> {
    Ok(match (major, minor) {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        (m, _) if m >= 8 => "compute_80",
        (m, n) => {
            return Err(CudaError::Missing(format!(
                "the GPU has compute capability {m}.{n}; trex's CUDA kernels need 8.0 (Ampere) or newer (bf16)"
            )));
        }
    })
}

/// Compile a kernel module to PTX for `arch` (e.g. `compute_80`), through the on-disk cache.
pub fn compile(module: &str, arch: &'static str) -> Result<String, CudaError> {
    let src = source(module).ok_or_else(|| CudaError::Shape(format!("no kernel module `{module}`")))?;
    // SAFETY: only tries to open the shared library.
    if !probe("NVRTC", || unsafe { cudarc::nvrtc::sys::is_culib_present() })? {
        return Err(CudaError::Missing(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` and add its `nvidia/cuda_nvrtc/lib` folder to LD_LIBRARY_PATH".into(),
        ));
    }
    let version = nvrtc_version();
    let key = fnv64(&[src.as_bytes(), arch.as_bytes(), version.as_bytes()]);
    let cached = ptx_cache_dir().map(|d| d.join(format!("{module}-{arch}-{key:016x}.ptx")));
    if let Some(path) = &cached
        && let Ok(ptx) = std::fs::read_to_string(path)
    {
        return Ok(ptx);
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        name: Some(format!("{module}.cu")),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| CudaError::Compile {
        module: module.to_string(),
        arch: arch.to_string(),
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })?;
    let text = ptx.to_src();
    if let Some(path) = &cached {
        // A cache that cannot be written only costs a recompile next time.
        let _ = std::fs::create_dir_all(path.parent().expect("cache file has a folder"));
        let _ = std::fs::write(path, &text);
    }
    Ok(text)
}

/// One GPU, its stream, cuBLAS handle and loaded kernels.
pub struct Device {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    /// The architecture the kernels were compiled for.
    pub arch: &'static str,
    /// The device's name.
    pub name: String,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("name", &self.name).field("arch", &self.arch).finish()
    }
}

/// Threads per block for element-wise kernels.
const THREADS: u32 = 256;
/// Warps per attention block (`ROWS` in attention.cu).
const ATTENTION_ROWS: u32 = 8;

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// A matrix operand of [`Device::gemm`]: a row-major `[rows, cols]` matrix stored in a bf16
/// buffer from element `offset` on (so one arena can hold many), used as it is or transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// The buffer.
    pub data: &'a CudaSlice<u16>,
    /// First element of the matrix in the buffer.
    pub offset: usize,
    /// Rows as stored.
    pub rows: usize,
    /// Columns as stored.
    pub cols: usize,
    /// Use the transpose.
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// The whole of `data` as a `[rows, cols]` matrix, not transposed.
    pub fn new(data: &'a CudaSlice<u16>, rows: usize, cols: usize) -> Self {
        Self { data, offset: 0, rows, cols, t: false }
    }

    /// The same matrix at element `offset` of its buffer.
    pub fn at(self, offset: usize) -> Self {
        Self { offset, ..self }
    }

    /// Its transpose.
    pub fn t(self) -> Self {
        Self { t: !self.t, ..self }
    }
}

impl Device {
    /// Open GPU `ordinal`, compile (or load from the cache) every kernel for its architecture,
    /// and create a cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: only tries to open the shared library.
        if !probe("the CUDA driver", || unsafe { cudarc::driver::sys::is_culib_present() })? {
            return Err(CudaError::Missing(
                "the CUDA driver (libcuda.so) was not found: this machine has no NVIDIA driver; train on the CPU (the default) or install the driver".into(),
            ));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| CudaError::Missing(format!("cannot open GPU {ordinal}: {e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err)?;
        let arch = arch_name(major, minor)?;
        let name = ctx.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let stream = ctx.default_stream();
        // SAFETY: only tries to open the shared library.
        probe("cuBLAS", || unsafe { cudarc::cublas::sys::is_culib_present() })?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| {
            CudaError::Missing(format!(
                "cuBLAS could not be loaded ({e:?}): install the CUDA toolkit or `pip install nvidia-cublas-cu12` and add its lib folder to LD_LIBRARY_PATH"
            ))
        })?;
        let mut functions = HashMap::new();
        for (module, names) in FUNCTIONS {
            let ptx = compile(module, arch)?;
            let loaded = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(driver_err)?;
            for name in *names {
                functions.insert(*name, loaded.load_function(name).map_err(driver_err)?);
            }
        }
        Ok(Self { stream, blas, functions, arch, name })
    }

    /// The stream every op is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for every queued op.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_err)
    }

    /// Copy host values to a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.memcpy_stod(host).map_err(driver_err)
    }

    /// Copy a device buffer back to the host.
    pub fn download<T: cudarc::driver::DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.memcpy_dtov(dev).map_err(driver_err)
    }

    /// A zeroed device buffer.
    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.stream.alloc_zeros(n).map_err(driver_err)
    }

    fn f(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).expect("every kernel named in FUNCTIONS is loaded by open()")
    }

    /// Launch kernel `name` on the stream with the arguments `args` pushes: the one place a
    /// kernel is launched.
    ///
    /// # Safety
    ///
    /// The pushed arguments must match the kernel's signature in number, order and type, and
    /// every buffer must hold at least the elements the kernel indexes under `cfg`. Each call
    /// site checks the sizes first and says in its `SAFETY:` comment why the rest holds.
    unsafe fn launch<'a>(
        &'a self,
        name: &str,
        cfg: LaunchConfig,
        args: impl FnOnce(&mut cudarc::driver::LaunchArgs<'a>),
    ) -> Result<(), CudaError> {
        let mut b = self.stream.launch_builder(self.f(name));
        args(&mut b);
        // SAFETY: the caller's contract above: the arguments match the kernel and the buffers
        // are large enough, so the kernel reads and writes only memory it was given.
        unsafe { b.launch(cfg) }.map(drop).map_err(driver_err)
    }

    /// RMSNorm forward over rows of width `d`: `y` (bf16) and `inv_rms` (f32, one per row).
    pub fn rms_norm_forward(
        &self,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        eps: f32,
        d: usize,
        y: &mut CudaSlice<u16>,
        inv_rms: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let rows = x.len() / d;
        check(x.len() == rows * d && w.len() == d && y.len() == x.len() && inv_rms.len() == rows, "rms_norm_forward")?;
        let d32 = d as i32;
        // SAFETY: the argument list matches the kernel's signature and every buffer holds the
        // rows·d (or rows) values the kernel indexes, checked above.
        unsafe {
            self.launch("rmsnorm_forward", rows_cfg(rows), |b| {
                b.arg(x).arg(w).arg(&eps).arg(&d32).arg(y).arg(inv_rms);
            })
        }
    }

    /// RMSNorm backward: `dx` from `dy`.
    pub fn rms_norm_backward(
        &self,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        inv_rms: &CudaSlice<f32>,
        dy: &CudaSlice<u16>,
        d: usize,
        dx: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        let rows = x.len() / d;
        check(
            x.len() == rows * d && w.len() == d && dy.len() == x.len() && dx.len() == x.len() && inv_rms.len() == rows,
            "rms_norm_backward",
        )?;
        let d32 = d as i32;
        // SAFETY: as in `rms_norm_forward`.
        unsafe {
            self.launch("rmsnorm_backward", rows_cfg(rows), |b| {
                b.arg(x).arg(w).arg(inv_rms).arg(dy).arg(&d32).arg(dx);
            })
        }
    }

    /// Rotary embedding in place on a packed `x` ([tokens, heads, head_dim]) where token t sits
    /// at position `positions[t]`; `sign` −1 is the backward. `cos`/`sin` are
    /// [max_pos, head_dim/2] and must cover `max_position`, the largest of `positions`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_packed(
        &self,
        x: &mut CudaSlice<u16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
        positions: &CudaSlice<i32>,
        max_position: usize,
        interleaved: bool,
        sign: f32,
    ) -> Result<(), CudaError> {
        let tokens = x.len() / (heads * head_dim);
        let half = head_dim / 2;
        check(
            x.len() == tokens * heads * head_dim
                && positions.len() == tokens
                && cos.len() == sin.len()
                && cos.len() > max_position * half,
            "rope_packed",
        )?;
        let (t, h, hd, il) = (tokens as i32, heads as i32, head_dim as i32, i32::from(interleaved));
        let zero = 0i32;
        // SAFETY: the caller's positions are below max_position, which the table covers.
        unsafe {
            self.launch("rope", grid_for(tokens * heads * half), |b| {
                b.arg(x).arg(cos).arg(sin).arg(&t).arg(&h).arg(&hd).arg(&zero).arg(positions).arg(&il).arg(&sign);
            })
        }
    }

    /// Rotary embedding in place on `x` ([tokens, heads, head_dim]), token t at position
    /// `start_pos + t`; `sign` −1 is the backward. `cos`/`sin` are [max_pos, head_dim/2].
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<u16>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
        start_pos: usize,
        interleaved: bool,
        sign: f32,
    ) -> Result<(), CudaError> {
        let tokens = x.len() / (heads * head_dim);
        let half = head_dim / 2;
        check(
            x.len() == tokens * heads * head_dim && cos.len() == sin.len() && cos.len() >= (start_pos + tokens) * half,
            "rope",
        )?;
        let (t, h, hd, sp, il) =
            (tokens as i32, heads as i32, head_dim as i32, start_pos as i32, i32::from(interleaved));
        let null: u64 = 0;
        // SAFETY: the table covers every position used, checked above; x has tokens·heads·head_dim values.
        unsafe {
            self.launch("rope", grid_for(tokens * heads * half), |b| {
                b.arg(x).arg(cos).arg(sin).arg(&t).arg(&h).arg(&hd).arg(&sp).arg(&null).arg(&il).arg(&sign);
            })
        }
    }

    /// `h = silu(g)·u`.
    pub fn swiglu_forward(
        &self,
        g: &CudaSlice<u16>,
        u: &CudaSlice<u16>,
        h: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        check(g.len() == u.len() && u.len() == h.len(), "swiglu_forward")?;
        let n = g.len();
        // SAFETY: three buffers of n values.
        unsafe {
            self.launch("swiglu_forward", grid_for(n), |b| {
                b.arg(g).arg(u).arg(h).arg(&n);
            })
        }
    }

    /// SwiGLU backward.
    pub fn swiglu_backward(
        &self,
        g: &CudaSlice<u16>,
        u: &CudaSlice<u16>,
        dh: &CudaSlice<u16>,
        dg: &mut CudaSlice<u16>,
        du: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        let n = g.len();
        check(u.len() == n && dh.len() == n && dg.len() == n && du.len() == n, "swiglu_backward")?;
        // SAFETY: five buffers of n values.
        unsafe {
            self.launch("swiglu_backward", grid_for(n), |b| {
                b.arg(g).arg(u).arg(dh).arg(dg).arg(du).arg(&n);
            })
        }
    }

    /// `out[t] = table[ids[t]]` for a [vocab, d] table.
    pub fn embedding_forward(
        &self,
        table: &CudaSlice<u16>,
        ids: &CudaSlice<i32>,
        d: usize,
        out: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        check(out.len() == ids.len() * d && table.len().is_multiple_of(d), "embedding_forward")?;
        let d32 = d as i32;
        // SAFETY: ids index rows of the table; the caller's tokenizer keeps them below vocab.
        unsafe {
            self.launch("embedding_forward", rows_cfg(ids.len()), |b| {
                b.arg(table).arg(ids).arg(&d32).arg(out);
            })
        }
    }

    /// Fused AdamW over flat f32 arenas (parameters, gradients, moments); also writes the bf16
    /// copy when given. `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        p_bf16: Option<&mut CudaSlice<u16>>,
        hp: AdamW,
        step: u32,
        grad_scale: f32,
    ) -> Result<(), CudaError> {
        let n = p.len();
        check(g.len() == n && m.len() == n && v.len() == n && p_bf16.as_ref().is_none_or(|b| b.len() == n), "adamw")?;
        let bc1 = 1.0 - hp.beta1.powi(step as i32);
        let bc2 = 1.0 - hp.beta2.powi(step as i32);
        let null: u64 = 0;
        // SAFETY: four (or five) arenas of n values; a null bf16 pointer is checked in the kernel.
        unsafe {
            self.launch("adamw", grid_for(n), |b| {
                b.arg(p).arg(g).arg(m).arg(v);
                match p_bf16 {
                    Some(copy) => b.arg(copy),
                    None => b.arg(&null),
                };
                b.arg(&n)
                    .arg(&hp.lr)
                    .arg(&hp.beta1)
                    .arg(&hp.beta2)
                    .arg(&hp.eps)
                    .arg(&hp.weight_decay)
                    .arg(&bc1)
                    .arg(&bc2);
                b.arg(&grad_scale);
            })
        }
    }

    /// `C = alpha·op(A)·op(B) + beta·C` with bf16 A and B, f32 accumulation, and C in f32
    /// (`out_bf16` false) or bf16. Row-major shapes: op(A) is [m, k], op(B) is [k, n], C is [m, n].
    pub fn gemm<C: cudarc::driver::DeviceRepr>(
        &self,
        a: Mat<'_>,
        b: Mat<'_>,
        c: &mut CudaSlice<C>,
        alpha: f32,
        beta: f32,
    ) -> Result<(), CudaError> {
        self.gemm_at(a, b, c, 0, alpha, beta)
    }

    /// [`Device::gemm`] writing C from element `c_offset` of its buffer (a gradient arena).
    pub fn gemm_at<C: cudarc::driver::DeviceRepr>(
        &self,
        a: Mat<'_>,
        b: Mat<'_>,
        c: &mut CudaSlice<C>,
        c_offset: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<(), CudaError> {
        use cudarc::cublas::sys::cudaDataType;
        let (m, k) = if a.t { (a.cols, a.rows) } else { (a.rows, a.cols) };
        let (k2, n) = if b.t { (b.cols, b.rows) } else { (b.rows, b.cols) };
        let whole_c = c_offset == 0 && c.len() == m * n;
        check(
            k == k2
                && (whole_c || c_offset + m * n <= c.len())
                && a.data.len() >= a.offset + a.rows * a.cols
                && b.data.len() >= b.offset + b.rows * b.cols,
            "gemm",
        )?;
        let c_type = match std::mem::size_of::<C>() {
            4 => cudaDataType::CUDA_R_32F,
            2 => cudaDataType::CUDA_R_16BF,
            _ => return Err(CudaError::Shape("gemm: C must be f32 or bf16 (u16)".into())),
        };
        let c_bytes = (c_offset * std::mem::size_of::<C>()) as u64;
        let (ap, _ra) = a.data.device_ptr(&self.stream);
        let (bp, _rb) = b.data.device_ptr(&self.stream);
        let (cp, _rc) = c.device_ptr_mut(&self.stream);
        let (ap, bp) = (ap + 2 * a.offset as u64, bp + 2 * b.offset as u64);
        // SAFETY: the pointers come from live buffers whose sizes were checked against m, n, k
        // and the offsets; the leading dimensions are the stored row lengths.
        unsafe { self.gemm_ptrs((ap, a.cols, a.t), (bp, b.cols, b.t), (cp + c_bytes, c_type), (m, n, k), alpha, beta) }
    }

    /// Row-major `C [m, n] = alpha·op(A)·op(B) + beta·C` through `cublasGemmEx`, with bf16 A and
    /// B and f32 accumulation. An operand is (device pointer, stored row length, transposed); C
    /// is (device pointer, data type) with rows of n values.
    ///
    /// # Safety
    ///
    /// The pointers must address live buffers holding the operands and C at these shapes.
    unsafe fn gemm_ptrs(
        &self,
        a: (CUdeviceptr, usize, bool),
        b: (CUdeviceptr, usize, bool),
        c: (CUdeviceptr, cudarc::cublas::sys::cudaDataType),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        beta: f32,
    ) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        // cuBLAS is column-major: row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
        // so B goes first and each operand's transpose flag keeps its meaning.
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: the caller vouches for the buffers; alpha and beta outlive the call.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(b.2),
                op(a.2),
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                b.0 as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                b.1 as i32,
                a.0 as *const std::ffi::c_void,
                cudaDataType::CUDA_R_16BF,
                a.1 as i32,
                (&beta as *const f32).cast(),
                c.0 as *mut std::ffi::c_void,
                c.1,
                n as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(driver_err)
    }

    /// Cross-entropy fused with the LM head, in vocabulary chunks: `h` [rows, d] (bf16),
    /// `head` [vocab, d] (bf16), `targets` (negative: ignored). Returns the summed loss and the
    /// rows counted, and writes `dh = scale·(softmax − onehot)·head` into `dh` [rows, d] (bf16).
    /// The [rows, vocab] logits never exist; at most [rows, chunk] do.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_lm_head(
        &self,
        h: &CudaSlice<u16>,
        head: &CudaSlice<u16>,
        targets: &[i32],
        d: usize,
        chunk: usize,
        scale: f32,
        dh: &mut CudaSlice<u16>,
    ) -> Result<(f32, usize), CudaError> {
        let rows = targets.len();
        let vocab = head.len() / d;
        check(
            h.len() == rows * d && head.len() == vocab * d && dh.len() == rows * d && chunk > 0,
            "cross_entropy_lm_head",
        )?;
        let t_dev = self.upload(targets)?;
        let mut row_max = self.upload(&vec![f32::NEG_INFINITY; rows])?;
        let mut row_sum = self.zeros::<f32>(rows)?;
        let mut target_logit = self.zeros::<f32>(rows)?;
        let mut logits = self.scratch::<f32>(rows * chunk)?;
        let mut dlogits = self.scratch::<u16>(rows * chunk)?;
        let hm = Mat::new(h, rows, d);
        for offset in (0..vocab).step_by(chunk) {
            let width = chunk.min(vocab - offset);
            let w = head.slice(offset * d..(offset + width) * d);
            let mut lg = logits.slice_mut(0..rows * width);
            self.gemm_view(hm, &w, width, d, &mut lg)?;
            let (w32, o32) = (width as i32, offset as i32);
            // SAFETY: lg holds rows·width logits; the row statistics hold rows values.
            unsafe {
                self.launch("ce_chunk_lse", rows_cfg(rows), |b| {
                    b.arg(&mut lg)
                        .arg(&w32)
                        .arg(&o32)
                        .arg(&t_dev)
                        .arg(&mut row_max)
                        .arg(&mut row_sum)
                        .arg(&mut target_logit);
                })
            }?;
        }
        let mut lse = self.scratch::<f32>(rows)?;
        let mut loss = self.scratch::<f32>(rows)?;
        let r32 = rows as i32;
        // SAFETY: every buffer holds rows values.
        unsafe {
            self.launch("ce_finish", grid_for(rows), |b| {
                b.arg(&row_max).arg(&row_sum).arg(&target_logit).arg(&t_dev).arg(&r32).arg(&mut lse).arg(&mut loss);
            })
        }?;
        for offset in (0..vocab).step_by(chunk) {
            let width = chunk.min(vocab - offset);
            let w = head.slice(offset * d..(offset + width) * d);
            let mut lg = logits.slice_mut(0..rows * width);
            self.gemm_view(hm, &w, width, d, &mut lg)?;
            let (w32, o32) = (width as i32, offset as i32);
            let mut dl = dlogits.slice_mut(0..rows * width);
            // SAFETY: lg and dl hold rows·width values.
            unsafe {
                self.launch("ce_chunk_grad", grid_for(rows * width), |b| {
                    b.arg(&mut lg).arg(&r32).arg(&w32).arg(&o32).arg(&t_dev).arg(&lse).arg(&scale).arg(&mut dl);
                })
            }?;
            // dh (+)= dlogits [rows, width] · W_chunk [width, d].
            self.gemm_acc(&dl, rows, width, &w, d, dh, if offset == 0 { 0.0 } else { 1.0 })?;
        }
        let losses = self.download(&loss)?;
        Ok((losses.iter().sum(), targets.iter().filter(|&&t| t >= 0).count()))
    }

    /// `out [rows, width] (f32) = h [rows, d] · wᵀ` where `w` is a [width, d] view.
    fn gemm_view(
        &self,
        h: Mat<'_>,
        w: &cudarc::driver::CudaView<'_, u16>,
        width: usize,
        d: usize,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
    ) -> Result<(), CudaError> {
        let (hp, _r1) = h.data.device_ptr(&self.stream);
        let (wp, _r2) = w.device_ptr(&self.stream);
        let (op, _r3) = out.device_ptr_mut(&self.stream);
        let c = (op, cudarc::cublas::sys::cudaDataType::CUDA_R_32F);
        // SAFETY: h is [rows, d], w is [width, d], out is [rows, width].
        unsafe { self.gemm_ptrs((hp, d, false), (wp, d, true), c, (h.rows, width, d), 1.0, 0.0) }
    }

    /// `dh [rows, d] (bf16) = beta·dh + dl [rows, width] · w [width, d]`.
    #[allow(clippy::too_many_arguments)]
    fn gemm_acc(
        &self,
        dl: &cudarc::driver::CudaViewMut<'_, u16>,
        rows: usize,
        width: usize,
        w: &cudarc::driver::CudaView<'_, u16>,
        d: usize,
        dh: &mut CudaSlice<u16>,
        beta: f32,
    ) -> Result<(), CudaError> {
        let (lp, _r1) = dl.device_ptr(&self.stream);
        let (wp, _r2) = w.device_ptr(&self.stream);
        let (hp, _r3) = dh.device_ptr_mut(&self.stream);
        let c = (hp, cudarc::cublas::sys::cudaDataType::CUDA_R_16BF);
        // SAFETY: dl is [rows, width], w is [width, d], dh is [rows, d].
        unsafe { self.gemm_ptrs((lp, width, false), (wp, d, false), c, (rows, d, width), 1.0, beta) }
    }

    /// Causal GQA attention forward on one sequence: `out` [seq, heads, head_dim] and `lse`
    /// [seq, heads].
    pub fn attention_forward(
        &self,
        shape: crate::cpu::AttentionShape,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let packed = self.packing(&[shape.seq])?;
        self.attention_forward_packed(shape, &packed, q, k, v, out, lse)
    }

    /// Describe a packed batch of sequences of these lengths for the attention kernels.
    pub fn packing(&self, seq_lens: &[usize]) -> Result<Packing, CudaError> {
        let mut cu = Vec::with_capacity(seq_lens.len() + 1);
        cu.push(0i32);
        let mut total = 0usize;
        for &l in seq_lens {
            total += l;
            cu.push(i32::try_from(total).map_err(|_| CudaError::Shape("attention: batch over 2^31 tokens".into()))?);
        }
        Ok(Packing {
            cu: self.upload(&cu)?,
            sequences: seq_lens.len(),
            tokens: total,
            max_seq: seq_lens.iter().copied().max().unwrap_or(0),
        })
    }

    /// Causal GQA attention forward on a packed batch (each sequence attends within itself):
    /// `out` [tokens, heads, head_dim] and `lse` [tokens, heads]. `shape.seq` is ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_packed(
        &self,
        shape: crate::cpu::AttentionShape,
        packing: &Packing,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (heads, kv, hd) = check_attention(shape, packing, q, k, v)?;
        check(out.len() == q.len() && lse.len() == heads * packing.tokens, "attention_forward")?;
        if packing.tokens == 0 {
            return Ok(());
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let (h, kvh, d) = (heads as i32, kv as i32, hd as i32);
        // SAFETY: shapes checked by `check_attention`; head_dim ≤ 128 as the kernel requires;
        // the offsets in `cu` add up to the token count the buffers hold.
        unsafe {
            self.launch("attention_forward", attention_cfg(packing, heads), |b| {
                b.arg(q).arg(k).arg(v).arg(&packing.cu).arg(&h).arg(&kvh).arg(&d).arg(&scale).arg(out).arg(lse);
            })
        }
    }

    /// Causal GQA attention backward on one sequence, from `dout`, with the forward's `out`
    /// and `lse`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        shape: crate::cpu::AttentionShape,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &CudaSlice<u16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<u16>,
        dq: &mut CudaSlice<u16>,
        dk: &mut CudaSlice<u16>,
        dv: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        let packed = self.packing(&[shape.seq])?;
        self.attention_backward_packed(shape, &packed, q, k, v, out, lse, dout, dq, dk, dv)
    }

    /// Causal GQA attention backward on a packed batch.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_packed(
        &self,
        shape: crate::cpu::AttentionShape,
        packing: &Packing,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        out: &CudaSlice<u16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<u16>,
        dq: &mut CudaSlice<u16>,
        dk: &mut CudaSlice<u16>,
        dv: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        let (heads, kv, hd) = check_attention(shape, packing, q, k, v)?;
        check(
            out.len() == q.len()
                && dout.len() == q.len()
                && dq.len() == q.len()
                && dk.len() == k.len()
                && dv.len() == v.len()
                && lse.len() == heads * packing.tokens,
            "attention_backward",
        )?;
        if packing.tokens == 0 {
            return Ok(());
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let (h, kvh, d, t) = (heads as i32, kv as i32, hd as i32, packing.tokens as i32);
        let mut delta = self.scratch::<f32>(heads * packing.tokens)?;
        let rows = (packing.tokens * heads).div_ceil(ATTENTION_ROWS as usize) as u32;
        let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (32 * ATTENTION_ROWS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: out and dout are [tokens, heads, head_dim]; delta holds tokens·heads values.
        unsafe {
            self.launch("attention_backward_delta", cfg, |b| {
                b.arg(out).arg(dout).arg(&t).arg(&h).arg(&d).arg(&mut delta);
            })
        }?;
        // SAFETY: as in the forward.
        unsafe {
            self.launch("attention_backward_dq", attention_cfg(packing, heads), |b| {
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(&packing.cu)
                    .arg(&h)
                    .arg(&kvh)
                    .arg(&d)
                    .arg(&scale);
                b.arg(dq);
            })
        }?;
        // SAFETY: one warp per key row of each key/value head.
        unsafe {
            self.launch("attention_backward_dkv", attention_cfg(packing, kv), |b| {
                b.arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(dout)
                    .arg(lse)
                    .arg(&delta)
                    .arg(&packing.cu)
                    .arg(&h)
                    .arg(&kvh)
                    .arg(&d)
                    .arg(&scale);
                b.arg(dk).arg(dv);
            })
        }
    }

    /// `y[r, c] += bias[c]` for a `[rows, bias.len()]` matrix.
    pub fn add_bias(&self, y: &mut CudaSlice<u16>, bias: &CudaSlice<u16>) -> Result<(), CudaError> {
        let (n, cols) = (y.len(), bias.len());
        check(cols > 0 && n.is_multiple_of(cols), "add_bias")?;
        let c32 = cols as i32;
        // SAFETY: y holds n values, bias cols.
        unsafe {
            self.launch("add_bias_bf16", grid_for(n), |b| {
                b.arg(y).arg(bias).arg(&n).arg(&c32);
            })
        }
    }

    /// `y += x`, element-wise, in bf16.
    pub fn add(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>) -> Result<(), CudaError> {
        let n = y.len();
        check(x.len() == n, "add")?;
        // SAFETY: two buffers of n values.
        unsafe {
            self.launch("add_bf16", grid_for(n), |b| {
                b.arg(y).arg(x).arg(&n);
            })
        }
    }

    /// `dst[rows[t], :] = src[t, :]` for rows of width `d`; other rows of `dst` are untouched.
    pub fn scatter_rows(
        &self,
        src: &CudaSlice<u16>,
        rows: &CudaSlice<i32>,
        d: usize,
        dst: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        check(src.len() == rows.len() * d && dst.len().is_multiple_of(d), "scatter_rows")?;
        if rows.is_empty() {
            return Ok(());
        }
        let d32 = d as i32;
        // SAFETY: the caller's row indices are below dst.len() / d.
        unsafe {
            self.launch("scatter_rows", rows_cfg(rows.len()), |b| {
                b.arg(src).arg(rows).arg(&d32).arg(dst);
            })
        }
    }

    /// `out = dropout(x)` with probability `p` and the mask of `seed` (inverted scaling).
    pub fn dropout(&self, x: &CudaSlice<u16>, out: &mut CudaSlice<u16>, p: f32, seed: u64) -> Result<(), CudaError> {
        let n = x.len();
        check(out.len() == n && (0.0..1.0).contains(&p), "dropout")?;
        // SAFETY: two buffers of n values.
        unsafe {
            self.launch("dropout_bf16", grid_for(n), |b| {
                b.arg(x).arg(out).arg(&n).arg(&p).arg(&seed);
            })
        }
    }

    /// `y += dropout(x)` with the mask of `seed`: the backward of [`Device::dropout`], added.
    pub fn dropout_add(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>, p: f32, seed: u64) -> Result<(), CudaError> {
        let n = y.len();
        check(x.len() == n && (0.0..1.0).contains(&p), "dropout_add")?;
        // SAFETY: two buffers of n values.
        unsafe {
            self.launch("dropout_add_bf16", grid_for(n), |b| {
                b.arg(y).arg(x).arg(&n).arg(&p).arg(&seed);
            })
        }
    }

    /// `Σ g²` over an f32 buffer (for gradient-norm clipping).
    pub fn sum_squares(&self, g: &CudaSlice<f32>) -> Result<f64, CudaError> {
        let n = g.len();
        let mut out = self.zeros::<f32>(1)?;
        // SAFETY: g holds n values; out one.
        unsafe {
            self.launch("sum_squares", grid_for(n), |b| {
                b.arg(g).arg(&n).arg(&mut out);
            })
        }?;
        Ok(f64::from(self.download(&out)?[0]))
    }

    /// A device buffer for an op to overwrite entirely: no zero-fill pass. Its values are
    /// whatever the allocator hands out until written.
    pub fn scratch<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        // SAFETY: T is a plain number type (ValidAsZeroBits: every bit pattern the device can
        // leave is a valid value); the memory is owned by the returned slice.
        unsafe { self.stream.alloc::<T>(n) }.map_err(driver_err)
    }

    /// Set a buffer to zero.
    pub fn fill_zero<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        x: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        self.stream.memset_zeros(x).map_err(driver_err)
    }

    /// A copy of a device buffer.
    pub fn duplicate<T: cudarc::driver::DeviceRepr>(&self, x: &CudaSlice<T>) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_dtod(x).map_err(driver_err)
    }

    /// Cast f32 values to bf16.
    pub fn cast_to_bf16(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<u16>) -> Result<(), CudaError> {
        let n = x.len();
        check(y.len() == n, "cast_to_bf16")?;
        // SAFETY: two buffers of n values.
        unsafe {
            self.launch("cast_f32_to_bf16", grid_for(n), |b| {
                b.arg(x).arg(y).arg(&n);
            })
        }
    }
}

/// A packed batch's layout for the attention kernels: sequence b holds tokens
/// `[cu[b], cu[b+1])`.
#[derive(Debug)]
pub struct Packing {
    cu: CudaSlice<i32>,
    /// Sequences.
    pub sequences: usize,
    /// Tokens in all.
    pub tokens: usize,
    /// The longest sequence.
    pub max_seq: usize,
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

fn attention_cfg(packing: &Packing, heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (packing.max_seq.div_ceil(ATTENTION_ROWS as usize) as u32, heads as u32, packing.sequences as u32),
        block_dim: (32 * ATTENTION_ROWS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check(ok: bool, op: &str) -> Result<(), CudaError> {
    if ok { Ok(()) } else { Err(CudaError::Shape(format!("{op}: buffer sizes do not match the shape"))) }
}

fn check_attention(
    shape: crate::cpu::AttentionShape,
    packing: &Packing,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
) -> Result<(usize, usize, usize), CudaError> {
    let crate::cpu::AttentionShape { heads, kv_heads, head_dim, .. } = shape;
    if head_dim > 128 || head_dim % 2 != 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(CudaError::Shape(format!(
            "attention: head_dim {head_dim} (at most 128, even), heads {heads} over kv_heads {kv_heads} (must divide)"
        )));
    }
    let t = packing.tokens;
    check(q.len() == t * heads * head_dim && k.len() == t * kv_heads * head_dim && v.len() == k.len(), "attention")?;
    Ok((heads, kv_heads, head_dim))
}

/// Round an f32 to bf16 bits (nearest even), as the kernels do.
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 value of bf16 bits.
pub fn from_bf16(x: u16) -> f32 {
    half::bf16::from_bits(x).to_f32()
}

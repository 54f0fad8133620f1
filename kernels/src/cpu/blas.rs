//! The system OpenBLAS, loaded at run time on request, for the large multi-threaded f32 products.
//!
//! `TREX_BLAS=openblas` sends every large multi-threaded f32 product to `cblas_sgemm` of
//! `libopenblas.so.0` (Debian's `libopenblas0`, installed with `apt-get install libopenblas-dev`),
//! loaded when first needed; nothing is linked at build time. The default (`TREX_BLAS` unset or
//! `gemm`) is the `gemm` crate, which also does every small, serial or f64 product. OpenBLAS is
//! not the default because it did not make a training step faster on a 2-core AVX-512 machine
//! (BENCHMARKS.md, "GEMM candidates"): its own thread pool and rayon's share the same two cores.
//! OpenBLAS gets as many threads as rayon has and is only called from outside a parallel loop.
//! [`backend`] says which library is in use.

use std::ffi::c_int;
use std::sync::OnceLock;

/// `cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The loaded library (kept alive for the process) and its entry point.
struct OpenBlas {
    _lib: libloading::Library,
    sgemm: Sgemm,
    config: String,
}

static OPENBLAS: OnceLock<Option<OpenBlas>> = OnceLock::new();

/// The CBLAS enum values of the reference header (`cblas.h`).
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The library names tried, in order.
const NAMES: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

fn load() -> Option<OpenBlas> {
    let choice = std::env::var("TREX_BLAS").unwrap_or_default();
    match choice.as_str() {
        "openblas" => {}
        "" | "gemm" => return None,
        other => panic!("TREX_BLAS={other} is not a backend: use gemm (the default) or openblas"),
    }
    let found = NAMES.iter().find_map(|name| open(name).ok());
    if found.is_none() {
        panic!(
            "TREX_BLAS=openblas but no OpenBLAS could be loaded (tried {}): install it with \
             `apt-get install libopenblas-dev`, or unset TREX_BLAS to use the gemm crate",
            NAMES.join(", ")
        );
    }
    found
}

#[allow(unsafe_code)]
fn open(name: &str) -> Result<OpenBlas, libloading::Error> {
    // SAFETY: loading OpenBLAS runs its initialisers, which only set up its thread pool. The
    // symbols are looked up with the C signatures of OpenBLAS's `cblas.h` and `openblas_config.h`.
    unsafe {
        let lib = libloading::Library::new(name)?;
        let sgemm: Sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
        let set_threads = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")?;
        set_threads(rayon::current_num_threads().max(1) as c_int);
        let config = match lib.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_config\0") {
            Ok(get) => std::ffi::CStr::from_ptr(get()).to_string_lossy().into_owned(),
            Err(_) => String::new(),
        };
        Ok(OpenBlas { _lib: lib, sgemm, config })
    }
}

fn openblas() -> Option<&'static OpenBlas> {
    OPENBLAS.get_or_init(load).as_ref()
}

/// Which library runs the large f32 products: `"openblas (<its build config>)"` or `"gemm"`.
pub fn backend() -> String {
    match openblas() {
        Some(o) => format!("openblas ({})", o.config.trim()),
        None => "gemm".to_string(),
    }
}

/// `c = beta·c + alpha·op(a)·op(b)` through OpenBLAS, row-major with row strides `lda`, `ldb`,
/// `ldc`. Returns false (and touches nothing) when OpenBLAS is not in use or a size does not fit
/// its 32-bit integers. The caller has checked every bound.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> bool {
    let Some(o) = openblas() else { return false };
    let fits = [m, n, k, lda, ldb, ldc].iter().all(|&x| x <= c_int::MAX as usize);
    if !fits {
        return false;
    }
    let t = |x: bool| if x { TRANS } else { NO_TRANS };
    #[allow(unsafe_code)]
    // SAFETY: the caller checked that op(a) (m×k), op(b) (k×n) and c (m×n) with these row
    // strides lie inside their slices, and `c` is a unique borrow. With beta = 0 CBLAS does not
    // read `c`.
    unsafe {
        (o.sgemm)(
            ROW_MAJOR,
            t(ta),
            t(tb),
            m as c_int,
            n as c_int,
            k as c_int,
            alpha,
            a.as_ptr(),
            lda as c_int,
            b.as_ptr(),
            ldb as c_int,
            beta,
            c.as_mut_ptr(),
            ldc as c_int,
        );
    }
    true
}

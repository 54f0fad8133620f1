//! Every CUDA kernel compiles with NVRTC for Ampere (sm_80) and Hopper (sm_90). Needs NVRTC
//! (`libnvrtc.so`) but no GPU: `cargo xtask nvrtc-check` fetches it from the
//! `nvidia-cuda-nvrtc-cu12` wheel and runs this test, and CI does the same.

#![cfg(feature = "cuda")]

use trex_kernels::cuda;

#[test]
#[ignore = "needs NVRTC on the library path: cargo xtask nvrtc-check (part of cargo xtask ci) fetches it and runs this"]
fn every_kernel_compiles_for_sm80_and_sm90() {
    assert!(
        cuda::nvrtc_available(),
        "NVRTC (libnvrtc.so) is not on the library path: run `cargo xtask nvrtc-check`, which fetches it"
    );
    // Compile fresh, not from a cache an earlier version of the sources left behind.
    let cache = std::env::temp_dir().join(format!("trex-nvrtc-check-{}", std::process::id()));
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("TREX_CACHE_DIR", &cache) };
    for arch in ["compute_80", "compute_90"] {
        for (module, _) in cuda::SOURCES {
            let ptx = cuda::compile(module, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(".entry"), "{module} for {arch}: no kernel entry in the PTX");
            assert!(ptx.contains(&format!(".target sm_{}", &arch[8..])), "{module}: PTX is not for {arch}");
        }
    }
    // The cache now holds every module; a second compile is served from it.
    let files = std::fs::read_dir(cache.join("ptx")).unwrap().count();
    assert_eq!(files, 2 * cuda::SOURCES.len());
    let _ = std::fs::remove_dir_all(&cache);
}

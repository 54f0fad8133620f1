//! Record which CUDA version cudarc's bindings target, for error messages: cudarc reads
//! `CUDARC_CUDA_VERSION` (set in .cargo/config.toml, overridable from the environment).

fn main() {
    println!("cargo:rerun-if-env-changed=CUDARC_CUDA_VERSION");
    let version = std::env::var("CUDARC_CUDA_VERSION").unwrap_or_else(|_| "12080".into());
    let n: u32 = version.parse().unwrap_or(12080);
    println!("cargo:rustc-env=CUDA_MAJOR_VERSION_OF_BINDINGS={}", n / 1000);
    println!("cargo:rustc-env=CUDA_MINOR_VERSION_OF_BINDINGS={}", (n % 1000) / 10);
}

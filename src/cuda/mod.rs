//! CUDA backend: kernels in CUDA C (`kernels/*.cu`, committed as PTX by `make ptx`), launch plans
//! ([`plan`], pure Rust) and the cudarc launcher ([`driver`], feature `cuda`) that runs them on torch's
//! memory and current stream.

#[cfg(feature = "cuda")]
pub mod driver;
pub mod plan;

/// True when the CUDA launcher is compiled in and a driver with at least one device is present.
pub fn available() -> bool {
    #[cfg(feature = "cuda")]
    {
        driver::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

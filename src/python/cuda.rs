//! Bindings of the CUDA backend (`crate::cuda`): the Python layer passes torch's device index, current
//! stream handle and `data_ptr()`s; the plan is checked and built here, then launched without the GIL.

use super::{map_err, py_error};
use crate::cuda::plan::{self, DType, Request};
use pyo3::prelude::*;

/// `True` when the CUDA launcher is compiled in and a CUDA driver with a device is present.
#[pyfunction]
fn cuda_available(py: Python<'_>) -> bool {
    py.detach(crate::cuda::available)
}

/// Bytes of scratch memory `cuda_launch(op, ...)` needs for these sizes.
#[pyfunction]
fn cuda_scratch_bytes(py: Python<'_>, op: &str, dtype: &str, sizes: Vec<i64>) -> PyResult<u64> {
    let dt = DType::parse(dtype).map_err(|e| map_err(py, e))?;
    plan::scratch_bytes(op, dt, &sizes).map_err(|e| map_err(py, e))
}

/// Retains device `device`'s primary context and loads the PTX (call before capturing a CUDA graph).
#[pyfunction]
fn cuda_warmup(py: Python<'_>, device: usize) -> PyResult<()> {
    #[cfg(feature = "cuda")]
    {
        py.detach(|| crate::cuda::driver::warmup(device)).map_err(|e| py_error(py, "DeviceError", e))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Err(py_error(py, "DeviceError", "gpmkit was built without its CUDA backend".into()))
    }
}

/// Enqueues operation `op` on CUDA stream `stream` of device `device` (no synchronization).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_launch(
    py: Python<'_>,
    op: &str,
    dtype: &str,
    device: usize,
    stream: u64,
    ptrs: Vec<u64>,
    sizes: Vec<i64>,
    scalars: Vec<f64>,
) -> PyResult<()> {
    let dt = DType::parse(dtype).map_err(|e| map_err(py, e))?;
    let req = Request { op, dtype: dt, ptrs: &ptrs, sizes: &sizes, scalars: &scalars };
    let launches = plan::plan(&req).map_err(|e| map_err(py, e))?;
    #[cfg(feature = "cuda")]
    {
        // SAFETY: the Python layer passes data_ptr()s of live torch CUDA tensors of the planned sizes on
        // `device`, and torch's current stream of that device.
        py.detach(|| unsafe { crate::cuda::driver::launch(device, stream, &launches) })
            .map_err(|e| py_error(py, "DeviceError", e))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (device, stream, launches);
        Err(py_error(py, "DeviceError", "gpmkit was built without its CUDA backend".into()))
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_scratch_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_warmup, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_launch, m)?)?;
    Ok(())
}

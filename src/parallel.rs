//! The crate's own rayon pool and the one parallel primitive every kernel uses.
//!
//! Determinism: work is cut into chunks whose size depends only on the problem, never on the number of
//! threads, and results of the chunks are combined in chunk order. So any thread count gives the same bits.
//!
//! Fork safety: the pool remembers the process id that built it. A forked child (a DataLoader worker) has
//! no pool threads, so it builds a fresh pool on first use instead of waiting on threads that do not exist.

use rayon::prelude::*;
use std::sync::{Arc, Mutex};

struct PoolState {
    pid: u32,
    threads: usize,
    pool: Option<Arc<rayon::ThreadPool>>,
}

static POOL: Mutex<PoolState> = Mutex::new(PoolState { pid: 0, threads: 0, pool: None });

fn default_threads() -> usize {
    for var in ["GPMKIT_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if let Some(n) = std::env::var(var).ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            if n > 0 {
                return n;
            }
        }
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn lock() -> std::sync::MutexGuard<'static, PoolState> {
    // A panic while holding the lock cannot leave the state inconsistent (plain assignments only).
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the number of threads the kernels use (0 = the default: `GPMKIT_NUM_THREADS`,
/// `RAYON_NUM_THREADS`, or the number of CPUs). Takes effect on the next call.
pub fn set_num_threads(n: usize) {
    let mut st = lock();
    st.threads = if n == 0 { default_threads() } else { n };
    if let Some(old) = st.pool.take() {
        if st.pid != std::process::id() {
            // Threads of a pool built before fork() do not exist here; never touch them.
            std::mem::forget(old);
        }
    }
}

/// The number of threads the kernels use.
pub fn num_threads() -> usize {
    let mut st = lock();
    if st.threads == 0 {
        st.threads = default_threads();
    }
    st.threads
}

fn pool() -> Arc<rayon::ThreadPool> {
    let mut st = lock();
    let pid = std::process::id();
    if st.threads == 0 {
        st.threads = default_threads();
    }
    if st.pid != pid {
        if let Some(old) = st.pool.take() {
            std::mem::forget(old);
        }
        st.pid = pid;
    }
    if st.pool.is_none() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(st.threads)
            .thread_name(|i| format!("gpmkit-{i}"))
            .build()
            .expect("failed to start the gpmkit thread pool");
        st.pool = Some(Arc::new(pool));
    }
    st.pool.clone().expect("pool was just built")
}

/// Applies `f(chunk_index, item)` to every item and returns the results in item order.
///
/// One item (or one thread) runs inline on the caller's thread, so small calls pay no pool hand-off.
pub fn map_ordered<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, T) -> R + Sync + Send,
{
    if items.len() <= 1 || num_threads() == 1 {
        return items.into_iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    pool().install(|| items.into_par_iter().enumerate().map(|(i, t)| f(i, t)).collect())
}

/// Splits an optional output slice into `n` chunks of `width` elements (the last may be shorter).
pub(crate) fn split_opt<T>(s: Option<&mut [T]>, width: usize, n: usize) -> Vec<Option<&mut [T]>> {
    match s {
        None => (0..n).map(|_| None).collect(),
        Some(s) if width == 0 => {
            let mut v: Vec<Option<&mut [T]>> = (0..n).map(|_| None).collect();
            if let Some(first) = v.first_mut() {
                *first = Some(s);
            }
            v
        }
        Some(s) => {
            let mut v: Vec<Option<&mut [T]>> = s.chunks_mut(width).map(Some).collect();
            v.resize_with(n, || None);
            v
        }
    }
}

/// Number of chunks of `rows_per_chunk` rows needed for `rows` rows.
pub(crate) fn n_chunks(rows: usize, rows_per_chunk: usize) -> usize {
    rows.div_ceil(rows_per_chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_ordered_keeps_order_for_any_thread_count() {
        let items: Vec<usize> = (0..100).collect();
        let a = map_ordered(items.clone(), |i, t| i * 1000 + t);
        assert_eq!(a, (0..100).map(|i| i * 1001).collect::<Vec<_>>());
    }

    #[test]
    fn split_opt_pads_with_none() {
        let mut buf = [0u8; 5];
        let parts = split_opt(Some(&mut buf[..]), 2, 4);
        let lens: Vec<Option<usize>> = parts.iter().map(|p| p.as_ref().map(|s| s.len())).collect();
        assert_eq!(lens, vec![Some(2), Some(2), Some(1), None]);
        assert!(split_opt::<u8>(None, 2, 3).iter().all(Option::is_none));
    }
}

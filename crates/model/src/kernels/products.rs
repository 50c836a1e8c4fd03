//! What the float ([`super::linear`]) and quantized ([`super::quant`]) products share: the
//! row count where decode kernels give way to gemm, the split of output features over the team,
//! and the call into the `gemm` crate.

use gemm::Parallelism;

/// Up to this many rows, the streaming kernel beats packing for gemm (measured end to end on
/// SmolLM2-135M: at 8 rows 127 vs 47 tok/s; at 32 rows even in f32 and gemm 4 % ahead in bf16;
/// at 512 rows gemm is 2.5× faster).
pub(crate) const SMALL_M: usize = 16;

/// The output features (weight rows) member `tid` of `members` computes: contiguous, split on
/// multiples of 16 so that members write whole cache lines.
pub(crate) fn member_rows(rows: usize, members: usize, tid: usize) -> (usize, usize) {
    let bound = |t: usize| (rows * t / members).next_multiple_of(16).min(rows);
    (bound(tid), bound(tid + 1))
}

/// `y[i, j] = Σ_k x[i, k] · w[j, k]` for `i < m`, `j < n`, where `y` rows are `ldy` apart;
/// single-threaded (the caller splits the work).
///
/// # Safety
/// `y` must be valid for writes at `i · ldy + j` for every `i < m`, `j < n`, and those elements
/// must not be accessed by anyone else during the call.
pub(crate) unsafe fn gemm_xwt(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    y: *mut f32,
    ldy: usize,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "gemm inputs too short"
    );
    assert!(n <= ldy, "gemm output rows overlap");
    // SAFETY: the asserts keep reads inside `x` and `w`; the caller vouches for `y`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y,
            1,
            ldy as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

// gather.cuh: the per-thread loop of the row gather (a warm start's vocabulary remap).
//
// A gather descriptor is one BoxCopy template (gpuload_box_desc: shape and strides; its
// count is the elements per box, its dst the destination buffer, its src_offset and
// dst_offset unused) repeated over `boxes` boxes whose offsets are listed in a separate
// array of (source byte, destination element) pairs, entries index_offset ..
// index_offset + boxes - 1. The contract (gpuload/plan/copies.py, GatherCopy): work item
// i = k * count + j is element j (row-major in the box) of box k; it is read at byte
//   offsets[2 * (index_offset + k)] + SRC_SIZE * sum(j[a] * src_strides[a])
// of the staged chunk and written to element
//   offsets[2 * (index_offset + k) + 1] + sum(j[a] * dst_strides[a])
// of the destination, converted as the box copy of the same variant converts.
//
// Like box_copy.cuh, everything is __host__ __device__ so that the kernel
// (kernels/gather.cu) and the host harness (tests/kernel_host_harness.cpp) run the same
// code; the NumPy twin is gpuload.backend.host.gather_copy. No #include beyond box_copy.cuh:
// NVRTC compiles this without the C++ standard library.

#ifndef GPULOAD_GATHER_CUH
#define GPULOAD_GATHER_CUH

#include "box_copy.cuh"

// Layout mirrored by gpuload.backend.contract.GATHER_DESC_DTYPE (tests parse this struct
// and check gpuload_harness_gather_layout).
struct gpuload_gather_desc {
    gpuload_box_desc box;  // the box template; box.count = elements per box
    gl_i64 boxes;          // number of boxes
    gl_i64 index_offset;   // first (source, destination) pair of this descriptor
};

// Box k's pair -> (source byte, destination element) of work item `inner` of that box.
template <class I>
GPULOAD_HD void gpuload_gather_map(const gpuload_gather_desc& d, const gl_i64* offsets,
                                   gl_i64 src_itemsize, I k, I inner, gl_i64& src_byte,
                                   gl_i64& dst_elem) {
    gl_i64 s = 0, t = 0;
    gl_decode<I>(d.box, (int)d.box.rank, inner, s, t);
    const gl_i64* pair = offsets + 2 * (d.index_offset + (gl_i64)k);
    src_byte = pair[0] + s * src_itemsize;
    dst_elem = pair[1] + t;
}

// The loop one thread runs over one descriptor (thread `tid` of block `bid` of `nblocks`
// blocks of `nthreads`), U items per step with all loads issued before the stores, as in
// gl_thread_items. Alignment is checked per element: boxes start anywhere.
template <class C, class I>
GPULOAD_HD void gl_gather_items(const gpuload_gather_desc& d, const gl_i64* offsets,
                                const gl_u8* src, I bid, I nblocks, I tid, I nthreads) {
    typedef typename C::src_t ST;
    typedef typename C::dst_t DT;
    const int U = GPULOAD_ITEMS_PER_THREAD;
    const I per_box = (I)d.box.count;
    if (per_box == 0) return;
    const I items = (I)(d.boxes * d.box.count);
    const I step = nblocks * nthreads * (I)U;
    for (I base = bid * nthreads * (I)U + tid; base < items; base += step) {
        ST v[U];
        gl_u8* out[U];
        GPULOAD_UNROLL
        for (int u = 0; u < U; ++u) {
            const I it = base + (I)u * nthreads;
            out[u] = 0;
            if (it < items) {
                const I k = it / per_box;
                gl_i64 sb = 0, de = 0;
                gpuload_gather_map<I>(d, offsets, (gl_i64)sizeof(ST), k, it - k * per_box, sb, de);
                const gl_u8* sp = src + sb;
                v[u] = gl_load<ST>(sp, ((gl_u64)sp % sizeof(ST)) == 0);
                out[u] = (gl_u8*)d.box.dst + de * (gl_i64)sizeof(DT);
            }
        }
        GPULOAD_UNROLL
        for (int u = 0; u < U; ++u) {
            if (out[u]) gl_store<DT>(out[u], C::apply(v[u]), ((gl_u64)out[u] % sizeof(DT)) == 0);
        }
    }
}

#endif  // GPULOAD_GATHER_CUH

// Host harness for kernels/box_copy.cuh: runs the kernels' own index arithmetic,
// per-descriptor plan, per-thread loop and conversions on the CPU, so that the tests can
// compare them with NumPy without a GPU. Built by tests/test_kernels_host.py with
//   g++ -std=c++17 -O2 -shared -fPIC -fno-strict-aliasing -I kernels ...
// and loaded with ctypes. Every entry point is extern "C".
//
// gpuload_harness_run simulates a launch: for each blockIdx.y it walks the descriptors
// the kernel's y-loop would, and for each (blockIdx.x, threadIdx.x) it calls the very
// gl_thread_items<> the kernel calls, with the same 32/64-bit index choice. Only the
// shared-memory staging of the descriptor and the barriers are kernel-only.

#include <cstddef>
#include <cstring>

#include "box_copy.cuh"
#include "gather.cuh"

namespace {

template <class C>
void run_launch(const gl_u8* src, const gpuload_box_desc* descs, int n_desc, int grid_x,
                int grid_y, int block, int force64) {
    for (int by = 0; by < grid_y; ++by) {
        for (int k = by; k < n_desc; k += grid_y) {
            const gpuload_box_desc d = descs[k];
            const gl_plan p = gl_make_plan<C>(d, src);
            for (int bx = 0; bx < grid_x; ++bx) {
                for (int tx = 0; tx < block; ++tx) {
                    if (p.items <= GPULOAD_MAX_ITEMS_32 && !force64) {
                        gl_thread_items<C, gl_u32>(d, p, src, (gl_u32)bx, (gl_u32)grid_x,
                                                   (gl_u32)tx, (gl_u32)block);
                    } else {
                        gl_thread_items<C, gl_u64>(d, p, src, (gl_u64)bx, (gl_u64)grid_x,
                                                   (gl_u64)tx, (gl_u64)block);
                    }
                }
            }
        }
    }
}

template <class C>
void run_convert(const void* in, void* out, long long n) {
    const typename C::src_t* s = (const typename C::src_t*)in;
    typename C::dst_t* d = (typename C::dst_t*)out;
    for (long long i = 0; i < n; ++i) d[i] = C::apply(s[i]);
}

template <class C>
void run_plan(const gl_u8* src, const gpuload_box_desc* desc, long long* out) {
    const gl_plan p = gl_make_plan<C>(*desc, src);
    out[0] = p.items;
    out[1] = p.row_items;
    out[2] = p.head;
    out[3] = p.body;
    out[4] = p.vec;
    out[5] = p.aligned;
}

#define GPULOAD_NAME_LIST(NAME, CONV) #NAME ","
const char kVariants[] = GPULOAD_BOX_COPY_VARIANTS(GPULOAD_NAME_LIST);
#undef GPULOAD_NAME_LIST

}  // namespace

extern "C" {

// Comma-terminated list of variant names, e.g. "b1_b1,b2_b2,...,".
const char* gpuload_harness_variants() { return kVariants; }

// sizeof(gpuload_box_desc), GPULOAD_MAX_RANK, then the offsets of its fields in order.
int gpuload_harness_desc_layout(long long* out, int n) {
    const long long v[] = {
        (long long)sizeof(gpuload_box_desc),
        (long long)GPULOAD_MAX_RANK,
        (long long)offsetof(gpuload_box_desc, rank),
        (long long)offsetof(gpuload_box_desc, count),
        (long long)offsetof(gpuload_box_desc, src_offset),
        (long long)offsetof(gpuload_box_desc, dst_offset),
        (long long)offsetof(gpuload_box_desc, dst),
        (long long)offsetof(gpuload_box_desc, shape),
        (long long)offsetof(gpuload_box_desc, src_strides),
        (long long)offsetof(gpuload_box_desc, dst_strides),
    };
    const int m = (int)(sizeof(v) / sizeof(v[0]));
    for (int i = 0; i < n && i < m; ++i) out[i] = v[i];
    return m;
}

// gpuload_box_map for one linear index: out = {source byte, destination element}.
void gpuload_harness_map(const gpuload_box_desc* d, long long src_itemsize,
                         unsigned long long idx, long long* out) {
    gpuload_box_map(*d, src_itemsize, idx, out[0], out[1]);
}

// Simulated launch of gpuload_box_copy_<name>; force64 != 0 takes the 64-bit index loop
// the kernel uses above 2^31 items, on any size. Returns 0, or -1 for an unknown name.
int gpuload_harness_run(const char* name, const unsigned char* src, const gpuload_box_desc* descs,
                        int n_desc, int grid_x, int grid_y, int block, int force64) {
#define GPULOAD_DISPATCH(NAME, CONV)                                  \
    if (std::strcmp(name, #NAME) == 0) {                              \
        run_launch<CONV>(src, descs, n_desc, grid_x, grid_y, block, force64); \
        return 0;                                                     \
    }
    GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DISPATCH)
#undef GPULOAD_DISPATCH
    return -1;
}

// The conversion alone, over n contiguous elements. Returns 0, or -1 for an unknown name.
int gpuload_harness_convert(const char* name, const void* in, void* out, long long n) {
#define GPULOAD_DISPATCH(NAME, CONV)        \
    if (std::strcmp(name, #NAME) == 0) {    \
        run_convert<CONV>(in, out, n);      \
        return 0;                           \
    }
    GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DISPATCH)
#undef GPULOAD_DISPATCH
    return -1;
}

// The plan a block would make: {items, row_items, head, body, vec, aligned}.
int gpuload_harness_plan(const char* name, const unsigned char* src, const gpuload_box_desc* desc,
                         long long* out) {
#define GPULOAD_DISPATCH(NAME, CONV)        \
    if (std::strcmp(name, #NAME) == 0) {    \
        run_plan<CONV>(src, desc, out);     \
        return 0;                           \
    }
    GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DISPATCH)
#undef GPULOAD_DISPATCH
    return -1;
}

}  // extern "C"

// -- row gather (kernels/gather.cuh) ------------------------------------------------------

namespace {

template <class C>
void run_gather(const gl_u8* src, const gpuload_gather_desc* descs, int n_desc,
                const gl_i64* offsets, int grid_x, int grid_y, int block, int force64) {
    for (int by = 0; by < grid_y; ++by) {
        for (int k = by; k < n_desc; k += grid_y) {
            const gpuload_gather_desc d = descs[k];
            const bool small = d.boxes * d.box.count <= GPULOAD_MAX_ITEMS_32 && !force64;
            for (int bx = 0; bx < grid_x; ++bx) {
                for (int tx = 0; tx < block; ++tx) {
                    if (small) {
                        gl_gather_items<C, gl_u32>(d, offsets, src, (gl_u32)bx, (gl_u32)grid_x,
                                                   (gl_u32)tx, (gl_u32)block);
                    } else {
                        gl_gather_items<C, gl_u64>(d, offsets, src, (gl_u64)bx, (gl_u64)grid_x,
                                                   (gl_u64)tx, (gl_u64)block);
                    }
                }
            }
        }
    }
}

}  // namespace

extern "C" {

// sizeof(gpuload_gather_desc), then the offsets of box, boxes, index_offset.
int gpuload_harness_gather_layout(long long* out, int n) {
    const long long v[] = {
        (long long)sizeof(gpuload_gather_desc),
        (long long)offsetof(gpuload_gather_desc, box),
        (long long)offsetof(gpuload_gather_desc, boxes),
        (long long)offsetof(gpuload_gather_desc, index_offset),
    };
    const int m = (int)(sizeof(v) / sizeof(v[0]));
    for (int i = 0; i < n && i < m; ++i) out[i] = v[i];
    return m;
}

// Simulated launch of gpuload_gather_<name>. Returns 0, or -1 for an unknown name.
int gpuload_harness_gather_run(const char* name, const unsigned char* src,
                               const gpuload_gather_desc* descs, int n_desc,
                               const long long* offsets, int grid_x, int grid_y, int block,
                               int force64) {
#define GPULOAD_DISPATCH(NAME, CONV)                                                  \
    if (std::strcmp(name, #NAME) == 0) {                                              \
        run_gather<CONV>(src, descs, n_desc, offsets, grid_x, grid_y, block, force64); \
        return 0;                                                                     \
    }
    GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DISPATCH)
#undef GPULOAD_DISPATCH
    return -1;
}

}  // extern "C"

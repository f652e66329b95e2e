// gather.cu: execute a batch of GatherCopy descriptors from one staged chunk.
//
// One extern "C" kernel per dtype pair, named gpuload_gather_<src>_<dst>, for the same
// variants as the box copies (GPULOAD_BOX_COPY_VARIANTS in box_copy.cuh): a warm start
// gathers the old rows (or columns) its new vocabulary needs into each part.
//
// Launch (gpuload/backend/kernels.py, launch_geometry, as for box copies):
//   grid  = (blocks per descriptor, min(n_desc, 65535)), block = GPULOAD_BLOCK_THREADS
//   args  = (src: staged chunk base, descs: gpuload_gather_desc[n_desc], n_desc,
//            offsets: (source byte, destination element) pairs of every descriptor's boxes)
// blockIdx.y picks a descriptor; the blocks along x grid-stride over its items.

#include "gather.cuh"

#ifndef GPULOAD_BLOCK_THREADS
#define GPULOAD_BLOCK_THREADS 256
#endif

template <class C>
__device__ __forceinline__ void gl_gather_block(const gl_u8* __restrict__ src,
                                                const gpuload_gather_desc* __restrict__ descs,
                                                int n_desc, const gl_i64* __restrict__ offsets) {
    // The descriptor sits in shared memory: every item reads its shape and strides.
    __shared__ gpuload_gather_desc sd;
    const int words = (int)(sizeof(gpuload_gather_desc) / sizeof(gl_i64));
    for (int k = blockIdx.y; k < n_desc; k += gridDim.y) {
        const gl_i64* g = (const gl_i64*)(descs + k);
        gl_i64* s = (gl_i64*)&sd;
        for (int w = threadIdx.x; w < words; w += blockDim.x) s[w] = g[w];
        __syncthreads();
        if (sd.boxes * sd.box.count <= GPULOAD_MAX_ITEMS_32) {
            gl_gather_items<C, gl_u32>(sd, offsets, src, blockIdx.x, gridDim.x, threadIdx.x,
                                       blockDim.x);
        } else {
            gl_gather_items<C, gl_u64>(sd, offsets, src, blockIdx.x, gridDim.x, threadIdx.x,
                                       blockDim.x);
        }
        // The next descriptor overwrites sd: wait until every thread is done with it.
        __syncthreads();
    }
}

// -DGPULOAD_ONLY="f32_bf16" builds that one variant's body (see box_copy.cu: NVRTC time).
#ifndef GPULOAD_ONLY
#define GPULOAD_ONLY ""
#endif

__host__ __device__ constexpr bool gl_gather_streq(const char* a, const char* b) {
    return *a == *b && (*a == '\0' || gl_gather_streq(a + 1, b + 1));
}

__host__ __device__ constexpr bool gl_gather_selected(const char* name) {
    return GPULOAD_ONLY[0] == '\0' || gl_gather_streq(name, GPULOAD_ONLY);
}

template <class C, bool SELECTED>
struct gl_gather_entry {
    static __device__ __forceinline__ void run(const gl_u8* src, const gpuload_gather_desc* descs,
                                               int n_desc, const gl_i64* offsets) {
        gl_gather_block<C>(src, descs, n_desc, offsets);
    }
};

template <class C>
struct gl_gather_entry<C, false> {
    static __device__ __forceinline__ void run(const gl_u8*, const gpuload_gather_desc*, int,
                                               const gl_i64*) {}
};

#define GPULOAD_DEFINE_GATHER(NAME, CONV)                                                  \
    extern "C" __global__ void __launch_bounds__(GPULOAD_BLOCK_THREADS)                    \
        gpuload_gather_##NAME(const gl_u8* __restrict__ src,                               \
                              const gpuload_gather_desc* __restrict__ descs, int n_desc,   \
                              const gl_i64* __restrict__ offsets) {                        \
        gl_gather_entry<CONV, gl_gather_selected(#NAME)>::run(src, descs, n_desc, offsets); \
    }

GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DEFINE_GATHER)

#undef GPULOAD_DEFINE_GATHER

// box_copy.cu: execute a batch of BoxCopy descriptors from one staged chunk.
//
// One extern "C" kernel per (source, destination) dtype pair, named
// gpuload_box_copy_<src>_<dst>: b1_b1 .. b16_b16 are raw copies by itemsize, the others
// are float conversions (see GPULOAD_BOX_COPY_VARIANTS in box_copy.cuh).
//
// Why extern "C" wrappers around one template rather than name_expressions: the names
// are fixed strings the Python side can look up without C++ mangling, `nvcc -c` of this
// file alone instantiates and checks every variant (an uninstantiated template compiles
// to nothing), and the variant list lives in one X-macro that the host harness shares.
//
// Launch (gpuload/backend/kernels.py, launch_geometry):
//   grid  = (blocks per descriptor, min(n_desc, 65535)), block = GPULOAD_BLOCK_THREADS
//   args  = (src: staged chunk base, descs: device array of gpuload_box_desc, n_desc)
// blockIdx.y picks a descriptor (looping when there are more than gridDim.y); the
// blocks along x grid-stride over that descriptor's work items. Every descriptor of a
// launch reads from the same staged chunk; each writes its own destination (desc.dst).

#include "box_copy.cuh"

#ifndef GPULOAD_BLOCK_THREADS
#define GPULOAD_BLOCK_THREADS 256
#endif

template <class C>
__device__ __forceinline__ void gl_box_copy_block(const gl_u8* __restrict__ src,
                                                  const gpuload_box_desc* __restrict__ descs,
                                                  int n_desc) {
    // The descriptor and its plan sit in shared memory: every item reads shape and strides,
    // and a shared broadcast is cheaper than each thread re-reading 232 bytes of global.
    __shared__ gpuload_box_desc sd;
    __shared__ gl_plan sp;
    const int words = (int)(sizeof(gpuload_box_desc) / sizeof(gl_i64));
    for (int k = blockIdx.y; k < n_desc; k += gridDim.y) {
        const gl_i64* g = (const gl_i64*)(descs + k);
        gl_i64* s = (gl_i64*)&sd;
        for (int w = threadIdx.x; w < words; w += blockDim.x) s[w] = g[w];
        __syncthreads();
        if (threadIdx.x == 0) sp = gl_make_plan<C>(sd, src);
        __syncthreads();
        if (sp.items <= GPULOAD_MAX_ITEMS_32) {
            gl_thread_items<C, gl_u32>(sd, sp, src, blockIdx.x, gridDim.x, threadIdx.x,
                                       blockDim.x);
        } else {
            gl_thread_items<C, gl_u64>(sd, sp, src, blockIdx.x, gridDim.x, threadIdx.x,
                                       blockDim.x);
        }
        // The next descriptor overwrites sd/sp: wait until every thread is done with them.
        __syncthreads();
    }
}

// -DGPULOAD_ONLY="f32_bf16" compiles the body of that one variant and leaves the others
// empty stubs: a whole-file build takes ~7 s of NVRTC per architecture, one variant about
// half a second, and a load usually needs one or two. Unset (standalone nvcc), all are built.
#ifndef GPULOAD_ONLY
#define GPULOAD_ONLY ""
#endif

__host__ __device__ constexpr bool gl_streq(const char* a, const char* b) {
    return *a == *b && (*a == '\0' || gl_streq(a + 1, b + 1));
}

__host__ __device__ constexpr bool gl_selected(const char* name) {
    return GPULOAD_ONLY[0] == '\0' || gl_streq(name, GPULOAD_ONLY);
}

// A template so that an unselected variant never instantiates gl_box_copy_block<C>.
template <class C, bool SELECTED>
struct gl_box_copy_entry {
    static __device__ __forceinline__ void run(const gl_u8* src, const gpuload_box_desc* descs,
                                               int n_desc) {
        gl_box_copy_block<C>(src, descs, n_desc);
    }
};

template <class C>
struct gl_box_copy_entry<C, false> {
    static __device__ __forceinline__ void run(const gl_u8*, const gpuload_box_desc*, int) {}
};

#define GPULOAD_DEFINE_BOX_COPY(NAME, CONV)                                              \
    extern "C" __global__ void __launch_bounds__(GPULOAD_BLOCK_THREADS)                  \
        gpuload_box_copy_##NAME(const gl_u8* __restrict__ src,                           \
                                const gpuload_box_desc* __restrict__ descs, int n_desc) { \
        gl_box_copy_entry<CONV, gl_selected(#NAME)>::run(src, descs, n_desc);            \
    }

GPULOAD_BOX_COPY_VARIANTS(GPULOAD_DEFINE_BOX_COPY)

#undef GPULOAD_DEFINE_BOX_COPY

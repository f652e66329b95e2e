// box_copy.cuh: index arithmetic and dtype conversions behind every BoxCopy.
//
// Everything here is __host__ __device__ so that one definition serves the CUDA kernels
// (kernels/box_copy.cu, compiled by NVRTC through CuPy) and the host harness
// (tests/kernel_host_harness.cpp, compiled by g++), which the tests compare bit for bit
// against NumPy / ml_dtypes. The Python twin is gpuload/backend/host.py.
//
// The contract (gpuload/plan/copies.py, BoxCopy): element i (a multi-index, row-major,
// last axis fastest) is read at byte  src_offset + SRC_SIZE * sum(i[k] * src_strides[k])
// of the staged chunk and written to element  dst_offset + sum(i[k] * dst_strides[k])
// of the destination, converted from the source dtype to the destination dtype.
//
// Alignment: the staging buffer base is 256-byte aligned on the GPU (CuPy allocations are)
// and src_offset is normally a multiple of the source itemsize, so element loads are
// naturally aligned. Nothing here *requires* it: alignment is checked once per descriptor
// (it is uniform, since every stride is a whole number of elements) and a misaligned
// descriptor takes a byte-wise load/store path. Destinations are checked the same way.
//
// No #include: NVRTC compiles this without the C++ standard library.

#ifndef GPULOAD_BOX_COPY_CUH
#define GPULOAD_BOX_COPY_CUH

#if defined(__CUDACC__)
#define GPULOAD_HD __host__ __device__ __forceinline__
#define GPULOAD_UNROLL _Pragma("unroll")
#else
#define GPULOAD_HD inline
#define GPULOAD_UNROLL
#endif

// Compile-time constants. gpuload/backend/kernels.py passes each one as -D so that the
// Python side (descriptor layout, launch geometry) and the kernels always agree.
#ifndef GPULOAD_MAX_RANK
#define GPULOAD_MAX_RANK 8
#endif
#ifndef GPULOAD_ITEMS_PER_THREAD
#define GPULOAD_ITEMS_PER_THREAD 2
#endif

typedef unsigned char gl_u8;
typedef unsigned short gl_u16;
typedef unsigned int gl_u32;
typedef unsigned long long gl_u64;
typedef long long gl_i64;

// A 16-byte element or vector. alignas(16) lets nvcc emit one 128-bit load/store.
struct alignas(16) gl_u128 {
    gl_u64 lo;
    gl_u64 hi;
};

// One BoxCopy, ready for a kernel. Layout mirrored by gpuload.backend.contract.DESC_DTYPE
// (tests parse this struct and check gpuload_harness_desc_layout). Axis rank-1 is the
// fastest-varying one.
struct gpuload_box_desc {
    gl_i64 rank;        // 1 .. GPULOAD_MAX_RANK
    gl_i64 count;       // prod(shape): elements to copy
    gl_i64 src_offset;  // bytes from the source base to element 0
    gl_i64 dst_offset;  // destination elements from dst to element 0
    gl_u64 dst;         // address of the destination buffer's element 0
    gl_i64 shape[GPULOAD_MAX_RANK];
    gl_i64 src_strides[GPULOAD_MAX_RANK];  // in source elements
    gl_i64 dst_strides[GPULOAD_MAX_RANK];  // in destination elements
};

// ---------------------------------------------------------------------------------------
// Index arithmetic
// ---------------------------------------------------------------------------------------

// Decompose `idx` over axes [0, naxes) (row-major) and accumulate the element offsets.
// I is 32-bit when the descriptor's item count allows it: 64-bit division is emulated on
// the GPU and costs several times more than the 32-bit one.
template <class I>
GPULOAD_HD void gl_decode(const gpuload_box_desc& d, int naxes, I idx, gl_i64& src_elem,
                          gl_i64& dst_elem) {
    for (int k = naxes - 1; k > 0; --k) {
        const I extent = (I)d.shape[k];
        const I q = idx / extent;
        const I i = idx - q * extent;
        src_elem += (gl_i64)i * d.src_strides[k];
        dst_elem += (gl_i64)i * d.dst_strides[k];
        idx = q;
    }
    if (naxes > 0) {
        src_elem += (gl_i64)idx * d.src_strides[0];
        dst_elem += (gl_i64)idx * d.dst_strides[0];
    }
}

// The contract itself: linear element index -> (source byte offset, destination element
// offset), both relative to the buffers' bases.
GPULOAD_HD void gpuload_box_map(const gpuload_box_desc& d, gl_i64 src_itemsize, gl_u64 idx,
                                gl_i64& src_byte, gl_i64& dst_elem) {
    gl_i64 s = 0, t = 0;
    gl_decode<gl_u64>(d, (int)d.rank, idx, s, t);
    src_byte = d.src_offset + s * src_itemsize;
    dst_elem = d.dst_offset + t;
}

// ---------------------------------------------------------------------------------------
// Conversions, on bit patterns only
// ---------------------------------------------------------------------------------------
// CuPy compiles with -ftz=true, which flushes float subnormals to zero in arithmetic and
// in cvt.f32.f64 / cvt.f64.f32; the GPU's cvt also canonicalises NaNs. Both would break
// bit-exactness with NumPy, so every conversion is integer arithmetic on the bits.

template <int E, int M>
struct gl_fmt {
    static const int ebits = E;
    static const int mbits = M;
};
typedef gl_fmt<11, 52> gl_fmt_f64;
typedef gl_fmt<8, 23> gl_fmt_f32;
typedef gl_fmt<5, 10> gl_fmt_f16;
typedef gl_fmt<8, 7> gl_fmt_bf16;

GPULOAD_HD int gl_clz64(gl_u64 x) {
#if defined(__CUDA_ARCH__)
    return __clzll((long long)x);
#else
    return __builtin_clzll(x);
#endif
}

// What a NaN becomes. Each rule is what the NumPy / ml_dtypes cast does on x86-64:
enum {
    // sign | all-ones exponent | quiet bit; payload dropped (ml_dtypes/Eigen: -> bfloat16,
    // and bfloat16 -> float16).
    GL_NAN_CANONICAL = 0,
    // payload kept (top bits), quiet bit set (SSE cvtss2sd / cvtsd2ss: f32 <-> f64).
    GL_NAN_QUIET = 1,
    // payload kept (top bits), no quiet bit forced; if the kept payload is 0 it becomes 1
    // so the result stays a NaN (NumPy's npy_floatbits_to_halfbits and friends).
    GL_NAN_KEEP = 2,
};

// Move a mantissa from S::mbits to D::mbits bits (truncate or widen).
template <class S, class D>
GPULOAD_HD gl_u64 gl_rescale_payload(gl_u64 man) {
    if (S::mbits >= D::mbits) {
        return man >> (S::mbits >= D::mbits ? S::mbits - D::mbits : 0);
    }
    return man << (S::mbits < D::mbits ? D::mbits - S::mbits : 0);
}

// IEEE binary format S -> D, round to nearest even, subnormals kept, overflow to inf,
// NaN per RULE. Exact when D is wider.
template <class S, class D, int RULE>
GPULOAD_HD gl_u64 gl_float_convert(gl_u64 bits) {
    const int SBIAS = (1 << (S::ebits - 1)) - 1;
    const int DBIAS = (1 << (D::ebits - 1)) - 1;
    const int SMAX = (1 << S::ebits) - 1;
    const int DMAX = (1 << D::ebits) - 1;
    const gl_u64 dsign = ((bits >> (S::ebits + S::mbits)) & 1ull) << (D::ebits + D::mbits);
    const gl_u64 dinf = (gl_u64)DMAX << D::mbits;
    const int exp = (int)((bits >> S::mbits) & (gl_u64)SMAX);
    gl_u64 man = bits & ((1ull << S::mbits) - 1ull);

    if (exp == SMAX) {
        if (man == 0) return dsign | dinf;
        const gl_u64 quiet = 1ull << (D::mbits - 1);
        const gl_u64 payload = gl_rescale_payload<S, D>(man);
        if (RULE == GL_NAN_CANONICAL) return dsign | dinf | quiet;
        if (RULE == GL_NAN_QUIET) return dsign | dinf | quiet | payload;
        return dsign | dinf | (payload != 0 ? payload : 1ull);
    }
    if (exp == 0 && man == 0) return dsign;

    // Normalise: man in [2^S::mbits, 2^(S::mbits+1)), value = man * 2^(e - S::mbits).
    int e;
    if (exp == 0) {
        const int lz = gl_clz64(man) - (63 - S::mbits);
        man <<= lz;
        e = 1 - SBIAS - lz;
    } else {
        man |= 1ull << S::mbits;
        e = exp - SBIAS;
    }
    const int de = e + DBIAS;  // biased destination exponent, if the result is normal
    if (de >= DMAX) return dsign | dinf;

    int shift = S::mbits - D::mbits;
    if (de < 1) shift += 1 - de;  // subnormal result: drop as many more bits
    gl_u64 r;
    if (shift <= 0) {
        r = man << (-shift);  // widening: exact
    } else if (shift >= S::mbits + 2) {
        r = 0;  // below half the smallest subnormal (strictly): rounds to zero
    } else {
        r = man >> shift;
        const gl_u64 rem = man & ((1ull << shift) - 1ull);
        const gl_u64 half = 1ull << (shift - 1);
        if (rem > half || (rem == half && (r & 1ull))) ++r;
    }
    // Subnormal: r <= 2^D::mbits, and r == 2^D::mbits is exactly the smallest normal.
    if (de < 1) return dsign | r;
    // Normal: r carries the hidden bit, so a rounding carry moves into the exponent
    // (and from the largest finite value on to inf).
    return dsign | (((gl_u64)(de - 1) << D::mbits) + r);
}

// A conversion: src_t / dst_t are the storage types (bits), apply() maps bits to bits.
template <class SrcT, class DstT, class S, class D, int RULE>
struct gl_conv_float {
    typedef SrcT src_t;
    typedef DstT dst_t;
    static const bool identity = false;
    static GPULOAD_HD dst_t apply(src_t x) {
        return (dst_t)gl_float_convert<S, D, RULE>((gl_u64)x);
    }
};

// float64 -> bfloat16 / float16 as TensorFlow's Cast does it: Eigen's bfloat16(T) and
// half(T) constructors take static_cast<float>(x) first, so the value is rounded twice,
// to float32 and then to 16 bits (1 + 2^-8 + 2^-40 -> bfloat16 1.0, where one rounding
// gives 1 + 2^-7). D and RULE are the second step's; the first is f64 -> f32.
template <class D, int RULE>
struct gl_conv_f64_via_f32 {
    typedef gl_u64 src_t;
    typedef gl_u16 dst_t;
    static const bool identity = false;
    static GPULOAD_HD dst_t apply(src_t x) {
        const gl_u64 f = gl_float_convert<gl_fmt_f64, gl_fmt_f32, GL_NAN_QUIET>(x);
        return (dst_t)gl_float_convert<gl_fmt_f32, D, RULE>(f);
    }
};

// Same dtype: raw bits of the itemsize (bool, ints, floats, complex alike).
template <class T>
struct gl_conv_copy {
    typedef T src_t;
    typedef T dst_t;
    static const bool identity = true;
    static GPULOAD_HD dst_t apply(src_t x) { return x; }
};

typedef gl_conv_copy<gl_u8> gl_conv_b1_b1;
typedef gl_conv_copy<gl_u16> gl_conv_b2_b2;
typedef gl_conv_copy<gl_u32> gl_conv_b4_b4;
typedef gl_conv_copy<gl_u64> gl_conv_b8_b8;
typedef gl_conv_copy<gl_u128> gl_conv_b16_b16;
typedef gl_conv_float<gl_u32, gl_u16, gl_fmt_f32, gl_fmt_bf16, GL_NAN_CANONICAL> gl_conv_f32_bf16;
typedef gl_conv_float<gl_u16, gl_u32, gl_fmt_bf16, gl_fmt_f32, GL_NAN_KEEP> gl_conv_bf16_f32;
typedef gl_conv_float<gl_u32, gl_u16, gl_fmt_f32, gl_fmt_f16, GL_NAN_KEEP> gl_conv_f32_f16;
typedef gl_conv_float<gl_u16, gl_u32, gl_fmt_f16, gl_fmt_f32, GL_NAN_KEEP> gl_conv_f16_f32;
typedef gl_conv_float<gl_u16, gl_u16, gl_fmt_bf16, gl_fmt_f16, GL_NAN_CANONICAL> gl_conv_bf16_f16;
typedef gl_conv_float<gl_u16, gl_u16, gl_fmt_f16, gl_fmt_bf16, GL_NAN_CANONICAL> gl_conv_f16_bf16;
typedef gl_conv_float<gl_u64, gl_u32, gl_fmt_f64, gl_fmt_f32, GL_NAN_QUIET> gl_conv_f64_f32;
typedef gl_conv_float<gl_u32, gl_u64, gl_fmt_f32, gl_fmt_f64, GL_NAN_QUIET> gl_conv_f32_f64;
typedef gl_conv_f64_via_f32<gl_fmt_bf16, GL_NAN_CANONICAL> gl_conv_f64_bf16;
typedef gl_conv_f64_via_f32<gl_fmt_f16, GL_NAN_KEEP> gl_conv_f64_f16;
typedef gl_conv_float<gl_u16, gl_u64, gl_fmt_bf16, gl_fmt_f64, GL_NAN_QUIET> gl_conv_bf16_f64;
typedef gl_conv_float<gl_u16, gl_u64, gl_fmt_f16, gl_fmt_f64, GL_NAN_KEEP> gl_conv_f16_f64;

// Every variant: X(name, conversion). box_copy.cu defines gpuload_box_copy_<name> for
// each, the host harness dispatches on the same list, and the cast table of
// gpuload/backend/contract.py must name exactly these, in this order (a test checks it).
#define GPULOAD_BOX_COPY_VARIANTS(X) \
    X(b1_b1, gl_conv_b1_b1)          \
    X(b2_b2, gl_conv_b2_b2)          \
    X(b4_b4, gl_conv_b4_b4)          \
    X(b8_b8, gl_conv_b8_b8)          \
    X(b16_b16, gl_conv_b16_b16)      \
    X(f32_bf16, gl_conv_f32_bf16)    \
    X(bf16_f32, gl_conv_bf16_f32)    \
    X(f32_f16, gl_conv_f32_f16)      \
    X(f16_f32, gl_conv_f16_f32)      \
    X(bf16_f16, gl_conv_bf16_f16)    \
    X(f16_bf16, gl_conv_f16_bf16)    \
    X(f64_f32, gl_conv_f64_f32)      \
    X(f32_f64, gl_conv_f32_f64)      \
    X(f64_bf16, gl_conv_f64_bf16)    \
    X(f64_f16, gl_conv_f64_f16)      \
    X(bf16_f64, gl_conv_bf16_f64)    \
    X(f16_f64, gl_conv_f16_f64)

// ---------------------------------------------------------------------------------------
// Loads and stores
// ---------------------------------------------------------------------------------------

// Byte-wise access for a misaligned descriptor (the "memcpy" path). Little-endian, like
// both the host and the GPU.
template <class T>
GPULOAD_HD T gl_load(const gl_u8* p, bool aligned) {
    if (aligned) return *(const T*)p;
    T v;
    gl_u8* b = (gl_u8*)&v;
    for (int i = 0; i < (int)sizeof(T); ++i) b[i] = p[i];
    return v;
}

template <class T>
GPULOAD_HD void gl_store(gl_u8* p, T v, bool aligned) {
    if (aligned) {
        *(T*)p = v;
        return;
    }
    const gl_u8* b = (const gl_u8*)&v;
    for (int i = 0; i < (int)sizeof(T); ++i) p[i] = b[i];
}

// ---------------------------------------------------------------------------------------
// Per-descriptor plan and the per-thread loop (shared by the kernel and the harness)
// ---------------------------------------------------------------------------------------

struct gl_plan {
    gl_i64 items;      // work items of this descriptor
    gl_i64 row_items;  // vector path: work items per row (head + body + tail)
    gl_i64 head;       // vector path: elements before the row's first 16-byte boundary
    gl_i64 body;       // vector path: 16-byte vectors per row
    int vec;           // 1: rows move as 16-byte vectors (identity copies only)
    int aligned;       // 0: byte-wise loads and stores (misaligned source or destination)
};

// Minimum row length for the vector path: shorter rows gain nothing from 16-byte moves
// but pay for splitting every row into head, body and tail.
#ifndef GPULOAD_VEC_MIN_ROW_BYTES
#define GPULOAD_VEC_MIN_ROW_BYTES 32
#endif

template <class C>
GPULOAD_HD gl_plan gl_make_plan(const gpuload_box_desc& d, const gl_u8* src) {
    const gl_i64 SS = (gl_i64)sizeof(typename C::src_t);
    const gl_i64 DS = (gl_i64)sizeof(typename C::dst_t);
    gl_plan p;
    p.items = d.count;
    p.row_items = 0;
    p.head = 0;
    p.body = 0;
    p.vec = 0;
    // Every element address is src0 + SS * (integer), so one check covers the descriptor.
    const gl_u64 src0 = (gl_u64)src + (gl_u64)d.src_offset;
    const gl_u64 dst0 = d.dst + (gl_u64)(d.dst_offset * DS);
    p.aligned = (src0 % (gl_u64)SS == 0) && (dst0 % (gl_u64)DS == 0);
    if (!C::identity || !p.aligned || d.count <= 0) return p;

    // Vector path: innermost axis dense on both sides, source and destination congruent
    // mod 16, and every outer step a multiple of 16 bytes, so all rows split the same way.
    const int last = (int)d.rank - 1;
    bool ok = d.src_strides[last] == 1 && d.dst_strides[last] == 1 && ((src0 ^ dst0) & 15) == 0;
    for (int k = 0; k < last; ++k) {
        ok = ok && ((d.src_strides[k] * SS) & 15) == 0 && ((d.dst_strides[k] * SS) & 15) == 0;
    }
    const gl_i64 row_len = d.shape[last];
    if (!ok || row_len * SS < GPULOAD_VEC_MIN_ROW_BYTES) return p;
    p.head = (gl_i64)((16 - (src0 & 15)) & 15) / SS;
    p.body = (row_len - p.head) * SS / 16;
    const gl_i64 tail = row_len - p.head - p.body * (16 / SS);
    p.row_items = p.head + p.body + tail;
    p.items = (d.count / row_len) * p.row_items;
    p.vec = 1;
    return p;
}

// Vector path: one item is a head element, a 16-byte vector, or a tail element of a row.
template <class C, class I>
GPULOAD_HD void gl_vector_item(const gpuload_box_desc& d, const gl_plan& p, const gl_u8* src,
                               I it) {
    typedef typename C::src_t T;
    const gl_i64 S = (gl_i64)sizeof(T);
    const I row = it / (I)p.row_items;
    const gl_i64 j = (gl_i64)(it - row * (I)p.row_items);
    gl_i64 so = 0, dof = 0;
    gl_decode<I>(d, (int)d.rank - 1, row, so, dof);
    const gl_u8* s = src + d.src_offset + so * S;
    gl_u8* t = (gl_u8*)d.dst + (d.dst_offset + dof) * S;
    if (j < p.head) {
        *(T*)(t + j * S) = *(const T*)(s + j * S);
    } else if (j < p.head + p.body) {
        const gl_i64 off = p.head * S + (j - p.head) * 16;
        *(gl_u128*)(t + off) = *(const gl_u128*)(s + off);
    } else {
        const gl_i64 e = p.head + p.body * (16 / S) + (j - p.head - p.body);
        *(T*)(t + e * S) = *(const T*)(s + e * S);
    }
}

// The loop one thread runs over one descriptor: thread `tid` of block `bid` out of
// `nblocks` blocks of `nthreads`. Items tid, tid + nthreads, ... (U of them) per step keep
// each warp's accesses coalesced; on the element path all U loads are issued before any
// store, so each thread has U independent loads in flight.
template <class C, class I>
GPULOAD_HD void gl_thread_items(const gpuload_box_desc& d, const gl_plan& p, const gl_u8* src,
                                I bid, I nblocks, I tid, I nthreads) {
    typedef typename C::src_t ST;
    typedef typename C::dst_t DT;
    const int U = GPULOAD_ITEMS_PER_THREAD;
    const I items = (I)p.items;
    const I step = nblocks * nthreads * (I)U;
    for (I base = bid * nthreads * (I)U + tid; base < items; base += step) {
        if (C::identity && p.vec) {  // constant-false for conversions: no vector code emitted
            GPULOAD_UNROLL
            for (int u = 0; u < U; ++u) {
                const I it = base + (I)u * nthreads;
                if (it < items) gl_vector_item<C, I>(d, p, src, it);
            }
            continue;
        }
        ST v[U];
        gl_u8* out[U];
        GPULOAD_UNROLL
        for (int u = 0; u < U; ++u) {
            const I it = base + (I)u * nthreads;
            out[u] = 0;
            if (it < items) {
                gl_i64 so = 0, dof = 0;
                gl_decode<I>(d, (int)d.rank, it, so, dof);
                v[u] = gl_load<ST>(src + d.src_offset + so * (gl_i64)sizeof(ST), p.aligned);
                out[u] = (gl_u8*)d.dst + (d.dst_offset + dof) * (gl_i64)sizeof(DT);
            }
        }
        GPULOAD_UNROLL
        for (int u = 0; u < U; ++u) {
            if (out[u]) gl_store<DT>(out[u], C::apply(v[u]), p.aligned);
        }
    }
}

// Largest item count for which the 32-bit loop cannot overflow: base + step stays below
// 2^32 as long as items and the total thread count are each below 2^31.
#define GPULOAD_MAX_ITEMS_32 0x7fffffffLL

#endif  // GPULOAD_BOX_COPY_CUH

/* dsi-mpi's CPU kernels for the packed backend (dsi_mpi/backends/native.py builds and loads them).

   Why: a verification of n tokens must cost about what one token costs. These products stream every weight
   row once for all n input rows (a row block of the weights stays in L1 while every input row uses it), so
   their cost is the weights' bytes over the memory bandwidth until the n rows' multiply-adds take longer than
   the stream (about 5 rows for SmolLM2-135M on an Ice Lake core; fewer for a model that sits in cache). Each
   output is summed in the same order whatever n is (one vector lane per output, over the inputs in order), so
   a token's outputs are the same bit for bit in a one-token forward and in an n-token verification: the packed
   backend's verifications see exactly what plain decoding sees ("batch invariance").

   Weights are fp32 or bf16 (bf16 is widened to fp32 in registers: no native bf16 instructions are needed, and
   the bytes streamed are halved), or, for a quantized drafter, int8 with a scale per output (a quarter of
   fp32's bytes) or int4 with a scale per output and GROUP inputs (an eighth, plus the scales); inputs, outputs and all arithmetic are fp32. Written with GCC/Clang vector
   extensions, compiled with -march=native on the node that runs it: AVX-512 gives one register per vector,
   AVX2 two, other CPUs what they have. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
typedef uint16_t h16 __attribute__((vector_size(32)));
typedef uint32_t u16 __attribute__((vector_size(64)));

#define LANES 16
#ifndef LOCALITY
#define LOCALITY 3
#endif
#ifndef PREFETCH
#define PREFETCH 8192 /* bytes ahead in the packed weight stream; every cache line is prefetched (an Ice Lake core:
                          8 KB ahead streamed a 5M-parameter model's bf16 weights in 0.42 ms, 2 KB in 0.68) */
#endif

static inline v16 load_f32(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

typedef int32_t i16 __attribute__((vector_size(64)));

/* e^x for 16 floats: 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in two parts, so r is exact to
   float precision), e^r (|r| <= ln(2)/2) by its degree-7 Taylor polynomial; x clamped to the floats' range. */
static inline v16 select16(i16 mask, v16 a, v16 b) { /* a where mask, else b */
    i16 ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    i16 r = (ai & mask) | (bi & ~mask);
    v16 out; memcpy(&out, &r, sizeof out); return out;
}

static inline v16 exp16(v16 x) {
    const v16 zero = {0}, lo = zero - 87.3f, hi = zero + 88.7f;
    x = select16(x < lo, lo, x);
    x = select16(x > hi, hi, x);
    v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest (1.5 * 2^23) */
    v16 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    v16 p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
    v16 scale; memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* e^a[t] in place for t < count, 16 at a time (the last chunk through a padded copy): each element's value
   depends on itself only. */
static void exp_inplace(float *a, int count) {
    int t = 0;
    for (; t + LANES <= count; t += LANES) {
        v16 v = exp16(load_f32(a + t));
        memcpy(a + t, &v, sizeof v);
    }
    if (t < count) {
        float tail[LANES] = {0};
        memcpy(tail, a + t, sizeof(float) * (count - t));
        v16 v = exp16(load_f32(tail));
        memcpy(a + t, &v, sizeof(float) * (count - t));
    }
}

typedef int8_t c16 __attribute__((vector_size(16)));

#ifdef __AVX512F__
#include <immintrin.h>
static inline v16 load_i8(const int8_t *p) { /* GCC scalarizes the vector extensions' int8 -> float conversion */
    __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    v16 v; memcpy(&v, &f, sizeof v); return v;
}
#else
static inline v16 load_i8(const int8_t *p) {
    c16 c; memcpy(&c, p, sizeof c);
    return __builtin_convertvector(__builtin_convertvector(c, i16), v16);
}
#endif

static inline v16 load_bf16(const uint16_t *p) {
    h16 h; memcpy(&h, p, sizeof h);
    u16 u = __builtin_convertvector(h, u16) << 16;
    v16 v; memcpy(&v, &u, sizeof v); return v;
}

static inline float hsum(v16 a) { /* a fixed tree: the same order for every output */
    v8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* The weights are packed at load (dsi_mpi/backends/packed_linear.py, `pack_rows`) into blocks of NB outputs (rows
   of w), each block stored input by input: for each k, the block's NB weights side by side ([block][k][output]),
   K padded with zeros to a whole step (2 for bf16, whose pairs k, k + 1 sit side by side in each 32-bit lane:
   [block][k / 2][output][2], one integer operation widens each) and N to a multiple of NB. A pass over the
   weights is one sequential stream, which the hardware prefetcher follows at full speed. Up to ROWS input rows
   share each pass; an input is broadcast to all lanes and each lane sums one output over k in order, so an
   output's sum is the same whatever the rows (batch invariant) and no sum is ever reduced across lanes. */
#ifndef VECS
#define VECS 4 /* vectors of outputs per block: NB = 64 outputs, ROWS x VECS accumulators in registers */
#endif
#define NB (VECS * LANES)

static inline v16 as_float(u16 u) { v16 v; memcpy(&v, &u, sizeof v); return v; }
static inline u16 load_u32(const uint16_t *p) { u16 u; memcpy(&u, p, sizeof u); return u; }
static const u16 HIGH = {0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u,
                         0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u,
                         0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u, 0xFFFF0000u};
#ifdef __AVX512F__
#include <immintrin.h>
static inline v16 broadcast(const float *p) { /* from memory: a load, not a shuffle */
    __m512 b = _mm512_broadcastss_ps(_mm_load_ss(p)); v16 v; memcpy(&v, &b, sizeof v); return v;
}
#else
static inline v16 broadcast(const float *p) { return (v16){0} + *p; }
#endif
/* vector v of the block's outputs at step s of a k step starting at p */
#define WIDEN_float(p, v, s) load_f32((p) + (v) * LANES)
#define WIDEN_int8_t(p, v, s) load_i8((p) + (v) * LANES)
#define WIDEN_uint16_t(p, v, s) as_float((s) ? load_u32((p) + (v) * 2 * LANES) & HIGH : load_u32((p) + (v) * 2 * LANES) << 16)
#define STEP_float 1
#define STEP_int8_t 1
#define STEP_uint16_t 2

#define BLOCK(ROWS, WT)                                                                                    \
    static void block_##ROWS##_##WT(const float *x, int K, const WT *w, const float *scale,                \
                                    const float *bias, float *y, int N, int n0) {                          \
        v16 acc[ROWS][VECS];                                                                               \
        memset(acc, 0, sizeof acc);                                                                        \
        const WT *p = w + (size_t)n0 * K;                                                                  \
        for (int k = 0; k < K; k += STEP_##WT, p += NB * STEP_##WT) {                                      \
            for (int b = 0; b < (int)(NB * STEP_##WT * sizeof(WT)); b += 64)                               \
                __builtin_prefetch((const char *)p + PREFETCH + b, 0, LOCALITY);                           \
            for (int s = 0; s < STEP_##WT; s++) {                                                          \
                v16 wv[VECS];                                                                              \
                for (int v = 0; v < VECS; v++) wv[v] = WIDEN_##WT(p, v, s);                                \
                for (int r = 0; r < ROWS; r++) {                                                           \
                    v16 xb = broadcast(x + (size_t)r * K + k + s);                                         \
                    for (int v = 0; v < VECS; v++) acc[r][v] += xb * wv[v];                                \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        store_block(&acc[0][0], ROWS, scale, bias, y, N, n0);                                              \
    }

/* y's rows get the block's outputs n0.. (times the scale, plus the bias), the last block's padding left out. */
static inline void store_block(const v16 *acc, int rows, const float *scale, const float *bias, float *y, int N,
                               int n0) {
    int nb = N - n0 < NB ? N - n0 : NB;
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < VECS && v * LANES < nb; v++) {
            float out[LANES];
            memcpy(out, &acc[r * VECS + v], sizeof out);
            int count = nb - v * LANES < LANES ? nb - v * LANES : LANES, n = n0 + v * LANES;
            for (int j = 0; j < count; j++) {
                float s = scale ? out[j] * scale[n + j] : out[j];
                y[(size_t)r * N + n + j] = bias ? s + bias[n + j] : s;
            }
        }
}

/* int4 weights (a quantized drafter, dsi_mpi/backends/quantize.py): q + 8 in a nibble, inputs k and k + 1 of an
   output in one byte (low, high), [block][k / 2][output]; one fp32 scale per output and GROUP inputs,
   [block][k / GROUP][output]. Each group's sum of x q is made apart, in order (q from a 16-entry table: one
   permute per vector of nibbles, no conversion), then times s it joins the output's sum. */
#define GROUP 32
#ifdef __AVX512F__
static inline void nibbles(const uint8_t *p, v16 *lo, v16 *hi) { /* q of inputs k and k + 1: a table lookup */
    const __m512 table = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    __m512i u = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); /* a permute reads 4 bits of each */
    __m512 l = _mm512_permutexvar_ps(u, table), h = _mm512_permutexvar_ps(_mm512_srli_epi32(u, 4), table);
    memcpy(lo, &l, sizeof l), memcpy(hi, &h, sizeof h);
}
#else
typedef uint8_t b16 __attribute__((vector_size(16)));
static inline void nibbles(const uint8_t *p, v16 *lo, v16 *hi) { /* the same values, converted */
    b16 b; memcpy(&b, p, sizeof b);
    i16 u = __builtin_convertvector(b, i16);
    *lo = __builtin_convertvector(u & 15, v16) - 8.0f, *hi = __builtin_convertvector(u >> 4, v16) - 8.0f;
}
#endif
#define BLOCK_I4(ROWS)                                                                                     \
    static void block_##ROWS##_uint8_t(const float *x, int K, const uint8_t *w, const float *scale,        \
                                       const float *bias, float *y, int N, int n0) {                       \
        v16 acc[ROWS][VECS];                                                                               \
        memset(acc, 0, sizeof acc);                                                                        \
        const uint8_t *p = w + (size_t)n0 * (K / 2);                                                       \
        const float *sc = scale + (size_t)n0 * (K / GROUP);                                                \
        for (int g = 0; g < K; g += GROUP, sc += NB) {                                                     \
            v16 part[ROWS][VECS];                                                                          \
            memset(part, 0, sizeof part);                                                                  \
            for (int k = g; k < g + GROUP; k += 2, p += NB) {                                              \
                __builtin_prefetch((const char *)p + PREFETCH, 0, LOCALITY);                               \
                v16 lo[VECS], hi[VECS];                                                                    \
                for (int v = 0; v < VECS; v++) nibbles(p + v * LANES, &lo[v], &hi[v]);                     \
                for (int r = 0; r < ROWS; r++) {                                                           \
                    v16 x0 = broadcast(x + (size_t)r * K + k), x1 = broadcast(x + (size_t)r * K + k + 1);  \
                    for (int v = 0; v < VECS; v++) part[r][v] += x0 * lo[v];                               \
                    for (int v = 0; v < VECS; v++) part[r][v] += x1 * hi[v];                               \
                }                                                                                          \
            }                                                                                              \
            for (int v = 0; v < VECS; v++) {                                                               \
                v16 s = load_f32(sc + v * LANES);                                                          \
                for (int r = 0; r < ROWS; r++) acc[r][v] += part[r][v] * s;                                \
            }                                                                                              \
        }                                                                                                  \
        store_block(&acc[0][0], ROWS, NULL, bias, y, N, n0);                                               \
    }

#define BLOCKS(WT) BLOCK(1, WT) BLOCK(2, WT) BLOCK(3, WT) BLOCK(4, WT) BLOCK(5, WT) BLOCK(6, WT)
BLOCKS(float)
BLOCKS(int8_t)
BLOCKS(uint16_t)
BLOCK_I4(1) BLOCK_I4(2) BLOCK_I4(3) BLOCK_I4(4) BLOCK_I4(5) BLOCK_I4(6)

#ifndef ROWS
#define ROWS 6 /* input rows per pass over a block of weights (6 x VECS accumulators stay in 32 registers) */
#endif

/* y (M x N) = x (M x K) w^T (times a scale per row of w, int8; per row and GROUP inputs, int4) (+ bias), w
   packed as above; K a whole number of steps (even for bf16, GROUP for int4; the caller pads x). */
#define LINEAR(NAME, WT)                                                                                   \
    static void NAME##_scaled(const float *x, int M, int K, const WT *w, int N, const float *scale,        \
                              const float *bias, float *y) {                                               \
        for (int n0 = 0; n0 < N; n0 += NB)                                                                 \
            for (int m0 = 0; m0 < M; m0 += ROWS) {                                                         \
                const float *xm = x + (size_t)m0 * K;                                                      \
                float *ym = y + (size_t)m0 * N;                                                            \
                switch (M - m0 < ROWS ? M - m0 : ROWS) {                                                   \
                case 6: block_6_##WT(xm, K, w, scale, bias, ym, N, n0); break;                             \
                case 5: block_5_##WT(xm, K, w, scale, bias, ym, N, n0); break;                             \
                case 4: block_4_##WT(xm, K, w, scale, bias, ym, N, n0); break;                             \
                case 3: block_3_##WT(xm, K, w, scale, bias, ym, N, n0); break;                             \
                case 2: block_2_##WT(xm, K, w, scale, bias, ym, N, n0); break;                             \
                default: block_1_##WT(xm, K, w, scale, bias, ym, N, n0);                                   \
                }                                                                                          \
            }                                                                                              \
    }

LINEAR(linear_f32, float)
LINEAR(linear_bf16, uint16_t)
LINEAR(linear_i8, int8_t)
LINEAR(linear_i4, uint8_t)

void dsi_linear_f32(const float *x, int M, int K, const float *w, int N, const float *bias, float *y) {
    linear_f32_scaled(x, M, K, w, N, NULL, bias, y);
}
void dsi_linear_bf16(const float *x, int M, int K, const uint16_t *w, int N, const float *bias, float *y) {
    linear_bf16_scaled(x, M, K, w, N, NULL, bias, y);
}
/* int8 weights with one fp32 scale per row of w (a quantized drafter: dsi_mpi/backends/quantize.py). */
void dsi_linear_i8(const float *x, int M, int K, const int8_t *w, int N, const float *scale, const float *bias,
                   float *y) {
    linear_i8_scaled(x, M, K, w, N, scale, bias, y);
}

/* int4 weights packed as above, a scale per output and GROUP inputs; K a multiple of GROUP. */
void dsi_linear_i4(const float *x, int M, int K, const uint8_t *w, int N, const float *scale, const float *bias,
                   float *y) {
    linear_i4_scaled(x, M, K, w, N, scale, bias, y);
}

/* Returns NB, the outputs per block the weights must be packed in. */
int dsi_linear_block_rows(void) { return NB; }

static inline float dot(const float *a, const float *b, int d) {
    v16 acc = {0};
    int t = 0;
    for (; t + LANES <= d; t += LANES) acc += load_f32(a + t) * load_f32(b + t);
    float s = hsum(acc);
    for (; t < d; t++) s += a[t] * b[t];
    return s;
}

/* One query row of one head over keys and values 0..visible-1, head_dim C * 16: the query and the output's
   partial sums live in registers. Scores go four keys at a time (independent sums, then the fixed tree of
   hsum); the values are weighed by e^(score - max) into two sets of sums (even and odd keys, added at the end)
   and divided by the total once. Every step depends only on this row: the same result whatever n is. */
#define ATTEND(C)                                                                                          \
    static void attend_##C(const float *qh, const float *kh, const float *vh, int visible, float scale,    \
                           float *scores, float *o) {                                                      \
        const v16 zero = {0};                                                                              \
        v16 q[C], even[C], odd[C];                                                                         \
        for (int c = 0; c < C; c++) q[c] = load_f32(qh + c * LANES), even[c] = odd[c] = zero;              \
        float top = -INFINITY;                                                                             \
        int j = 0;                                                                                         \
        for (; j + 4 <= visible; j += 4) {                                                                 \
            v16 a[4];                                                                                      \
            for (int u = 0; u < 4; u++) {                                                                  \
                a[u] = q[0] * load_f32(kh + (size_t)(j + u) * C * LANES);                                  \
                for (int c = 1; c < C; c++) a[u] += q[c] * load_f32(kh + ((size_t)(j + u) * C + c) * LANES); \
            }                                                                                              \
            for (int u = 0; u < 4; u++) {                                                                  \
                scores[j + u] = hsum(a[u]) * scale;                                                        \
                top = scores[j + u] > top ? scores[j + u] : top;                                           \
            }                                                                                              \
        }                                                                                                  \
        for (; j < visible; j++) {                                                                         \
            v16 a = q[0] * load_f32(kh + (size_t)j * C * LANES);                                           \
            for (int c = 1; c < C; c++) a += q[c] * load_f32(kh + ((size_t)j * C + c) * LANES);            \
            scores[j] = hsum(a) * scale;                                                                   \
            top = scores[j] > top ? scores[j] : top;                                                       \
        }                                                                                                  \
        for (j = 0; j < visible; j++) scores[j] -= top;                                                    \
        exp_inplace(scores, visible);                                                                      \
        float total = 0.0f;                                                                                \
        for (j = 0; j < visible; j++) total += scores[j];                                                  \
        for (j = 0; j + 2 <= visible; j += 2)                                                              \
            for (int c = 0; c < C; c++) {                                                                  \
                even[c] += scores[j] * load_f32(vh + ((size_t)j * C + c) * LANES);                         \
                odd[c] += scores[j + 1] * load_f32(vh + ((size_t)(j + 1) * C + c) * LANES);                \
            }                                                                                              \
        if (j < visible)                                                                                   \
            for (int c = 0; c < C; c++) even[c] += scores[j] * load_f32(vh + ((size_t)j * C + c) * LANES); \
        for (int c = 0; c < C; c++) {                                                                      \
            v16 out = (even[c] + odd[c]) / total;                                                          \
            memcpy(o + c * LANES, &out, sizeof out);                                                       \
        }                                                                                                  \
    }
ATTEND(1) ATTEND(2) ATTEND(3) ATTEND(4) ATTEND(5) ATTEND(6) ATTEND(7) ATTEND(8)

/* Any other head_dim: one key at a time, through memory. */
static void attend_any(const float *qh, const float *kh, const float *vh, int d, int visible, float scale,
                       float *scores, float *o) {
    float top = -INFINITY;
    for (int j = 0; j < visible; j++) {
        scores[j] = dot(qh, kh + (size_t)j * d, d) * scale;
        top = scores[j] > top ? scores[j] : top;
    }
    for (int j = 0; j < visible; j++) scores[j] -= top;
    exp_inplace(scores, visible);
    float total = 0.0f;
    for (int j = 0; j < visible; j++) total += scores[j];
    for (int t = 0; t < d; t++) o[t] = 0.0f;
    for (int j = 0; j < visible; j++) {
        const float *v = vh + (size_t)j * d;
        float p = scores[j] / total;
        for (int t = 0; t < d; t++) o[t] += p * v[t];
    }
}

/* Causal attention of n queries at positions start..start+n-1 over the cached keys and values 0..position.
   q: n x H x d (contiguous); keys, values: KVH x cap x d per layer (contiguous); out: n x H x d. Query head h
   reads key/value head h / (H / KVH). scores: room for start + n floats. Each query row is computed on its
   own, the same way whatever n is. */
void dsi_attention(const float *q, int n, int H, int KVH, int d, const float *keys, const float *values, int cap,
                   int start, float scale, float *out, float *scores) {
    int group = H / KVH, chunks = d % LANES ? 0 : d / LANES;
    for (int i = 0; i < n; i++) {
        int visible = start + i + 1;
        for (int h = 0; h < H; h++) {
            const float *qh = q + ((size_t)i * H + h) * d;
            const float *kh = keys + (size_t)(h / group) * cap * d;
            const float *vh = values + (size_t)(h / group) * cap * d;
            float *o = out + ((size_t)i * H + h) * d;
            switch (chunks) {
            case 1: attend_1(qh, kh, vh, visible, scale, scores, o); break;
            case 2: attend_2(qh, kh, vh, visible, scale, scores, o); break;
            case 3: attend_3(qh, kh, vh, visible, scale, scores, o); break;
            case 4: attend_4(qh, kh, vh, visible, scale, scores, o); break;
            case 5: attend_5(qh, kh, vh, visible, scale, scores, o); break;
            case 6: attend_6(qh, kh, vh, visible, scale, scores, o); break;
            case 7: attend_7(qh, kh, vh, visible, scale, scores, o); break;
            case 8: attend_8(qh, kh, vh, visible, scale, scores, o); break;
            default: attend_any(qh, kh, vh, d, visible, scale, scores, o);
            }
        }
    }
}

/* x += delta (when delta is not NULL), then out = weight * x / sqrt(mean(x^2) + eps), row by row: Llama's
   RMSNorm after a residual add, in fp32. */
void dsi_add_rms_norm(float *x, const float *delta, int rows, int width, const float *weight, float eps, float *out) {
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * width;
        float *o = out + (size_t)r * width;
        if (delta)
            for (int t = 0; t < width; t++) xr[t] += delta[(size_t)r * width + t];
        float squares = dot(xr, xr, width);
        float scale = 1.0f / sqrtf(squares / (float)width + eps);
        for (int t = 0; t < width; t++) o[t] = weight[t] * (xr[t] * scale);
    }
}

/* One block's query/key/value rows (n x (H + 2 KV) x d): rotate the query and key heads of row i by the
   rotary tables at position start + i (cos, sin: one row of d per position; Llama's rotate-half form), write
   the queries to q_out (n x H x d) and the keys and values into the caches at positions start.. (KV x cap x d). */
void dsi_rope_cache(const float *qkv, int n, int H, int KV, int d, const float *cos_table, const float *sin_table,
                    int start, float *keys, float *values, int cap, float *q_out) {
    int half = d / 2, stride = (H + 2 * KV) * d;
    for (int i = 0; i < n; i++) {
        const float *row = qkv + (size_t)i * stride;
        const float *c = cos_table + (size_t)(start + i) * d, *s = sin_table + (size_t)(start + i) * d;
        for (int h = 0; h < H + KV; h++) {
            const float *in = row + (size_t)h * d;
            float *dst = h < H ? q_out + ((size_t)i * H + h) * d : keys + ((size_t)(h - H) * cap + start + i) * d;
            for (int t = 0; t < half; t++) {
                dst[t] = in[t] * c[t] - in[t + half] * s[t];
                dst[t + half] = in[t + half] * c[t + half] + in[t] * s[t + half];
            }
        }
        for (int g = 0; g < KV; g++)
            memcpy(values + ((size_t)g * cap + start + i) * d, row + (size_t)(H + KV + g) * d, sizeof(float) * d);
    }
}

/* out[r][j] = silu(g) * u for the gate g = gate_up[r][j] and up u = gate_up[r][ffn + j]. */
void dsi_silu_mul(const float *gate_up, int rows, int ffn, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *gate = gate_up + (size_t)r * 2 * ffn, *up = gate + ffn;
        float *o = out + (size_t)r * ffn;
        for (int j = 0; j < ffn; j++) o[j] = -gate[j];
        exp_inplace(o, ffn);
        for (int j = 0; j < ffn; j++) o[j] = gate[j] / (1.0f + o[j]) * up[j];
    }
}

/* One decoder layer in one call (the packed backend's usual path: a call per step from Python cost about
   8 us each, a third of a small model's forward). The same steps in the same order as the packed backend's
   step-by-step path (packed_ops.py), so the same numbers: h (the layer's normed input, n x hidden) and x (the
   residual stream) in, x updated and h = RMSNorm(x) by `after` (the next layer's first norm, or the final one)
   out. Weights: kind 0 fp32, 1 bf16, 2 int8 with a scale per row, 3 int4 with a scale per row and GROUP
   inputs; every product's input width a whole number of its packing's steps (2 for bf16, GROUP for int4), so
   nothing is padded here. work: n * (qkv + 2 * heads * head_dim +
   hidden + 3 * ffn) floats. */
typedef struct {
    int kind, hidden, heads, kv_heads, head_dim, ffn, cap;
    float eps, scale;
    const float *cos_table, *sin_table;
    float *scores, *keys, *values;
    const void *qkv, *o, *gate_up, *down;
    const float *qkv_scale, *o_scale, *gate_up_scale, *down_scale, *qkv_bias, *o_bias, *norm2;
} LayerArgs;

static void linear_kind(int kind, const float *x, int M, int K, const void *w, int N, const float *scale,
                        const float *bias, float *y) {
    if (kind == 1)
        linear_bf16_scaled(x, M, K, (const uint16_t *)w, N, scale, bias, y);
    else if (kind == 2)
        linear_i8_scaled(x, M, K, (const int8_t *)w, N, scale, bias, y);
    else if (kind == 3)
        linear_i4_scaled(x, M, K, (const uint8_t *)w, N, scale, bias, y);
    else
        linear_f32_scaled(x, M, K, (const float *)w, N, scale, bias, y);
}

void dsi_layer(const LayerArgs *a, const float *after, float *x, float *h, int n, int start, float *work) {
    int width = (a->heads + 2 * a->kv_heads) * a->head_dim, hd = a->heads * a->head_dim;
    float *qkv = work, *q = qkv + (size_t)n * width, *att = q + (size_t)n * hd, *delta = att + (size_t)n * hd;
    float *gate_up = delta + (size_t)n * a->hidden, *act = gate_up + (size_t)n * 2 * a->ffn;
    linear_kind(a->kind, h, n, a->hidden, a->qkv, width, a->qkv_scale, a->qkv_bias, qkv);
    dsi_rope_cache(qkv, n, a->heads, a->kv_heads, a->head_dim, a->cos_table, a->sin_table, start, a->keys,
                   a->values, a->cap, q);
    dsi_attention(q, n, a->heads, a->kv_heads, a->head_dim, a->keys, a->values, a->cap, start, a->scale, att,
                  a->scores);
    linear_kind(a->kind, att, n, hd, a->o, a->hidden, a->o_scale, a->o_bias, delta);
    dsi_add_rms_norm(x, delta, n, a->hidden, a->norm2, a->eps, h);
    linear_kind(a->kind, h, n, a->hidden, a->gate_up, 2 * a->ffn, a->gate_up_scale, NULL, gate_up);
    dsi_silu_mul(gate_up, n, a->ffn, act);
    linear_kind(a->kind, act, n, a->ffn, a->down, a->hidden, a->down_scale, NULL, delta);
    dsi_add_rms_norm(x, delta, n, a->hidden, after, a->eps, h);
}

/* A forward's first step: x[i] = the embedding row of ids[i], widened to fp32 (table kind 0 fp32, 1 bf16), and
   h = RMSNorm(x) by `weight` (the first layer's norm): what torch's embedding and the norm step compute. */
void dsi_embed_norm(const void *table, int kind, const int64_t *ids, int n, int width, const float *weight,
                    float eps, float *x, float *h) {
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * width;
        if (kind == 1) {
            const uint16_t *src = (const uint16_t *)table + (size_t)ids[i] * width;
            for (int t = 0; t < width; t++) {
                uint32_t bits = (uint32_t)src[t] << 16;
                memcpy(row + t, &bits, sizeof bits);
            }
        } else {
            memcpy(row, (const float *)table + (size_t)ids[i] * width, sizeof(float) * width);
        }
    }
    dsi_add_rms_norm(x, NULL, n, width, weight, eps, h);
}

/* The index of the largest of s[0..cols-1], the first one on ties and the first NaN if any (as torch's argmax),
   one score at a time. */
static int argmax_scalar(const float *s, int cols) {
    int best = 0;
    for (int j = 1; j < cols && !isnan(s[best]); j++)
        if (s[j] > s[best] || isnan(s[j])) best = j;
    return best;
}

/* The same index: the largest score 64 at a time (a scalar step per score took 2 ns, 0.1 ms per row of a
   49,152-token vocabulary), then the first index that holds it; a row with a NaN goes one score at a time.
   Equal scores (-0 and +0 included) compare equal in both, so the first of them is found either way. */
#ifdef __AVX512F__
static int argmax_row(const float *s, int cols) {
    if (cols < 64)
        return argmax_scalar(s, cols);
    __m512 top[4];
    __mmask16 nan = 0;
    for (int u = 0; u < 4; u++) {
        top[u] = _mm512_loadu_ps(s + 16 * u);
        nan |= _mm512_cmp_ps_mask(top[u], top[u], _CMP_UNORD_Q);
    }
    int j = 64;
    for (; j + 64 <= cols; j += 64)
        for (int u = 0; u < 4; u++) {
            __m512 v = _mm512_loadu_ps(s + j + 16 * u);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            top[u] = _mm512_max_ps(top[u], v);
        }
    float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(top[0], top[1]), _mm512_max_ps(top[2], top[3])));
    int any_nan = nan != 0;
    for (int t = j; t < cols; t++) {
        any_nan |= isnan(s[t]);
        if (s[t] > m) m = s[t];
    }
    if (any_nan)
        return argmax_scalar(s, cols);
    __m512 target = _mm512_set1_ps(m);
    int c = 0;
    for (; c + 16 <= cols; c += 16) {
        __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(s + c), target, _CMP_EQ_OQ);
        if (hit)
            return c + __builtin_ctz(hit);
    }
    while (s[c] != m) c++;
    return c;
}
#else
static int argmax_row(const float *s, int cols) { return argmax_scalar(s, cols); }
#endif

/* out[r] = the index of row r's largest score, the first one on ties and the first NaN if any (as torch's
   argmax). */
void dsi_argmax(const float *scores, int rows, int cols, int64_t *out) {
    for (int r = 0; r < rows; r++)
        out[r] = argmax_row(scores + (size_t)r * cols, cols);
}

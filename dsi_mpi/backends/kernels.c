/* dsi-mpi's CPU kernels for the packed backend (dsi_mpi/backends/native.py builds and loads them).

   Why: a verification of n tokens must cost about what one token costs. These products stream every weight
   row once for all n input rows (a row block of the weights stays in L1 while every input row uses it), so
   their cost is the weights' bytes over the memory bandwidth for any n up to a few tens. Each output is summed
   in the same order whatever n is (16 lanes over the inputs' length, then a fixed tree, then the tail), so a
   token's outputs are the same bit for bit in a one-token forward and in an n-token verification: the packed
   backend's verifications see exactly what plain decoding sees ("batch invariance").

   Weights are fp32 or bf16 (bf16 is widened to fp32 in registers: no native bf16 instructions are needed, and
   the bytes streamed are halved); inputs, outputs and all arithmetic are fp32. Written with GCC/Clang vector
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
#define PREFETCH 128 /* elements ahead of the current weight load */

static inline v16 load_f32(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

static inline v16 load_bf16(const uint16_t *p) {
    h16 h; memcpy(&h, p, sizeof h);
    u16 u = __builtin_convertvector(h, u16) << 16;
    v16 v; memcpy(&v, &u, sizeof v); return v;
}

static inline float widen_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline float hsum(v16 a) { /* a fixed tree: the same order for every output */
    v8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* Up to ROWS input rows against NB weight rows n0..n0+nb-1 (nb <= NB; missing rows repeat the last one and
   are not stored). */
#define NB 4
#define BLOCK(ROWS, WT, LOAD, WIDEN)                                                                       \
    static void block_##ROWS##_##WT(const float *x, int K, const WT *w, const float *bias, float *y, int N, \
                                    int n0, int nb) {                                                      \
        v16 acc[ROWS][NB];                                                                                 \
        memset(acc, 0, sizeof acc);                                                                        \
        const WT *rows[NB];                                                                                \
        for (int b = 0; b < NB; b++) rows[b] = w + (size_t)(n0 + (b < nb ? b : nb - 1)) * K;               \
        int k = 0;                                                                                         \
        for (; k + LANES <= K; k += LANES) {                                                               \
            v16 wv[NB];                                                                                    \
            for (int b = 0; b < NB; b++) {                                                                 \
                __builtin_prefetch(rows[b] + k + PREFETCH);                                                \
                wv[b] = LOAD(rows[b] + k);                                                                 \
            }                                                                                              \
            for (int r = 0; r < ROWS; r++) {                                                               \
                v16 xv = load_f32(x + (size_t)r * K + k);                                                  \
                for (int b = 0; b < NB; b++) acc[r][b] += xv * wv[b];                                      \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < ROWS; r++)                                                                     \
            for (int b = 0; b < nb; b++) {                                                                 \
                float s = hsum(acc[r][b]);                                                                 \
                for (int t = k; t < K; t++) s += x[(size_t)r * K + t] * WIDEN(rows[b][t]);                 \
                y[(size_t)r * N + n0 + b] = bias ? s + bias[n0 + b] : s;                                   \
            }                                                                                              \
    }

#define SAME(v) (v)
BLOCK(1, float, load_f32, SAME)
BLOCK(2, float, load_f32, SAME)
BLOCK(3, float, load_f32, SAME)
BLOCK(4, float, load_f32, SAME)
BLOCK(1, uint16_t, load_bf16, widen_bf16)
BLOCK(2, uint16_t, load_bf16, widen_bf16)
BLOCK(3, uint16_t, load_bf16, widen_bf16)
BLOCK(4, uint16_t, load_bf16, widen_bf16)

/* y (M x N) = x (M x K) w^T (+ bias): w is N x K, row-major. */
#define LINEAR(NAME, WT)                                                                                   \
    void NAME(const float *x, int M, int K, const WT *w, int N, const float *bias, float *y) {             \
        for (int n0 = 0; n0 < N; n0 += NB) {                                                               \
            int nb = N - n0 < NB ? N - n0 : NB;                                                            \
            for (int m0 = 0; m0 < M; m0 += 4) {                                                            \
                const float *xm = x + (size_t)m0 * K;                                                      \
                float *ym = y + (size_t)m0 * N;                                                            \
                switch (M - m0 < 4 ? M - m0 : 4) {                                                         \
                case 4: block_4_##WT(xm, K, w, bias, ym, N, n0, nb); break;                                \
                case 3: block_3_##WT(xm, K, w, bias, ym, N, n0, nb); break;                                \
                case 2: block_2_##WT(xm, K, w, bias, ym, N, n0, nb); break;                                \
                default: block_1_##WT(xm, K, w, bias, ym, N, n0, nb);                                      \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

LINEAR(dsi_linear_f32, float)
LINEAR(dsi_linear_bf16, uint16_t)

static inline float dot(const float *a, const float *b, int d) {
    v16 acc = {0};
    int t = 0;
    for (; t + LANES <= d; t += LANES) acc += load_f32(a + t) * load_f32(b + t);
    float s = hsum(acc);
    for (; t < d; t++) s += a[t] * b[t];
    return s;
}

/* Causal attention of n queries at positions start..start+n-1 over the cached keys and values 0..position.
   q: n x H x d (contiguous); keys, values: KVH x cap x d per layer (contiguous); out: n x H x d. Query head h
   reads key/value head h / (H / KVH). scores: room for start + n floats. Each query row is computed on its
   own, the same way whatever n is. */
void dsi_attention(const float *q, int n, int H, int KVH, int d, const float *keys, const float *values, int cap,
                   int start, float scale, float *out, float *scores) {
    int group = H / KVH;
    for (int i = 0; i < n; i++) {
        int visible = start + i + 1;
        for (int h = 0; h < H; h++) {
            const float *qh = q + ((size_t)i * H + h) * d;
            const float *kh = keys + (size_t)(h / group) * cap * d;
            const float *vh = values + (size_t)(h / group) * cap * d;
            float top = -INFINITY;
            for (int j = 0; j < visible; j++) {
                scores[j] = dot(qh, kh + (size_t)j * d, d) * scale;
                top = scores[j] > top ? scores[j] : top;
            }
            float total = 0.0f;
            for (int j = 0; j < visible; j++) {
                scores[j] = expf(scores[j] - top);
                total += scores[j];
            }
            float *o = out + ((size_t)i * H + h) * d;
            for (int t = 0; t < d; t++) o[t] = 0.0f;
            for (int j = 0; j < visible; j++) {
                const float *v = vh + (size_t)j * d;
                float p = scores[j] / total;
                for (int t = 0; t < d; t++) o[t] += p * v[t];
            }
        }
    }
}

/* y = x W^T (+ b) on a CPU, one core, float32: the lean forward's linear layers (engine/llama.py).
   W is packed once, at load, into panels of 16 output columns ([ceil(N/16)][K][16], the last
   zero-padded), so a panel is one contiguous stream; each panel is multiplied by the rows in
   blocks of at most 6 while it is in cache (6 x 16 accumulators: 12 of the 16 vector registers
   of AVX2), the rows in chunks of ROW_CHUNK so a chunk's inputs stay in L2.

   Why: at decode's few rows the weights stream from DRAM every step, and oneDNN's packed sgemm
   (what torch runs) streams and computes in turn: builtin:small's matmuls, 1 thread, AVX2,
   per step: 16 rows 16.1 ms there against 11.7 here, 4 rows 9.0 against 6.8, 1 row 7.1
   (MKL's gemv 5.6) against 5.4; prefill-sized (1,024 rows) 582 against 522
   (docs/benchmarks.md, "Linear layers in C"). Built with the other kernels by
   engine/cpu_kernels.py; the reference is F.linear. GCC/Clang vector extensions, no intrinsics:
   one source for any vector width -march=native gives. */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
#define NR 16         /* output columns per panel: two 8-float vectors */
#define MAX_ROWS 6    /* rows per block: 2 x 6 accumulators, 2 weight vectors, a broadcast */
#define ROW_CHUNK 96  /* rows per pass over the panels */

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* Panels of W [N, K] (row-major: out x in) into `out`, [ceil(N / 16) * K * 16] floats. */
void pack_panels(const float *w, float *out, int64_t N, int64_t K) {
  for (int64_t p = 0; p * NR < N; p++)
    for (int64_t k = 0; k < K; k++)
      for (int64_t q = 0; q < NR; q++) {
        const int64_t j = p * NR + q;
        out[(p * K + k) * NR + q] = j < N ? w[j * K + k] : 0.f;
      }
}

/* MR rows of x (stride xs) times one panel: out[m, 0:ncols] (stride os) = x[m] . panel[:, q] + b[q]. */
#define DEFINE_BLOCK(MR)                                                                        \
  static void block_##MR(const float *restrict x, int64_t xs, const float *restrict panel,       \
                         const float *restrict bias, float *restrict out, int64_t os, int64_t K, \
                         int64_t ncols, const float *next) {                                     \
    v8 lo[MR], hi[MR];                                                                           \
    for (int m = 0; m < MR; m++) lo[m] = hi[m] = (v8){0};                                        \
    for (int64_t k = 0; k < K; k++) {                                                            \
      if (next) __builtin_prefetch(next + k * NR);                                               \
      const v8 w0 = load8(panel + k * NR), w1 = load8(panel + k * NR + 8);                       \
      for (int m = 0; m < MR; m++) {                                                             \
        const float xk = x[m * xs + k];                                                          \
        lo[m] += w0 * xk;                                                                        \
        hi[m] += w1 * xk;                                                                        \
      }                                                                                          \
    }                                                                                            \
    float b[NR] = {0};                                                                           \
    if (bias) memcpy(b, bias, sizeof(float) * ncols);                                            \
    const v8 b0 = load8(b), b1 = load8(b + 8);                                                   \
    for (int m = 0; m < MR; m++) {                                                               \
      lo[m] += b0, hi[m] += b1;                                                                  \
      if (ncols == NR) {                                                                         \
        store8(out + m * os, lo[m]), store8(out + m * os + 8, hi[m]);                            \
      } else {                                                                                   \
        float row[NR];                                                                           \
        store8(row, lo[m]), store8(row + 8, hi[m]);                                              \
        memcpy(out + m * os, row, sizeof(float) * ncols);                                        \
      }                                                                                          \
    }                                                                                            \
  }
DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
DEFINE_BLOCK(3)
DEFINE_BLOCK(4)
DEFINE_BLOCK(5)
DEFINE_BLOCK(6)

typedef void (*block_fn)(const float *, int64_t, const float *, const float *, float *, int64_t,
                         int64_t, int64_t, const float *);
static const block_fn BLOCKS[MAX_ROWS + 1] = {0, block_1, block_2, block_3, block_4, block_5, block_6};

/* out [M, N] = x [M, K] (rows at stride xs, elements contiguous) W^T + bias (NULL: none), with
   W packed by pack_panels. Blocks are balanced (16 rows: 6, 5, 5), never a lone short one. */
void panel_matmul(const float *x, int64_t xs, const float *packed, const float *bias, float *out,
                  int64_t M, int64_t N, int64_t K) {
  for (int64_t m0 = 0; m0 < M; m0 += ROW_CHUNK) {
    const int64_t rows = M - m0 < ROW_CHUNK ? M - m0 : ROW_CHUNK;
    const int64_t num_blocks = (rows + MAX_ROWS - 1) / MAX_ROWS;
    for (int64_t p = 0; p * NR < N; p++) {
      const int64_t ncols = N - p * NR < NR ? N - p * NR : NR;
      const float *panel_bias = bias ? bias + p * NR : 0;
      /* The next panel, fetched a line per k while this one is multiplied: its DRAM traffic
         then overlaps every block's arithmetic here, where the hardware prefetcher alone
         stalls behind the second block (builtin:small's matmuls, 16 rows: 12.1 -> 11.0 ms;
         4 rows: 7.1 -> 5.5). One row has no arithmetic to hide it behind: not asked there. */
      const float *next = rows > 1 && (p + 1) * NR < N ? packed + (p + 1) * K * NR : 0;
      for (int64_t b = 0, m = 0; b < num_blocks; b++) {
        const int64_t left = rows - m, mr = (left + (num_blocks - b) - 1) / (num_blocks - b);
        BLOCKS[mr](x + (m0 + m) * xs, xs, packed + p * K * NR, panel_bias, out + (m0 + m) * N + p * NR,
                   N, K, ncols, next);
        m += mr;
      }
    }
  }
}

/* Attention on a CPU, one query token per row: a decode row's new token over its whole
   context, or a prompt token over the tokens up to itself (causal), each in its own cache slot:
   no padding, no mask, no copy; G query heads per KV head (GQA) with no K/V expansion. Built
   and loaded by engine/cpu_kernels.py; the reference is torch's scaled_dot_product_attention.

   Why: torch's SDPA on CPU runs a per-(row, head) blocked kernel built for long queries; for
   decode's G-row queries its per-block work dominates (builtin:small, 16 rows of ~170 tokens,
   8 layers: ~5 ms a step against ~2.5 ms here), and a prompt chunk needs a mask built and
   converted each call, all of its keys read for every query (docs/benchmarks.md). */
#include <float.h>
#include <math.h>
#include <stdint.h>

/* One KV head of one row: queries q [G, DD] (pre-scaled here) over L keys and values [L, DD]. */
#define DEFINE_HEAD(DD)                                                                     \
  static void head_##DD(const float *restrict q,                                             \
                        const float *restrict k, const float *restrict v, float *restrict o, \
                        int64_t G, int64_t L, float scale, float *restrict s) {              \
    for (int64_t g = 0; g < G; g++) {                                                        \
      float qg[DD]; /* in registers across the keys */                                       \
      for (int64_t d = 0; d < DD; d++) qg[d] = q[g * DD + d] * scale;                        \
      for (int64_t j = 0; j < L; j++) {                                                      \
        const float *restrict kj = k + j * DD;                                               \
        float acc = 0.f;                                                                     \
        for (int64_t d = 0; d < DD; d++) acc += qg[d] * kj[d];                               \
        s[g * L + j] = acc;                                                                  \
      }                                                                                      \
    }                                                                                        \
    for (int64_t g = 0; g < G; g++) {                                                        \
      float *restrict sg = s + g * L;                                                        \
      float m = -FLT_MAX, sum = 0.f;                                                         \
      for (int64_t j = 0; j < L; j++) m = sg[j] > m ? sg[j] : m;                             \
      for (int64_t j = 0; j < L; j++) {                                                      \
        sg[j] = expf(sg[j] - m);                                                             \
        sum += sg[j];                                                                        \
      }                                                                                      \
      float acc[DD];                                                                         \
      for (int64_t d = 0; d < DD; d++) acc[d] = 0.f;                                         \
      for (int64_t j = 0; j < L; j++) {                                                      \
        const float p = sg[j];                                                               \
        const float *restrict vj = v + j * DD;                                               \
        for (int64_t d = 0; d < DD; d++) acc[d] += p * vj[d];                                \
      }                                                                                      \
      const float inv = 1.f / sum;                                                           \
      for (int64_t d = 0; d < DD; d++) o[g * DD + d] = acc[d] * inv;                         \
    }                                                                                        \
  }
/* Head sizes known at compile time keep a query and the output in registers. */
DEFINE_HEAD(64)
DEFINE_HEAD(128)

static void head_any(const float *restrict q, const float *restrict k,
                     const float *restrict v, float *restrict o, int64_t G, int64_t L, int64_t D,
                     float scale, float *restrict s) {
  for (int64_t g = 0; g < G; g++)
    for (int64_t j = 0; j < L; j++) {
      float acc = 0.f;
      for (int64_t d = 0; d < D; d++) acc += q[g * D + d] * k[j * D + d];
      s[g * L + j] = acc * scale;
    }
  for (int64_t g = 0; g < G; g++) {
    float *sg = s + g * L, m = -FLT_MAX, sum = 0.f;
    for (int64_t j = 0; j < L; j++) m = sg[j] > m ? sg[j] : m;
    for (int64_t j = 0; j < L; j++) {
      sg[j] = expf(sg[j] - m);
      sum += sg[j];
    }
    for (int64_t d = 0; d < D; d++) o[g * D + d] = 0.f;
    for (int64_t j = 0; j < L; j++)
      for (int64_t d = 0; d < D; d++) o[g * D + d] += sg[j] * v[j * D + d];
    for (int64_t d = 0; d < D; d++) o[g * D + d] /= sum;
  }
}

/* q: token b's query head (h * G + g) at q + b * q_row_stride + (h * G + g) * D.
   k, v: the cache; row b's KV head h, token j at base + slots[b] * slot_stride + h * head_stride + j * D.
   out: [B, Hkv * G, D] contiguous. lengths[b] >= 1: the tokens row b attends to.
   scratch: at least G * max(lengths) floats. */
void token_attention(const float *q, int64_t q_row_stride, const float *k, const float *v,
                      float *out, const int64_t *slots, const int64_t *lengths, int64_t B,
                      int64_t Hkv, int64_t G, int64_t D, int64_t slot_stride,
                      int64_t head_stride, float scale, float *scratch) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hkv; h++) {
      const float *qb = q + b * q_row_stride + h * G * D;
      const int64_t kv = slots[b] * slot_stride + h * head_stride;
      float *ob = out + (b * Hkv + h) * G * D;
      if (D == 64)
        head_64(qb, k + kv, v + kv, ob, G, lengths[b], scale, scratch);
      else if (D == 128)
        head_128(qb, k + kv, v + kv, ob, G, lengths[b], scale, scratch);
      else
        head_any(qb, k + kv, v + kv, ob, G, lengths[b], D, scale, scratch);
    }
}

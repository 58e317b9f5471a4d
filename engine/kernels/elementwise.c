/* The lean forward's elementwise ops in C, one pass each, for float32 steps on a CPU: torch runs
   each as several ops (RMSNorm as six, SiLU-and-multiply as two), each a trip through memory
   and the dispatcher. Built with attention.c by engine/cpu_kernels.py; the references are the
   torch expressions in engine/llama.py (rms_norm, the SwiGLU line). */
#include <math.h>
#include <stdint.h>

/* out[t] = w * (x[t] / sqrt(mean(x[t]^2) + eps)), as HF's LlamaRMSNorm in float32.
   x rows at x + t * x_stride; out [T, N] contiguous. */
void rms_norm(const float *x, int64_t x_stride, const float *w, float *out, int64_t T, int64_t N,
              float eps) {
  for (int64_t t = 0; t < T; t++) {
    const float *restrict xt = x + t * x_stride;
    float *restrict ot = out + t * N;
    float ss = 0.f;
    for (int64_t i = 0; i < N; i++) ss += xt[i] * xt[i];
    const float r = 1.f / sqrtf(ss / (float)N + eps);
    for (int64_t i = 0; i < N; i++) ot[i] = w[i] * (xt[i] * r);
  }
}

/* out[t, i] = silu(gu[t, i]) * gu[t, I + i]: the fused gate/up matmul's output [T, 2I] in,
   the MLP's hidden [T, I] out (silu(g) = g / (1 + exp(-g)), as torch computes it). The
   exponent is capped: built with -ffast-math (finite math only), exp(-g) must not overflow;
   at the cap silu(g) is within 1e-33 of its limit, 0. */
void silu_mul(const float *gu, float *out, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; t++) {
    const float *restrict g = gu + t * 2 * I, *restrict u = g + I;
    float *restrict ot = out + t * I;
    for (int64_t i = 0; i < I; i++) ot[i] = g[i] / (1.f + expf(fminf(-g[i], 80.f))) * u[i];
  }
}

/* Rope on a step's q and k, and its K/V written into the cache, in one pass: qkv [T, (H + 2 Hkv)
   D] (q heads, then k, then v) in; q_out [T, H, D] rotated; token t's rotated k and its v land at
   position positions[t] of slot slots[t] (cache: base + slot * slot_stride + head * head_stride
   + position * D). cos, sin [T, D]; rotation as HF's rotate_half: x * cos + (-x2, x1) * sin. */
void rope_write(const float *qkv, const float *cos, const float *sin, float *q_out, float *k_cache,
                float *v_cache, const int64_t *slots, const int64_t *positions, int64_t T,
                int64_t H, int64_t Hkv, int64_t D, int64_t slot_stride, int64_t head_stride) {
  const int64_t half = D / 2, width = (H + 2 * Hkv) * D;
  for (int64_t t = 0; t < T; t++) {
    const float *restrict row = qkv + t * width, *restrict c = cos + t * D, *restrict s = sin + t * D;
    const int64_t cache_row = slots[t] * slot_stride + positions[t] * D;
    for (int64_t head = 0; head < H + Hkv; head++) {
      const float *restrict x = row + head * D;
      float *restrict o = head < H ? q_out + (t * H + head) * D
                                   : k_cache + cache_row + (head - H) * head_stride;
      for (int64_t d = 0; d < half; d++) o[d] = x[d] * c[d] - x[d + half] * s[d];
      for (int64_t d = half; d < D; d++) o[d] = x[d] * c[d] + x[d - half] * s[d];
    }
    for (int64_t head = 0; head < Hkv; head++) {
      const float *restrict x = row + (H + Hkv + head) * D;
      float *restrict o = v_cache + cache_row + head * head_stride;
      for (int64_t d = 0; d < D; d++) o[d] = x[d];
    }
  }
}

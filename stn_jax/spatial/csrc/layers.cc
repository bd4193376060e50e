// The models' layers on the CPU, as XLA FFI handlers: the kernels behind conv='cpu_kernel' (stn_jax.cpu_kernels.conv
// and max_pool). Direct 2-D convolutions (cross-correlations, stride 1, no padding: 'VALID') of channels-last images,
// every operand with a leading group axis G (a population's members, each with its own kernel; G = 1 for one model):
//
//   stn_conv         out (G, N, OH, OW, CO) = sum over (a, b, c) of x (G, N, H, W, C)[.., y + a, x + b, c] *
//                    k (G, KH, KW, C, CO)[.., a, b, c, :], with OH = H - KH + 1, OW = W - KW + 1
//   stn_conv_kernel  d k (G, KH, KW, C, CO) of a cotangent g (G, N, OH, OW, CO): sum over the pixels (n, y, x) of
//                    x[.., n, y + a, x + b, c] * g[.., n, y, x, :], the transpose of stn_conv in its kernel
//
// (the transpose in the input is stn_conv of the cotangent, padded, with the kernel flipped and C, CO swapped). CO must
// be a multiple of 16: the output channels are the vector lanes, 16 floats (GCC / Clang vector extensions: one
// AVX-512 register, two AVX2 ones). An attribute `border` (top, bottom, left, right) says how many rows and columns at
// each edge of x are zeros (a padded input): their taps are skipped, which only saves work.
//
// A block of RB output pixels x NV vectors of channels is accumulated in registers over the taps (a GEMM micro-kernel
// whose left operand is read straight from the image: no patch matrix). Fused multiply-adds are allowed here (the
// sums' order differs from XLA's anyway; the tests compare with a tolerance). Work is split over images on XLA's
// intra-op thread pool (parallel.h); the kernel gradient sums per-chunk partials in chunk order, so it is
// deterministic.
//
// 2x2 max-pooling at stride 2 of x (N, H, W, C) (an odd last row or column left out, as 'VALID' pooling does):
//
//   stn_max_pool          out (N, H / 2, W / 2, C): each window's maximum (NaN if the window has one)
//   stn_max_pool_select   out (N, H / 2, W / 2, C): t (N, H, W, C) read at the pixel each window of x takes its
//                         maximum from (the first in row-major order among equals)
//   stn_max_pool_scatter  out (N, H, W, C): g (N, H / 2, W / 2, C) put at those pixels, zeros elsewhere
//
// select is the pooling's derivative (linear in t), scatter its transpose.

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using stn_jax::ForRows;
using stn_jax::ParallelFor;

typedef float v16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline v16 Load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void Store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Output pixels per register block for NV channel vectors: about 24 accumulators (of 32 AVX-512 registers).
constexpr int BlockPixels(int nv) { return nv >= 4 ? 6 : nv == 3 ? 8 : 12; }

// Calls f(std::integral_constant<int, R>) for the R == r in [1, RMAX] (a run-time count as a compile-time one).
template <int RMAX, typename F>
inline void WithCount(int r, F&& f) {
  if constexpr (RMAX > 0) {
    if (r == RMAX) {
      f(std::integral_constant<int, RMAX>{});
    } else {
      WithCount<RMAX - 1>(r, f);
    }
  }
}

template <typename F>
inline void WithVectors(int nv, F&& f) {
  switch (nv) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

struct Dims {
  int64_t g, n, h, w, c, kh, kw, co, oh, ow;
  int64_t top, bottom, left, right;  // zero rows / columns of x at each edge
};

Dims DimsOf(const ffi::Buffer<ffi::F32>& x, int64_t kh, int64_t kw, int64_t co, ffi::Span<const int64_t> border) {
  auto s = x.dimensions();
  Dims d{s[0], s[1], s[2], s[3], s[4], kh, kw, co, s[2] - kh + 1, s[3] - kw + 1, 0, 0, 0, 0};
  if (border.size() == 4) {
    d.top = border[0], d.bottom = border[1], d.left = border[2], d.right = border[3];
  }
  return d;
}

// out[r][v] = sum over taps (a in [a0, a1), b in [b0, b1), c) of x[a][b + r][c] * k[a][b][c][v]; x points at the
// block's first input pixel, k at the kernel's first channel vector, out at the block's first output value. A kernel
// row's (b, c) entries are contiguous in x's rows and in k, so they are one loop (long even when C is 1).
template <int NV, int RB>
void ForwardBlock(const float* __restrict x, const float* __restrict k, float* __restrict out, const Dims& d,
                  int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  v16 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v16{};
  for (int64_t a = a0; a < a1; ++a) {
    const float* xp = x + a * d.w * d.c;
    const float* kp = k + a * d.kw * d.c * d.co;
    for (int64_t q = b0 * d.c; q < b1 * d.c; ++q) {
      v16 kv[NV];
      for (int v = 0; v < NV; ++v) kv[v] = Load(kp + q * d.co + kLanes * v);
      for (int r = 0; r < RB; ++r) {
        const float s = xp[r * d.c + q];
        for (int v = 0; v < NV; ++v) acc[r][v] += s * kv[v];
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) Store(out + r * d.co + kLanes * v, acc[r][v]);
}

ffi::Error Conv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                ffi::ResultBuffer<ffi::F32> out, ffi::Span<const int64_t> border) {
  auto ks = k.dimensions();
  const Dims d = DimsOf(x, ks[1], ks[2], ks[4], border);
  if (d.co % kLanes != 0) return ffi::Error::InvalidArgument("stn_conv: output channels must be a multiple of 16");
  const float* xs = x.typed_data();
  const float* kk = k.typed_data();
  float* o = out->typed_data();
  const int64_t image = d.h * d.w * d.c, kernel = d.kh * d.kw * d.c * d.co, result = d.oh * d.ow * d.co;
  ForRows(pool, d.g * d.n, 2 * result * d.kh * d.kw * d.c, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* xi = xs + row * image;
      const float* ki = kk + (row / d.n) * kernel;
      float* oi = o + row * result;
      for (int64_t y = 0; y < d.oh; ++y) {
        // Taps on the zero rows of x read nothing.
        const int64_t a0 = std::max<int64_t>(0, d.top - y), a1 = std::min<int64_t>(d.kh, d.h - d.bottom - y);
        for (int64_t f0 = 0; f0 < d.co; f0 += 4 * kLanes) {
          const int nv = static_cast<int>(std::min<int64_t>(4, (d.co - f0) / kLanes));
          WithVectors(nv, [&](auto nvc) {
            constexpr int NV = decltype(nvc)::value;
            constexpr int RB = BlockPixels(NV);
            for (int64_t x0 = 0; x0 < d.ow; x0 += RB) {
              const int rb = static_cast<int>(std::min<int64_t>(RB, d.ow - x0));
              // Taps whose columns are zero for every pixel of the block read nothing.
              const int64_t b0 = std::max<int64_t>(0, d.left - (x0 + rb - 1));
              const int64_t b1 = std::min<int64_t>(d.kw, d.w - d.right - x0);
              float* ob = oi + (y * d.ow + x0) * d.co + f0;
              if (a0 >= a1 || b0 >= b1) {
                for (int r = 0; r < rb; ++r) std::memset(ob + r * d.co, 0, NV * kLanes * sizeof(float));
                continue;
              }
              const float* xb = xi + (y * d.w + x0) * d.c;
              WithCount<RB>(rb, [&](auto rbc) {
                ForwardBlock<NV, decltype(rbc)::value>(xb, ki + f0, ob, d, a0, a1, b0, b1);
              });
            }
          });
        }
      }
    }
  });
  return ffi::Error::Success();
}

// acc[r][v] += sum over the output pixels (y, x) with y in [y0, y1), x in [x0, x1) of xq[(y * W + x) * C + r] *
// g[(y * OW + x) * CO + 16 v]: RB consecutive (b, c) entries of one kernel row a (xq points at x[a][0][q0], the block's
// first entry, g at the cotangent's first channel vector), NV vectors of output channels, accumulated into dk.
template <int NV, int RB>
void KernelBlock(const float* __restrict xq, const float* __restrict g, float* __restrict dk, const Dims& d,
                 int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
  v16 acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Load(dk + r * d.co + kLanes * v);
  for (int64_t y = y0; y < y1; ++y) {
    for (int64_t x = x0; x < x1; ++x) {
      const float* xp = xq + (y * d.w + x) * d.c;
      const float* gp = g + (y * d.ow + x) * d.co;
      v16 gv[NV];
      for (int v = 0; v < NV; ++v) gv[v] = Load(gp + kLanes * v);
      for (int r = 0; r < RB; ++r) {
        const float s = xp[r];
        for (int v = 0; v < NV; ++v) acc[r][v] += s * gv[v];
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) Store(dk + r * d.co + kLanes * v, acc[r][v]);
}

ffi::Error ConvKernel(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dk, ffi::Span<const int64_t> border) {
  auto ks = dk->dimensions();
  const Dims d = DimsOf(x, ks[1], ks[2], ks[4], border);
  if (d.co % kLanes != 0) {
    return ffi::Error::InvalidArgument("stn_conv_kernel: output channels must be a multiple of 16");
  }
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  float* out = dk->typed_data();
  const int64_t image = d.h * d.w * d.c, result = d.oh * d.ow * d.co, kernel = d.kh * d.kw * d.c * d.co;
  const int64_t row_entries = d.kw * d.c;  // one kernel row's (b, c) entries, contiguous in x's rows
  const int64_t rows = d.g * d.n, per_row = 2 * result * d.kh * row_entries;
  // A partial kernel gradient per chunk (one chunk per thread), summed in chunk order: deterministic.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({rows, pool.num_threads() + 1, rows * per_row >> 18}));
  std::vector<float> partial(chunks > 1 ? chunks * d.g * kernel : 0);
  std::memset(out, 0, d.g * kernel * sizeof(float));
  auto accumulate = [&](int64_t chunk) {
    float* sums = chunks > 1 ? partial.data() + chunk * d.g * kernel : out;
    for (int64_t row = rows * chunk / chunks; row < rows * (chunk + 1) / chunks; ++row) {
      const float* xi = xs + row * image;
      const float* gi = gs + row * result;
      float* ki = sums + (row / d.n) * kernel;
      for (int64_t a = 0; a < d.kh; ++a) {
        // Output rows whose tap row a is a zero row of x add nothing.
        const int64_t y0 = std::max<int64_t>(0, d.top - a), y1 = std::min<int64_t>(d.oh, d.h - d.bottom - a);
        if (y0 >= y1) continue;
        for (int64_t f0 = 0; f0 < d.co; f0 += 4 * kLanes) {
          const int nv = static_cast<int>(std::min<int64_t>(4, (d.co - f0) / kLanes));
          WithVectors(nv, [&](auto nvc) {
            constexpr int NV = decltype(nvc)::value;
            constexpr int RB = BlockPixels(NV);
            for (int64_t q0 = 0; q0 < row_entries; q0 += RB) {
              const int rb = static_cast<int>(std::min<int64_t>(RB, row_entries - q0));
              // Output columns whose taps (b of the block's entries) are zero columns of x add nothing.
              const int64_t b_first = q0 / d.c, b_last = (q0 + rb - 1) / d.c;
              const int64_t x0 = std::max<int64_t>(0, d.left - b_last);
              const int64_t x1 = std::min<int64_t>(d.ow, d.w - d.right - b_first);
              if (x0 >= x1) continue;
              WithCount<RB>(rb, [&](auto rbc) {
                KernelBlock<NV, decltype(rbc)::value>(xi + a * d.w * d.c + q0, gi + f0,
                                                      ki + (a * row_entries + q0) * d.co + f0, d, y0, y1, x0, x1);
              });
            }
          });
        }
      }
    }
  };
  ParallelFor(pool, chunks, accumulate);
  for (int64_t chunk = 0; chunks > 1 && chunk < chunks; ++chunk) {
    const float* p = partial.data() + chunk * d.g * kernel;
    for (int64_t i = 0; i < d.g * kernel; ++i) out[i] += p[i];
  }
  return ffi::Error::Success();
}

// Which pixel of the window (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) x's maximum is at (NaN wins).
// Which pixel of each window (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) the maximum is at: the first
// among equals, the first NaN wins. T is float (k int) or the 16-lane vector (k its int32 lanes); the selects are
// branch-free, so 16 channels go at once.
template <typename T, typename K>
inline K Winner(T v00, T v01, T v10, T v11) {
  T best = v00;
  K k = K{} * 0;
  const K w1 = (v01 > best) | ((v01 != v01) & (best == best));
  best = w1 ? v01 : best, k = w1 ? k + 1 : k;
  const K w2 = (v10 > best) | ((v10 != v10) & (best == best));
  best = w2 ? v10 : best, k = w2 ? k * 0 + 2 : k;
  const K w3 = (v11 > best) | ((v11 != v11) & (best == best));
  return w3 ? k * 0 + 3 : k;
}

enum class Pool { kMax, kSelect, kScatter };

typedef int32_t v16i __attribute__((vector_size(64)));

// The 2x2 window at x (its four pixels at x + o[j]) for the channels in `lanes` (16 or 1) from `ch`: max and select
// write out[ch], scatter writes out + o[j]; t is read at t + o[j] (select) or t (scatter).
template <Pool kMode, typename T, typename K>
inline void PoolLanes(const float* x, const float* t, float* out, int64_t o1, int64_t o2, int64_t o3, int64_t ch) {
  auto load = [&](const float* p) {
    T v;
    std::memcpy(&v, p + ch, sizeof v);
    return v;
  };
  auto store = [&](float* p, T v) { std::memcpy(p + ch, &v, sizeof v); };
  const T v00 = load(x), v01 = load(x + o1), v10 = load(x + o2), v11 = load(x + o3);
  const K k = Winner<T, K>(v00, v01, v10, v11);
  const K k0 = k == 0, k1 = k == 1, k2 = k == 2, k3 = k == 3;
  if constexpr (kMode == Pool::kMax) {
    store(out, k0 ? v00 : k1 ? v01 : k2 ? v10 : v11);
  } else if constexpr (kMode == Pool::kSelect) {
    store(out, k0 ? load(t) : k1 ? load(t + o1) : k2 ? load(t + o2) : load(t + o3));
  } else {
    const T g = load(t), zero = g * 0;
    store(out, k0 ? g : zero), store(out + o1, k1 ? g : zero), store(out + o2, k2 ? g : zero);
    store(out + o3, k3 ? g : zero);
  }
}

template <Pool kMode>
inline void PoolWindow(const float* x, const float* t, float* out, int64_t o1, int64_t o2, int64_t o3, int64_t c) {
  int64_t ch = 0;
  for (; ch + kLanes <= c; ch += kLanes) PoolLanes<kMode, v16, v16i>(x, t, out, o1, o2, o3, ch);
  for (; ch < c; ++ch) PoolLanes<kMode, float, int>(x, t, out, o1, o2, o3, ch);
}

// One handler body for the three, over the windows.
template <Pool kMode>
ffi::Error PoolImpl(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x, const float* t, float* out) {
  auto s = x.dimensions();
  const int64_t n = s[0], h = s[1], w = s[2], c = s[3], oh = h / 2, ow = w / 2;
  const float* xs = x.typed_data();
  ForRows(pool, n, h * w * c, [&](int64_t begin, int64_t end) {
    if (kMode == Pool::kScatter && (h % 2 || w % 2)) {  // the odd last row or column gets nothing
      std::memset(out + begin * h * w * c, 0, (end - begin) * h * w * c * sizeof(float));
    }
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t x0 = 0; x0 < ow; ++x0) {
          const int64_t p = ((i * h + 2 * y) * w + 2 * x0) * c, q = ((i * oh + y) * ow + x0) * c;
          const int64_t o1 = c, o2 = w * c, o3 = (w + 1) * c;
          if constexpr (kMode == Pool::kMax) {
            PoolWindow<kMode>(xs + p, nullptr, out + q, o1, o2, o3, c);
          } else if constexpr (kMode == Pool::kSelect) {
            PoolWindow<kMode>(xs + p, t + p, out + q, o1, o2, o3, c);
          } else {
            PoolWindow<kMode>(xs + p, t + q, out + p, o1, o2, o3, c);
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error MaxPool(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out) {
  return PoolImpl<Pool::kMax>(pool, x, nullptr, out->typed_data());
}

ffi::Error MaxPoolSelect(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> t,
                         ffi::ResultBuffer<ffi::F32> out) {
  return PoolImpl<Pool::kSelect>(pool, x, t.typed_data(), out->typed_data());
}

ffi::Error MaxPoolScatter(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> out) {
  return PoolImpl<Pool::kScatter>(pool, x, g.typed_data(), out->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnMaxPool, MaxPool,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnMaxPoolSelect, MaxPoolSelect,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnMaxPoolScatter, MaxPoolScatter,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("border"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnConvKernel, ConvKernel,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("border"));

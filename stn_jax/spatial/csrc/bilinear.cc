// Bilinear sampling of channels-last images (and the volume-gradient half of trilinear sampling) on the CPU, as XLA
// FFI handlers: the kernels behind stn_jax.grid_sample(..., implementation='cpu_kernel').
//
// Every handler takes pixel-index coordinates (ix, iy), each (N, P) float32, already mapped through the padding mode,
// clamped to [-2, size + 1] and snapped onto pixel centres by stn_jax.sampling (so the arithmetic here is only the
// four taps), and reads an image (N, H, W, C) float32 with zeros outside it:
//
//   stn_bilinear_sample   out (N, P, C)                  the bilinear interpolation
//   stn_bilinear_jacobian out, d out / d ix, d out / d iy  (each (N, P, C)): what the JVP and the backward pass to the
//                                                        coordinates need
//   stn_bilinear_scatter  d image (N, H, W, C) of a cotangent (N, P, C): the transpose of the sample in the image
//
// The arithmetic is that of the pure-JAX path (the same roundings, no fused multiply-adds: built with
// -ffp-contract=off), so values agree with it bitwise. Work is split over batch rows on XLA's intra-op thread pool
// (parallel.h).

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using stn_jax::ForRows;

// The taps of a block of points, in a loop the compiler vectorises (gathers need AVX2 / AVX-512; the library is built
// with -march=native; not inlined, where GCC would lose the __restrict that lets it vectorise): per tap (top-left, top-right, bottom-left, bottom-right) the flat offset (times C) of its pixel,
// clamped into the image so that every read is in bounds, and whether it lies inside (outside taps read zero); and the
// fractions. NaN coordinates keep NaN in the fractions (so values are NaN, as on the pure path) and read outside.
constexpr int kBlock = 256;

struct Block {
  int32_t offset[4][kBlock];
  bool inside[4][kBlock];
  float fx[kBlock], fy[kBlock];
};

inline int32_t Floor(float v) {  // v is within a few pixels of the image (clamped by the caller) or NaN
  // NaN fails the comparison and is replaced before the conversion (undefined for NaN): a float select, which keeps
  // the loop vectorisable (with -fno-trapping-math).
  const float finite = v >= -2.0f ? v : -2.0f;
  const int32_t i = static_cast<int32_t>(finite);
  return i - (static_cast<float>(i) > finite);
}

__attribute__((noinline)) void TapsOf(const float* __restrict xs, const float* __restrict ys, int m, int32_t h, int32_t w, int32_t c,
                   Block* __restrict t) {
  for (int j = 0; j < m; ++j) {
    const float x = xs[j], y = ys[j];
    const int32_t x0 = Floor(x), y0 = Floor(y);
    t->fx[j] = x - static_cast<float>(x0);
    t->fy[j] = y - static_cast<float>(y0);
    const bool x0_in = static_cast<uint32_t>(x0) < static_cast<uint32_t>(w);
    const bool x1_in = static_cast<uint32_t>(x0 + 1) < static_cast<uint32_t>(w);
    const bool y0_in = static_cast<uint32_t>(y0) < static_cast<uint32_t>(h);
    const bool y1_in = static_cast<uint32_t>(y0 + 1) < static_cast<uint32_t>(h);
    const int32_t xa = std::min(std::max(x0, 0), w - 1), xb = std::min(std::max(x0 + 1, 0), w - 1);
    const int32_t ya = std::min(std::max(y0, 0), h - 1) * w, yb = std::min(std::max(y0 + 1, 0), h - 1) * w;
    t->offset[0][j] = (ya + xa) * c;
    t->offset[1][j] = (ya + xb) * c;
    t->offset[2][j] = (yb + xa) * c;
    t->offset[3][j] = (yb + xb) * c;
    t->inside[0][j] = x0_in & y0_in;
    t->inside[1][j] = x1_in & y0_in;
    t->inside[2][j] = x0_in & y1_in;
    t->inside[3][j] = x1_in & y1_in;
  }
}

// Coordinates: the normalised grid -> pixel index, the padding mode, the clamp to [-2, size + 1] and the snap onto
// pixel centres, operation for operation as stn_jax.sampling's _source_coords and _clamped (so the same values).
enum Padding : int32_t { kZeros = 0, kBorder = 1, kReflection = 2 };

inline float Clip(float c, int64_t size) {
  const float high = static_cast<float>(size - 1);
  return c < 0.0f ? 0.0f : (c > high ? high : c);
}

inline float Reflect(float c, int64_t twice_low, int64_t twice_high) {
  if (twice_low == twice_high) return 0.0f;
  const float low = static_cast<float>(twice_low / 2.0);
  const float span = static_cast<float>((twice_high - twice_low) / 2.0);
  float d = c - low;
  d = d < 0.0f ? -d : d;
  const float extra = std::fmod(d, span);
  const float flips = std::floor(d / span);
  const bool odd = std::fmod(flips, 2.0f) == 1.0f;
  return odd ? span - extra + low : extra + low;
}

template <int32_t kPadding, bool kAlign>
inline float PixelCoordinate(float c, int64_t size, float tolerance) {
  c = kAlign ? (c + 1.0f) / 2.0f * static_cast<float>(size - 1) : ((c + 1.0f) * static_cast<float>(size) - 1.0f) / 2.0f;
  if (kPadding == kBorder) {
    c = Clip(c, size);
  } else if (kPadding == kReflection) {
    c = Clip(kAlign ? Reflect(c, 0, 2 * (size - 1)) : Reflect(c, -1, 2 * size - 1), size);
  }
  const float low = -2.0f, high = static_cast<float>(size + 1);
  c = c < low ? low : (c > high ? high : c);  // NaN stays NaN
  const float nearest = std::nearbyint(c);   // round half to even, as jnp.round
  return std::fabs(c - nearest) <= tolerance ? nearest : c;
}

inline float SnapTolerance(int64_t size) {  // sampling._snap's: 4 float32 ulps of 1, times size + 1
  return static_cast<float>(4.0 * static_cast<double>(FLT_EPSILON) * static_cast<double>(size + 1));
}

// One loop per padding mode and align_corners (so that the zeros and border ones vectorise).
template <int32_t kPadding, bool kAlign>
__attribute__((noinline)) void CoordinatesOf(const float* __restrict grid, int m, int64_t h, int64_t w,
                                             float* __restrict xs, float* __restrict ys) {
  const float tol_x = SnapTolerance(w), tol_y = SnapTolerance(h);
  for (int j = 0; j < m; ++j) {
    xs[j] = PixelCoordinate<kPadding, kAlign>(grid[2 * j], w, tol_x);
    ys[j] = PixelCoordinate<kPadding, kAlign>(grid[2 * j + 1], h, tol_y);
  }
}

void Coordinates(const float* grid, int m, int64_t h, int64_t w, int32_t padding, bool align, float* xs, float* ys) {
  switch (padding * 2 + align) {
    case kZeros * 2: return CoordinatesOf<kZeros, false>(grid, m, h, w, xs, ys);
    case kZeros * 2 + 1: return CoordinatesOf<kZeros, true>(grid, m, h, w, xs, ys);
    case kBorder * 2: return CoordinatesOf<kBorder, false>(grid, m, h, w, xs, ys);
    case kBorder * 2 + 1: return CoordinatesOf<kBorder, true>(grid, m, h, w, xs, ys);
    case kReflection * 2: return CoordinatesOf<kReflection, false>(grid, m, h, w, xs, ys);
    default: return CoordinatesOf<kReflection, true>(grid, m, h, w, xs, ys);
  }
}

// Shapes: an image (..., H, W, C) with `rows` = the product of its leading dimensions, and points (rows, P).
struct Dims {
  int64_t rows, h, w, c, p;
};

// A point's interpolation of its four taps and the output's derivatives in x and y: the arithmetic of
// stn_jax.sampling's _lerp and of its JVP, in the same order.
struct Lerp {
  float value, d_x, d_y;
};

template <bool kJacobian>
inline Lerp Interpolate(float v00, float v01, float v10, float v11, float fx, float fy) {
  const float top = v00 + (v01 - v00) * fx;
  const float bottom = v10 + (v11 - v10) * fx;
  Lerp r{top + (bottom - top) * fy, 0.0f, 0.0f};
  if (kJacobian) {
    const float d_top = v01 - v00, d_bottom = v11 - v10, d_left = v10 - v00, d_right = v11 - v01;
    r.d_x = d_top + (d_bottom - d_top) * fy;
    r.d_y = d_left + (d_right - d_left) * fx;
  }
  return r;
}

// One image's points with kC channels (1 to 4): taps, reads and the lerp fused into one loop over the points that
// the compiler vectorises (the channels unrolled).
template <int kC, bool kJacobian>
__attribute__((noinline)) void RowFixed(const float* __restrict im, const float* __restrict xs,
                                        const float* __restrict ys, float* __restrict o, float* __restrict gx,
                                        float* __restrict gy, int64_t p, int32_t h, int32_t w) {
  for (int64_t i = 0; i < p; ++i) {
    const float x = xs[i], y = ys[i];
    const int32_t x0 = Floor(x), y0 = Floor(y);
    const float fx = x - static_cast<float>(x0), fy = y - static_cast<float>(y0);
    const bool x0_in = static_cast<uint32_t>(x0) < static_cast<uint32_t>(w);
    const bool x1_in = static_cast<uint32_t>(x0 + 1) < static_cast<uint32_t>(w);
    const bool y0_in = static_cast<uint32_t>(y0) < static_cast<uint32_t>(h);
    const bool y1_in = static_cast<uint32_t>(y0 + 1) < static_cast<uint32_t>(h);
    const int32_t xa = std::min(std::max(x0, 0), w - 1), xb = std::min(std::max(x0 + 1, 0), w - 1);
    const int32_t ya = std::min(std::max(y0, 0), h - 1) * w, yb = std::min(std::max(y0 + 1, 0), h - 1) * w;
    const int32_t o00 = (ya + xa) * kC, o01 = (ya + xb) * kC, o10 = (yb + xa) * kC, o11 = (yb + xb) * kC;
    const bool in00 = x0_in & y0_in, in01 = x1_in & y0_in, in10 = x0_in & y1_in, in11 = x1_in & y1_in;
    for (int ch = 0; ch < kC; ++ch) {
      float v00 = im[o00 + ch], v01 = im[o01 + ch], v10 = im[o10 + ch], v11 = im[o11 + ch];
      v00 = in00 ? v00 : 0.0f;
      v01 = in01 ? v01 : 0.0f;
      v10 = in10 ? v10 : 0.0f;
      v11 = in11 ? v11 : 0.0f;
      const Lerp r = Interpolate<kJacobian>(v00, v01, v10, v11, fx, fy);
      o[i * kC + ch] = r.value;
      if (kJacobian) {
        gx[i * kC + ch] = r.d_x;
        gy[i * kC + ch] = r.d_y;
      }
    }
  }
}

// One image's points, any number of channels: the taps of a block of points, then each point's channels.
template <bool kJacobian>
void RowChannels(const float* __restrict im, const float* __restrict xs, const float* __restrict ys,
                 float* __restrict o, float* __restrict gx, float* __restrict gy, int64_t p, const Dims& d) {
  Block t;
  for (int64_t i0 = 0; i0 < p; i0 += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, p - i0));
    TapsOf(xs + i0, ys + i0, m, d.h, d.w, d.c, &t);
    for (int j = 0; j < m; ++j) {
      const float* p00 = im + t.offset[0][j];
      const float* p01 = im + t.offset[1][j];
      const float* p10 = im + t.offset[2][j];
      const float* p11 = im + t.offset[3][j];
      const bool in00 = t.inside[0][j], in01 = t.inside[1][j], in10 = t.inside[2][j], in11 = t.inside[3][j];
      const float fx = t.fx[j], fy = t.fy[j];
      const int64_t base = (i0 + j) * d.c;
      for (int64_t ch = 0; ch < d.c; ++ch) {
        const float v00 = in00 ? p00[ch] : 0.0f, v01 = in01 ? p01[ch] : 0.0f;
        const float v10 = in10 ? p10[ch] : 0.0f, v11 = in11 ? p11[ch] : 0.0f;
        const Lerp r = Interpolate<kJacobian>(v00, v01, v10, v11, fx, fy);
        o[base + ch] = r.value;
        if (kJacobian) {
          gx[base + ch] = r.d_x;
          gy[base + ch] = r.d_y;
        }
      }
    }
  }
}

template <bool kJacobian>
inline void SampleRow(const float* im, const float* xs, const float* ys, float* o, float* gx, float* gy, int64_t p,
                      const Dims& d) {
  const int32_t h = static_cast<int32_t>(d.h), w = static_cast<int32_t>(d.w);
  switch (d.c) {
    case 1: return RowFixed<1, kJacobian>(im, xs, ys, o, gx, gy, p, h, w);
    case 2: return RowFixed<2, kJacobian>(im, xs, ys, o, gx, gy, p, h, w);
    case 3: return RowFixed<3, kJacobian>(im, xs, ys, o, gx, gy, p, h, w);
    case 4: return RowFixed<4, kJacobian>(im, xs, ys, o, gx, gy, p, h, w);
    default: return RowChannels<kJacobian>(im, xs, ys, o, gx, gy, p, d);
  }
}

int64_t Product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  int64_t n = 1;
  for (size_t k = begin; k < end; ++k) n *= dims[k];
  return n;
}

// An image (..., H, W, C) and coordinates (..., *points) (ix and iy alike, or a grid (..., *points, 2)) with the
// same leading dimensions: their Dims, or an error.
ffi::Error DimsOf(ffi::Span<const int64_t> image, ffi::Span<const int64_t> points, size_t trailing, Dims* d) {
  if (image.size() < 3 || points.size() < image.size() - 3 + trailing) {
    return ffi::Error::InvalidArgument("stn_bilinear: image must be (..., H, W, C), points (..., P...)");
  }
  const size_t lead = image.size() - 3;
  for (size_t k = 0; k < lead; ++k) {
    if (image[k] != points[k]) return ffi::Error::InvalidArgument("stn_bilinear: leading dimensions differ");
  }
  *d = Dims{Product(image, 0, lead), image[lead], image[lead + 1], image[lead + 2],
            Product(points, lead, points.size() - trailing)};
  if (d->h * d->w * d->c >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument("stn_bilinear: an image of 2**31 values or more");
  }
  return ffi::Error::Success();
}

ffi::Error SameShape(ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  if (a.size() != b.size() || !std::equal(a.begin(), a.end(), b.begin())) {
    return ffi::Error::InvalidArgument("stn_bilinear: ix and iy must have one shape");
  }
  return ffi::Error::Success();
}

// An image (..., H, W, C) and its points' coordinates ix and iy (..., *points), of one shape: their Dims, or an error.
ffi::Error PointDims(ffi::Span<const int64_t> image, ffi::Buffer<ffi::F32>& ix, ffi::Buffer<ffi::F32>& iy, Dims* d) {
  if (auto e = SameShape(ix.dimensions(), iy.dimensions()); e.failure()) return e;
  return DimsOf(image, ix.dimensions(), 0, d);
}

template <bool kJacobian>
ffi::Error SampleImpl(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& image, ffi::Buffer<ffi::F32>& ix,
                      ffi::Buffer<ffi::F32>& iy, float* o, float* gx, float* gy) {
  Dims d;
  if (auto e = PointDims(image.dimensions(), ix, iy, &d); e.failure()) return e;
  const float* img = image.typed_data();
  const float* xs = ix.typed_data();
  const float* ys = iy.typed_data();
  ForRows(pool, d.rows, (kJacobian ? 3 : 1) * d.p * d.c, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t at = b * d.p, out_at = at * d.c;
      SampleRow<kJacobian>(img + b * d.h * d.w * d.c, xs + at, ys + at, o + out_at, kJacobian ? gx + out_at : nullptr,
                           kJacobian ? gy + out_at : nullptr, d.p, d);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Sample(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> ix,
                  ffi::Buffer<ffi::F32> iy, ffi::ResultBuffer<ffi::F32> out) {
  return SampleImpl<false>(pool, image, ix, iy, out->typed_data(), nullptr, nullptr);
}

ffi::Error Jacobian(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> ix,
                    ffi::Buffer<ffi::F32> iy, ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> d_ix,
                    ffi::ResultBuffer<ffi::F32> d_iy) {
  return SampleImpl<true>(pool, image, ix, iy, out->typed_data(), d_ix->typed_data(), d_iy->typed_data());
}

// The sample at a normalised grid (..., *points, 2): the coordinates of a block of points, then the sample.
ffi::Error SampleGrid(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> grid,
                      ffi::ResultBuffer<ffi::F32> out, int32_t padding, bool align_corners) {
  Dims d;
  if (grid.dimensions().size() < 1 || grid.dimensions().back() != 2) {
    return ffi::Error::InvalidArgument("stn_bilinear: the grid must be (..., 2)");
  }
  if (padding < kZeros || padding > kReflection) return ffi::Error::InvalidArgument("stn_bilinear: padding 0, 1 or 2");
  if (auto e = DimsOf(image.dimensions(), grid.dimensions(), 1, &d); e.failure()) return e;
  const float* img = image.typed_data();
  const float* g = grid.typed_data();
  float* o = out->typed_data();
  ForRows(pool, d.rows, 2 * d.p * d.c, [&](int64_t begin, int64_t end) {
    float xs[kBlock], ys[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t i0 = 0; i0 < d.p; i0 += kBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kBlock, d.p - i0));
        const int64_t at = b * d.p + i0;
        Coordinates(g + 2 * at, m, d.h, d.w, padding, align_corners, xs, ys);
        SampleRow<false>(img + b * d.h * d.w * d.c, xs, ys, o + at * d.c, nullptr, nullptr, m, d);
      }
    }
  });
  return ffi::Error::Success();
}

// The sample at the affine grid of theta (..., 2, 3) over output pixel centres xs (W_out) and ys (H_out): each point
// (t00 x + t01 y + t02, t10 x + t11 y + t12), as stn_jax.grids.affine_grid computes it, then as SampleGrid.
ffi::Error SampleAffine(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> image, ffi::Buffer<ffi::F32> theta,
                        ffi::ResultBuffer<ffi::F32> out, ffi::Span<const float> xs, ffi::Span<const float> ys,
                        int32_t padding, bool align_corners) {
  Dims d;
  const auto t_dims = theta.dimensions();
  const int64_t w_out = static_cast<int64_t>(xs.size()), h_out = static_cast<int64_t>(ys.size());
  if (t_dims.size() < 2 || t_dims[t_dims.size() - 2] != 2 || t_dims.back() != 3) {
    return ffi::Error::InvalidArgument("stn_bilinear: theta must be (..., 2, 3)");
  }
  if (padding < kZeros || padding > kReflection) return ffi::Error::InvalidArgument("stn_bilinear: padding 0, 1 or 2");
  if (auto e = DimsOf(image.dimensions(), t_dims, 2, &d); e.failure()) return e;
  if (d.p != 1 || t_dims.size() != image.dimensions().size() - 1) {
    return ffi::Error::InvalidArgument("stn_bilinear: theta must have the image's leading dimensions");
  }
  d.p = h_out * w_out;
  const float* img = image.typed_data();
  const float* th = theta.typed_data();
  float* o = out->typed_data();
  ForRows(pool, d.rows, 2 * d.p * d.c, [&](int64_t begin, int64_t end) {
    float grid[2 * kBlock], cx[kBlock], cy[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const float* t = th + 6 * b;
      for (int64_t r = 0; r < h_out; ++r) {
        const float y = ys[r];
        for (int64_t c0 = 0; c0 < w_out; c0 += kBlock) {
          const int m = static_cast<int>(std::min<int64_t>(kBlock, w_out - c0));
          for (int j = 0; j < m; ++j) {
            const float x = xs[c0 + j];
            grid[2 * j] = t[0] * x + t[1] * y + t[2];
            grid[2 * j + 1] = t[3] * x + t[4] * y + t[5];
          }
          Coordinates(grid, m, d.h, d.w, padding, align_corners, cx, cy);
          const int64_t at = b * d.p + r * w_out + c0;
          SampleRow<false>(img + b * d.h * d.w * d.c, cx, cy, o + at * d.c, nullptr, nullptr, m, d);
        }
      }
    }
  });
  return ffi::Error::Success();
}

// Volumes (..., D, H, W, C) at voxel-index points (ix, iy, iz), each (..., P): trilinear sampling with zeros outside
// and its transpose in the volume, in the arithmetic of stn_jax.sampling's _trilinear_combine (the weight of a tap
// is ((1 * wx) * wy) * wz, w the fraction or 1 minus it; taps summed x fastest, then y, then z).
struct Taps3 {
  int64_t offset[8];
  bool inside[8];
  float weight[8];
};

inline Taps3 TapsOf3(float x, float y, float z, int64_t d, int64_t h, int64_t w, int64_t c) {
  Taps3 t;
  const int32_t x0 = Floor(x), y0 = Floor(y), z0 = Floor(z);
  const float f[3] = {x - static_cast<float>(x0), y - static_cast<float>(y0), z - static_cast<float>(z0)};
  int k = 0;
  for (int dz = 0; dz < 2; ++dz) {
    for (int dy = 0; dy < 2; ++dy) {
      for (int dx = 0; dx < 2; ++dx, ++k) {
        const int64_t xi = x0 + dx, yi = y0 + dy, zi = z0 + dz;
        t.inside[k] = xi >= 0 && xi < w && yi >= 0 && yi < h && zi >= 0 && zi < d;
        t.offset[k] = t.inside[k] ? ((zi * h + yi) * w + xi) * c : 0;
        float weight = 1.0f;
        weight = weight * (dx ? f[0] : 1.0f - f[0]);
        weight = weight * (dy ? f[1] : 1.0f - f[1]);
        weight = weight * (dz ? f[2] : 1.0f - f[2]);
        t.weight[k] = weight;
      }
    }
  }
  return t;
}

struct Dims3 {
  int64_t rows, d, h, w, c, p;
};

ffi::Error DimsOf3(ffi::Span<const int64_t> volume, ffi::Span<const int64_t> points, Dims3* out) {
  if (volume.size() < 4 || points.size() < volume.size() - 4) {
    return ffi::Error::InvalidArgument("stn_trilinear: volume must be (..., D, H, W, C), points (..., P...)");
  }
  const size_t lead = volume.size() - 4;
  for (size_t k = 0; k < lead; ++k) {
    if (volume[k] != points[k]) return ffi::Error::InvalidArgument("stn_trilinear: leading dimensions differ");
  }
  *out = Dims3{Product(volume, 0, lead), volume[lead],     volume[lead + 1],
               volume[lead + 2],         volume[lead + 3], Product(points, lead, points.size())};
  return ffi::Error::Success();
}

ffi::Error PointDims3(ffi::Span<const int64_t> volume, ffi::Buffer<ffi::F32>& ix, ffi::Buffer<ffi::F32>& iy,
                      ffi::Buffer<ffi::F32>& iz, Dims3* d) {
  if (auto e = SameShape(ix.dimensions(), iy.dimensions()); e.failure()) return e;
  if (auto e = SameShape(ix.dimensions(), iz.dimensions()); e.failure()) return e;
  return DimsOf3(volume, ix.dimensions(), d);
}

ffi::Error Sample3(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> volume, ffi::Buffer<ffi::F32> ix,
                   ffi::Buffer<ffi::F32> iy, ffi::Buffer<ffi::F32> iz, ffi::ResultBuffer<ffi::F32> out) {
  Dims3 d;
  if (auto e = PointDims3(volume.dimensions(), ix, iy, iz, &d); e.failure()) return e;
  const float *vol = volume.typed_data(), *xs = ix.typed_data(), *ys = iy.typed_data(), *zs = iz.typed_data();
  float* o = out->typed_data();
  const int64_t size = d.d * d.h * d.w * d.c;
  ForRows(pool, d.rows, 8 * d.p * d.c, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* v = vol + b * size;
      for (int64_t i = b * d.p; i < (b + 1) * d.p; ++i) {
        const Taps3 t = TapsOf3(xs[i], ys[i], zs[i], d.d, d.h, d.w, d.c);
        for (int64_t ch = 0; ch < d.c; ++ch) {
          float acc = 0.0f;
          for (int k = 0; k < 8; ++k) acc = acc + t.weight[k] * (t.inside[k] ? v[t.offset[k] + ch] : 0.0f);
          o[i * d.c + ch] = acc;
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Scatter3(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> cotangent, ffi::Buffer<ffi::F32> ix,
                    ffi::Buffer<ffi::F32> iy, ffi::Buffer<ffi::F32> iz, ffi::ResultBuffer<ffi::F32> d_volume) {
  Dims3 d;
  if (auto e = PointDims3(d_volume->dimensions(), ix, iy, iz, &d); e.failure()) return e;
  const float *g = cotangent.typed_data(), *xs = ix.typed_data(), *ys = iy.typed_data(), *zs = iz.typed_data();
  float* out = d_volume->typed_data();
  const int64_t size = d.d * d.h * d.w * d.c;
  ForRows(pool, d.rows, 8 * d.p * d.c + size, [&](int64_t begin, int64_t end) {
    std::memset(out + begin * size, 0, sizeof(float) * (end - begin) * size);
    for (int64_t b = begin; b < end; ++b) {
      float* v = out + b * size;
      for (int64_t i = b * d.p; i < (b + 1) * d.p; ++i) {
        const Taps3 t = TapsOf3(xs[i], ys[i], zs[i], d.d, d.h, d.w, d.c);
        for (int k = 0; k < 8; ++k) {
          if (!t.inside[k]) continue;
          for (int64_t ch = 0; ch < d.c; ++ch) v[t.offset[k] + ch] += t.weight[k] * g[i * d.c + ch];
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The transpose of the sample in the image: each point adds g times its four bilinear weights to its taps (in the
// order top-left, top-right, bottom-left, bottom-right, point after point). Rows are independent images, so threads
// split rows; within a row the taps are computed a block at a time (vectorised) and added serially.
ffi::Error Scatter(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> cotangent, ffi::Buffer<ffi::F32> ix,
                   ffi::Buffer<ffi::F32> iy, ffi::ResultBuffer<ffi::F32> d_image) {
  Dims d;
  if (auto e = PointDims(d_image->dimensions(), ix, iy, &d); e.failure()) return e;
  const float* g = cotangent.typed_data();
  const float* xs = ix.typed_data();
  const float* ys = iy.typed_data();
  float* out = d_image->typed_data();
  const int64_t size = d.h * d.w * d.c;
  ForRows(pool, d.rows, d.p * d.c + size, [&](int64_t begin, int64_t end) {
    std::memset(out + begin * size, 0, sizeof(float) * (end - begin) * size);
    Block t;
    for (int64_t b = begin; b < end; ++b) {
      float* im = out + b * size;
      for (int64_t i0 = 0; i0 < d.p; i0 += kBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kBlock, d.p - i0));
        const int64_t at = b * d.p + i0;
        TapsOf(xs + at, ys + at, m, d.h, d.w, d.c, &t);
        for (int j = 0; j < m; ++j) {
          const float fx = t.fx[j], fy = t.fy[j];
          for (int64_t ch = 0; ch < d.c; ++ch) {
            // The transpose of the lerp: top and bottom get g (1 - fy) and g fy, each tap its share of them. An
            // outside tap adds zero to its clamped (in-image) pixel, so nothing branches.
            const float gi = g[(at + j) * d.c + ch];
            const float g_bottom = gi * fy;
            const float g_top = gi - g_bottom;
            const float g01 = g_top * fx, g11 = g_bottom * fx;
            const float g00 = g_top - g01, g10 = g_bottom - g11;
            im[t.offset[0][j] + ch] += t.inside[0][j] ? g00 : 0.0f;
            im[t.offset[1][j] + ch] += t.inside[1][j] ? g01 : 0.0f;
            im[t.offset[2][j] + ch] += t.inside[2][j] ? g10 : 0.0f;
            im[t.offset[3][j] + ch] += t.inside[3][j] ? g11 : 0.0f;
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearSample, Sample,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearJacobian, Jacobian,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearSampleGrid, SampleGrid,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearSampleAffine, SampleAffine,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const float>>("xs")
                                  .Attr<ffi::Span<const float>>("ys")
                                  .Attr<int32_t>("padding")
                                  .Attr<bool>("align_corners"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnTrilinearSample, Sample3,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnTrilinearScatter, Scatter3,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnBilinearScatter, Scatter,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

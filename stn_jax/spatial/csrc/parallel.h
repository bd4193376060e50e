// Work splitting for stn_jax's CPU kernels (bilinear.cc, layers.cc) on XLA's intra-op thread pool: the caller takes
// chunks too and waits only for chunks another thread has started, so a busy pool cannot deadlock.

#ifndef STN_JAX_CSRC_PARALLEL_H_
#define STN_JAX_CSRC_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace stn_jax {

namespace ffi = xla::ffi;

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t chunks = 0;
  std::mutex mutex;
  std::condition_variable finished;
  std::function<void(int64_t)> body;
};

// Runs body(k) for k in [0, chunks) on the caller and up to `helpers` pool threads.
inline void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, std::function<void(int64_t)> body) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  if (helpers <= 0) {
    for (int64_t k = 0; k < chunks; ++k) body(k);
    return;
  }
  auto shared = std::make_shared<Shared>();
  shared->chunks = chunks;
  shared->body = std::move(body);
  auto work = [shared]() {
    for (int64_t k = shared->next.fetch_add(1); k < shared->chunks; k = shared->next.fetch_add(1)) {
      shared->body(k);
      if (shared->done.fetch_add(1) + 1 == shared->chunks) {
        std::lock_guard<std::mutex> lock(shared->mutex);
        shared->finished.notify_all();
      }
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(std::function<void()>(work));
  work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->finished.wait(lock, [&] { return shared->done.load() == shared->chunks; });
}

// Splits rows [0, n) into chunks of about `min_work` values each (at least one row), at most 4 per thread.
template <typename F>
void ForRows(ffi::ThreadPool& pool, int64_t n, int64_t work_per_row, F&& rows) {
  const int64_t min_work = 1 << 15;
  int64_t by_work = std::max<int64_t>(1, (n * work_per_row) / min_work);
  int64_t chunks = std::min<int64_t>({n, by_work, 4 * (pool.num_threads() + 1)});
  if (chunks <= 1) {
    rows(0, n);
    return;
  }
  ParallelFor(pool, chunks, [&](int64_t k) { rows(n * k / chunks, n * (k + 1) / chunks); });
}

}  // namespace stn_jax

#endif  // STN_JAX_CSRC_PARALLEL_H_

// Multithreaded loops for the CPU kernels. std::thread rather than OpenMP: torch wheels bring
// their own OpenMP runtime and two runtimes in one process fight over threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace rdc {

// Number of contiguous chunks of at least `grain` items that [0, n) is split into.
inline int64_t parallel_chunks(int64_t n, int num_threads, int64_t grain) {
  if (n <= 0) return 0;
  const int64_t by_grain = (n + std::max<int64_t>(grain, 1) - 1) / std::max<int64_t>(grain, 1);
  return std::max<int64_t>(1, std::min<int64_t>(std::max(num_threads, 1), by_grain));
}

// Runs f(chunk, begin, end) for the parallel_chunks() contiguous chunks of [0, n), one thread
// each; chunk c always covers the c-th part, so callers can merge per-chunk results in order.
// A single chunk runs inline on the calling thread.
template <typename F>
void parallel_for_chunks(int64_t n, int num_threads, int64_t grain, F&& f) {
  const int64_t chunks = parallel_chunks(n, num_threads, grain);
  if (chunks == 0) return;
  const int64_t step = (n + chunks - 1) / chunks;
  if (chunks == 1) {
    f(int64_t(0), int64_t(0), n);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(chunks - 1);
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t b = std::min(n, c * step), e = std::min(n, b + step);
    workers.emplace_back([&f, c, b, e] { f(c, b, e); });
  }
  f(int64_t(0), int64_t(0), std::min(n, step));
  for (auto& w : workers) w.join();
}

// parallel_for_chunks without the chunk index.
template <typename F>
void parallel_for(int64_t n, int num_threads, int64_t grain, F&& f) {
  parallel_for_chunks(n, num_threads, grain, [&f](int64_t, int64_t b, int64_t e) { f(b, e); });
}

}  // namespace rdc

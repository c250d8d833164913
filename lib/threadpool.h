// A small persistent thread pool for data-parallel loops. The calling thread
// takes part, so a pool of size 1 has no worker threads at all. Workers spin
// briefly before sleeping, which keeps the per-loop cost low in decode (a
// few hundred loops per token). Jobs are passed as a function pointer plus
// context, so running a loop never allocates.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace qwen35 {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Every thread (caller included) runs fn(thread_index, n_threads) once.
  template <class Fn>
  void run(Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run_raw([](void* c, int i, int n) { (*static_cast<F*>(c))(i, n); }, const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // Split [0, n) into contiguous ranges, one per thread, aligned to `grain`;
  // fn(begin, end) runs once per non-empty range.
  template <class Fn>
  void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
    if (n <= 0) return;
    grain = grain < 1 ? 1 : grain;
    const int64_t chunks = (n + grain - 1) / grain;
    if (n_threads_ == 1 || chunks == 1) {
      fn(int64_t(0), n);
      return;
    }
    run([&](int t, int nt) {
      const int64_t c0 = chunks * t / nt, c1 = chunks * (t + 1) / nt;
      const int64_t b = c0 * grain < n ? c0 * grain : n, e = c1 * grain < n ? c1 * grain : n;
      if (b < e) fn(b, e);
    });
  }

  // The untyped form of run(): fn(ctx, thread_index, n_threads).
  void run_raw(void (*fn)(void*, int, int), void* ctx);

  // Physical cores of this machine (at least 1).
  static int default_threads();

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  void (*job_)(void*, int, int) = nullptr;
  void* job_ctx_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace qwen35

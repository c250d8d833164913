// A small persistent thread pool for data-parallel loops. The calling thread
// takes part, so a pool of size 1 has no worker threads at all. Workers spin
// briefly before sleeping, which keeps the per-loop cost low in decode (a
// few hundred loops per token).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
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
  void run(const std::function<void(int, int)>& fn);

  // Split [0, n) into contiguous ranges, one per thread, aligned to `grain`.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // Physical cores of this machine (at least 1).
  static int default_threads();

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace qwen35

#include "threadpool.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QWEN35_PAUSE() _mm_pause()
#else
#define QWEN35_PAUSE() std::this_thread::yield()
#endif

namespace qwen35 {

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  threads_.reserve(size_t(n_threads_ - 1));
  try {
    for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
  } catch (...) {
    // A thread could not start (std::system_error): stop the ones that did,
    // so the exception reaches the caller instead of std::terminate.
    stop_.store(true, std::memory_order_release);
    publish((uint64_t(++gen_) << 32) | kClosed);
    for (auto& t : threads_) t.join();
    throw;
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  publish((uint64_t(++gen_) << 32) | kClosed);
  for (auto& t : threads_) t.join();
}

void ThreadPool::publish(uint64_t word) {
  {
    // Under the lock, so that a worker about to sleep cannot miss the change.
    std::lock_guard<std::mutex> lk(mu_);
    state_.store(word, std::memory_order_release);
  }
  cv_.notify_all();
}

void ThreadPool::worker(int index) {
  uint32_t seen = 0;
  for (;;) {
    // Spin first: in decode the next loop usually arrives within microseconds.
    uint64_t s = state_.load(std::memory_order_acquire);
    for (int spin = 0; uint32_t(s >> 32) == seen && spin < 20000; ++spin) {
      QWEN35_PAUSE();
      s = state_.load(std::memory_order_acquire);
    }
    if (uint32_t(s >> 32) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return uint32_t(state_.load(std::memory_order_acquire) >> 32) != seen; });
      s = state_.load(std::memory_order_acquire);
    }
    seen = uint32_t(s >> 32);
    if (stop_.load(std::memory_order_acquire)) return;
    if (s & kAll) {
      // The owner waits for every worker: always run it.
      run_fn_(ctx_, index, n_threads_);
      state_.fetch_sub(1, std::memory_order_acq_rel);
      continue;
    }
    // A chunked loop: join only while it is open (the job fields are read
    // only after joining, when the owner cannot replace them).
    while (uint32_t(s >> 32) == seen && !(s & kClosed)) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        claim_chunks(index);
        state_.fetch_sub(1, std::memory_order_acq_rel);
        break;
      }
    }
  }
}

void ThreadPool::claim_chunks(int index) {
  for (;;) {
    const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (c >= n_chunks_) return;
    const int64_t b = c * grain_;
    chunk_fn_(ctx_, b, std::min(n_items_, b + grain_), index);
  }
}

void ThreadPool::wait_count_zero() {
  for (int spin = 0; (state_.load(std::memory_order_acquire) & kCount) != 0; ++spin) {
    if (spin < 4000) QWEN35_PAUSE();
    else std::this_thread::yield();  // the worker we wait for may need this core
  }
}

void ThreadPool::run_raw(void (*fn)(void*, int, int), void* ctx) {
  if (n_threads_ == 1) {
    fn(ctx, 0, 1);
    return;
  }
  run_fn_ = fn;
  ctx_ = ctx;
  publish((uint64_t(++gen_) << 32) | kAll | kClosed | uint64_t(n_threads_ - 1));
  fn(ctx, 0, n_threads_);
  wait_count_zero();
}

void ThreadPool::note_stall(double loop_us, double wait_us) {
  // A straggler cost more than the loop's own work (and more than a wake-up):
  // some worker was preempted.
  if (wait_us > 100.0 && wait_us > loop_us) {
    solo_backoff_ = std::min(solo_backoff_ > 0 ? 2 * solo_backoff_ : 32, 4096);
    solo_loops_ = solo_backoff_;
  } else if (solo_backoff_ > 0 && wait_us < 20.0) {
    solo_backoff_ /= 2;  // calm again: shorter stretches next time
  }
}

void ThreadPool::chunks_raw(int64_t n, int64_t grain, void (*fn)(void*, int64_t, int64_t, int), void* ctx) {
  const int64_t n_chunks = (n + grain - 1) / grain;
  if (n_threads_ == 1 || n_chunks == 1 || solo_loops_ > 0) {
    if (solo_loops_ > 0 && n_chunks > 1) --solo_loops_;
    for (int64_t b = 0; b < n; b += grain) fn(ctx, b, std::min(n, b + grain), 0);
    return;
  }
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  chunk_fn_ = fn;
  ctx_ = ctx;
  n_items_ = n;
  grain_ = grain;
  n_chunks_ = n_chunks;
  next_chunk_.store(0, std::memory_order_relaxed);
  publish(uint64_t(++gen_) << 32);
  claim_chunks(0);
  // No new worker may join; wait for those that did to finish their chunk.
  state_.fetch_or(kClosed, std::memory_order_acq_rel);
  const auto t1 = Clock::now();
  wait_count_zero();
  const auto t2 = Clock::now();
  note_stall(std::chrono::duration<double, std::micro>(t1 - t0).count(),
             std::chrono::duration<double, std::micro>(t2 - t1).count());
}

int ThreadPool::default_threads() {
  // Count distinct (physical id, core id) pairs; fall back to the logical count.
  std::ifstream in("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int phys = 0;
  while (std::getline(in, line)) {
    if (line.rfind("physical id", 0) == 0) phys = std::atoi(line.c_str() + line.find(':') + 1);
    if (line.rfind("core id", 0) == 0) cores.emplace(phys, std::atoi(line.c_str() + line.find(':') + 1));
  }
  int n = int(cores.size());
  if (n <= 0) n = int(std::thread::hardware_concurrency());
  return std::clamp(n, 1, 16);
}

}  // namespace qwen35

// A small persistent thread pool for data-parallel loops. The calling thread
// takes part, so a pool of size 1 has no worker threads at all. Workers spin
// briefly before sleeping, which keeps the per-loop cost low in decode (a
// few hundred loops per token). Jobs are passed as a function pointer plus
// context, so running a loop never allocates.
//
// parallel_chunks hands out work dynamically (an atomic counter over chunks)
// and workers join it only while work remains: on a busy machine a worker that the OS
// has descheduled does not hold the loop up; the threads that run simply take
// its share. Results must therefore not depend on which thread runs a chunk
// (the thread index is only for per-thread scratch).
//
// A worker preempted in the middle of a chunk still stalls the loop until the
// OS runs it again (milliseconds when other programs compete for the cores,
// as on a game client). When the caller waits longer for stragglers than the
// loop itself took, the pool runs the next loops on the calling thread alone
// for a while (backing off exponentially while stalls recur), then tries the
// workers again.
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

  // Items [0, n) in chunks of `grain`: fn(begin, end, thread_index) once per
  // chunk, on whichever thread claims it.
  template <class Fn>
  void parallel_chunks(int64_t n, int64_t grain, Fn&& fn) {
    if (n <= 0) return;
    grain = grain < 1 ? 1 : grain;
    using F = std::remove_reference_t<Fn>;
    chunks_raw(
        n, grain,
        [](void* c, int64_t b, int64_t e, int t) { (*static_cast<F*>(c))(b, e, t); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // Split [0, n) into contiguous ranges, one per thread, aligned to `grain`;
  // fn(begin, end) once per non-empty range. Waits for every worker (as
  // run() does); prefer parallel_chunks where the work can be claimed.
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

  // Every thread (caller included) runs fn(thread_index, n_threads) once and
  // the call returns when all have: for work that must be split statically.
  template <class Fn>
  void run(Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run_raw([](void* c, int i, int n) { (*static_cast<F*>(c))(i, n); },
            const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // The untyped forms.
  void run_raw(void (*fn)(void*, int, int), void* ctx);
  void chunks_raw(int64_t n, int64_t grain, void (*fn)(void*, int64_t, int64_t, int), void* ctx);

  // Physical cores of this machine (at least 1).
  static int default_threads();

 private:
  // The job word: generation (bits 32-63), kind (bit 31: 1 = every thread
  // runs it), closed (bit 30: no worker may join any more), count (bits
  // 0-29: workers still running it).
  static constexpr uint64_t kAll = 1ull << 31, kClosed = 1ull << 30, kCount = (1ull << 30) - 1;

  void worker(int index);
  void publish(uint64_t word);
  void claim_chunks(int index);
  void wait_count_zero();
  void note_stall(double loop_us, double wait_us);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  uint32_t gen_ = 0;  // generation of the last job (owner thread only)
  int solo_loops_ = 0;    // chunked loops still to run on the caller alone
  int solo_backoff_ = 0;  // length of the next solo stretch (0: none yet)

  // The current job; written before it is published, stable until it ends.
  void (*run_fn_)(void*, int, int) = nullptr;
  void (*chunk_fn_)(void*, int64_t, int64_t, int) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_items_ = 0, grain_ = 1, n_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};

  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace qwen35

// ThreadPool: a fixed set of workers for data-parallel kernels. Decode issues hundreds of small
// parallel regions per token, so workers spin briefly on an atomic generation counter before
// sleeping; a dispatch costs ~1 µs while hot instead of a condition-variable round trip.
// Not reentrant: run() must not be called from inside a running task. One caller at a time.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nb {

class ThreadPool {
 public:
  // num_threads counts the calling thread; num_threads <= 0 means hardware concurrency.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }
  // Runs fn(thread_index, num_threads) on every thread (the caller is index 0) and waits for all.
  void run(const std::function<void(int, int)>& fn);
  // Splits [0, n) into num_threads contiguous chunks aligned to `grain`; fn(begin, end) per chunk.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

 private:
  void worker_loop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* task_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace nb

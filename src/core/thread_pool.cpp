#include "core/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#define NB_PAUSE() _mm_pause()
#else
#define NB_PAUSE() ((void)0)
#endif

namespace nb {

namespace {
constexpr int kSpinIterations = 1 << 16;  // ~a few hundred µs of spinning before sleeping
// After this many pauses a spinning thread also yields its core: when the machine is
// oversubscribed, the thread we wait for may need our core to finish.
constexpr int kYieldAfter = 256;
}

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads_ = num_threads;
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    uint64_t g;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        if (spins > kYieldAfter) {
          std::this_thread::yield();
        } else {
          NB_PAUSE();
        }
        continue;
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = g;
    if (stop_.load()) return;
    (*task_)(index, num_threads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (num_threads_ == 1) {
    fn(0, 1);
    return;
  }
  task_ = &fn;
  pending_.store(num_threads_ - 1, std::memory_order_release);
  {
    // Taking the lock orders the bump against a worker that is about to sleep.
    std::lock_guard<std::mutex> lock(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  fn(0, num_threads_);
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins > kYieldAfter) {
      std::this_thread::yield();
    } else {
      NB_PAUSE();
    }
  }
  task_ = nullptr;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t num_grains = (n + grain - 1) / grain;
  const int used = static_cast<int>(std::min<int64_t>(num_threads_, num_grains));
  if (used <= 1) {
    fn(0, n);
    return;
  }
  run([&](int t, int) {
    if (t >= used) return;
    const int64_t g0 = num_grains * t / used, g1 = num_grains * (t + 1) / used;
    const int64_t b = g0 * grain, e = std::min(n, g1 * grain);
    if (b < e) fn(b, e);
  });
}

}  // namespace nb

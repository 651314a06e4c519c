// Used by tests/gpu/emu/run.sh only (see there).
// CPU emulation of the CUDA execution model for kernel logic checks: a block's threads are fibers
// (ucontext) in one OS thread, resumed in a random order each round; __syncthreads and warp syncs
// are scheduling points; a barrier that not all live threads reach is reported (deadlock).
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

// Included before the built-in variable macros below: its host code names members gridDim/blockDim
// (cudaLaunchConfig_t), which those macros would rewrite.
#include "backend/cuda/common.cuh"

#undef __shared__
#define __shared__ static
#undef __global__
#define __global__
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace emu {
enum State { kRun, kWaitBlock, kWaitWarp, kDone };
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = kRun;
};
struct Sched {
  ucontext_t main;
  std::vector<Fiber> fibers;
  int cur = -1;
  uint3 block;
  dim3 bdim, gdim;
  float xchg_f[1024];
  std::function<void()> fn;
  std::mt19937 rng{12345};
};
inline Sched& S() { static Sched s; return s; }
inline void yield_as(State st) {
  Sched& s = S();
  s.fibers[s.cur].state = st;
  swapcontext(&s.fibers[s.cur].ctx, &s.main);
}
inline void entry() {
  S().fn();
  yield_as(kDone);
}
inline void run_block(int nthreads) {
  Sched& s = S();
  s.fibers.resize(nthreads);
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = s.fibers[i];
    f.state = kRun;
    f.stack.resize(256 * 1024);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
  }
  // Scheduling: run one random runnable thread to its next sync point; release a warp the moment
  // all its live lanes reach a warp sync, the block when all live threads reach __syncthreads. So
  // warps drift apart between block barriers as far as CUDA allows, exposing missing barriers.
  std::vector<int> runnable;
  for (;;) {
    runnable.clear();
    for (int i = 0; i < nthreads; ++i)
      if (s.fibers[i].state == kRun) runnable.push_back(i);
    if (!runnable.empty()) {
      const int i = runnable[std::uniform_int_distribution<int>(0, static_cast<int>(runnable.size()) - 1)(s.rng)];
      s.cur = i;
      swapcontext(&s.main, &s.fibers[i].ctx);
      const int w = i / 32;
      int waiting = 0, live = 0;
      for (int l = w * 32; l < std::min(nthreads, w * 32 + 32); ++l) {
        if (s.fibers[l].state != kDone) ++live;
        if (s.fibers[l].state == kWaitWarp) ++waiting;
      }
      if (waiting > 0 && waiting == live)
        for (int l = w * 32; l < std::min(nthreads, w * 32 + 32); ++l) s.fibers[l].state = kRun;
      continue;
    }
    int waiting = 0, live = 0, warp_waiting = 0;
    for (auto& f : s.fibers) {
      if (f.state != kDone) ++live;
      if (f.state == kWaitBlock) ++waiting;
      if (f.state == kWaitWarp) ++warp_waiting;
    }
    if (live == 0) return;
    if (warp_waiting > 0 || waiting != live) {
      fprintf(stderr, "EMU: deadlock (%d live, %d at __syncthreads, %d at a warp sync)\n", live, waiting, warp_waiting);
      abort();
    }
    for (auto& f : s.fibers) if (f.state == kWaitBlock) f.state = kRun;
  }
}
template <class F, class... Rest>
void launch(F f, dim3 g, dim3 b, Rest...) {
  Sched& s = S();
  s.gdim = g;
  s.bdim = b;
  s.fn = f;
  const int n = b.x * b.y * b.z;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        s.block = uint3{x, y, z};
        run_block(n);
      }
}
inline uint3 tid() { return uint3{static_cast<unsigned>(S().cur), 0, 0}; }
}  // namespace emu

#define threadIdx (::emu::tid())
#define blockIdx (::emu::S().block)
#define blockDim (::emu::S().bdim)
#define gridDim (::emu::S().gdim)
inline void __syncthreads() { emu::yield_as(emu::kWaitBlock); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield_as(emu::kWaitWarp); }
inline float __shfl_xor_sync(unsigned, float v, int o, int = 32) {
  auto& s = emu::S();
  const int me = s.cur;
  s.xchg_f[me] = v;
  __syncwarp();
  const int lane = me % 32, base = me - lane;
  const float r = s.xchg_f[base + (lane ^ o)];
  __syncwarp();
  return r;
}
// Blocks run one after another and a fiber yields only at a sync point, so a read-modify-write is atomic.
inline int atomicAdd(int* p, int v) { const int o = *p; *p += v; return o; }
inline float atomicAdd(float* p, float v) { const float o = *p; *p += v; return o; }
inline void __threadfence() {}
template <class T>
inline T __ldcg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
using std::min;
using std::max;
#define cudaGetLastError() cudaSuccess
#include "emu_mma.h"

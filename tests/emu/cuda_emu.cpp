// The fiber scheduler of the CUDA emulation (see cuda_emu.h).
#include "cuda_emu.h"

#include <ucontext.h>

#include <cstdint>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

// The CUDA runtime call of the kernel files' host code (the emulation
// links no runtime): the launch error query (launch() reports errors itself).
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }

namespace qwen35::emu {

uint3 g_block_idx;
dim3 g_block_dim, g_grid_dim;

namespace {

// ---- fiber contexts ------------------------------------------------------------------
//
// glibc's swapcontext saves and restores the signal mask, a system call
// per switch: ~1.3 us each on some virtual machines, which made the
// emulated test suites several times slower there (CI's time limit). On
// x86-64 (without sanitizers, which need to see stack switches) a fiber
// switch is a few instructions instead: push the callee-saved registers,
// MXCSR and the x87 control word, swap stack pointers, pop. Elsewhere the
// ucontext functions remain.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#if defined(__has_feature)
#if !__has_feature(address_sanitizer) && !__has_feature(thread_sanitizer)
#define QWEN35_EMU_FAST_SWITCH 1
#endif
#else
#define QWEN35_EMU_FAST_SWITCH 1
#endif
#endif

#ifdef QWEN35_EMU_FAST_SWITCH
}  // namespace
}  // namespace qwen35::emu

// qwen35_emu_switch(&from_sp, to_sp): saves this context on its stack and
// *from_sp, resumes the one saved at to_sp.
extern "C" void qwen35_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .p2align 4
  .globl qwen35_emu_switch
  .type qwen35_emu_switch, @function
qwen35_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size qwen35_emu_switch, .-qwen35_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace qwen35::emu {
namespace {

struct Context {
  void* sp = nullptr;
};

void switch_context(Context* from, Context* to) { qwen35_emu_switch(&from->sp, to->sp); }

// A context that starts entry() on the stack [stack, stack + bytes): the
// frame qwen35_emu_switch pops (this thread's MXCSR and control word, zero
// registers, entry as the return address), entered as if called (the stack
// pointer 8 past a 16-byte boundary). entry must never return.
void make_context(Context* c, char* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top - 72);
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  frame[0] = uint64_t(mxcsr) | (uint64_t(fpcw) << 32);       // top - 72
  for (int i = 1; i <= 6; ++i) frame[i] = 0;                  // r15 r14 r13 r12 rbx rbp
  frame[7] = reinterpret_cast<uint64_t>(entry);               // top - 16: the return address
  frame[8] = 0;                                               // top - 8: entry's (never used) return address
  c->sp = frame;
}
#else
struct Context {
  ucontext_t uc;
};

void switch_context(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }

void make_context(Context* c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
#endif

enum class Wait { None, Block, Warp, Done };

struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
};

struct Fiber {
  Context ctx;
  uint3 tid;
  int linear = 0;
  Wait wait = Wait::None;
  int parity = 0;  // of the warp exchange buffer this thread wrote
  std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                 // not yet committed
};

struct Warp {
  uint64_t slot[2][32] = {};
  int slot_gen[2][32] = {};  // the exchange (generation) each slot was written for
  int gen = 0;
  unsigned char big[2][32][kMaxGather] = {};  // warp_allgather
  int big_gen[2][32] = {};
};

constexpr size_t kStackBytes = 256 * 1024;

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned char> smem;
  const std::function<void()>* fn = nullptr;
  Context sched;
  Fiber* cur = nullptr;
  std::string error;
};

Block* g_block = nullptr;
bool g_reverse = false;
std::string g_last_error;
const uint3 kNoThread = {0, 0, 0};

void fiber_main() {
  Block& b = *g_block;
  (*b.fn)();
  b.cur->wait = Wait::Done;
  switch_context(&b.cur->ctx, &b.sched);  // (never resumed)
}

void yield(Wait w) {
  Block& b = *g_block;
  Fiber* f = b.cur;
  f->wait = w;
  switch_context(&f->ctx, &b.sched);
}

// Releases the barriers every live thread (of the block, or of a warp) waits
// at. False: nothing could be released (a deadlock).
bool release() {
  Block& b = *g_block;
  bool all_block = true, any_live = false;
  for (const Fiber& f : b.fibers) {
    if (f.wait == Wait::Done) continue;
    any_live = true;
    if (f.wait != Wait::Block) all_block = false;
  }
  if (!any_live) return true;
  if (all_block) {
    for (Fiber& f : b.fibers)
      if (f.wait == Wait::Block) f.wait = Wait::None;
    return true;
  }
  bool released = false;
  for (size_t w = 0; w < b.warps.size(); ++w) {
    bool all = true, live = false;
    for (size_t i = w * 32; i < std::min(b.fibers.size(), w * 32 + 32); ++i) {
      const Fiber& f = b.fibers[i];
      if (f.wait == Wait::Done) continue;
      live = true;
      if (f.wait != Wait::Warp) all = false;
    }
    if (!live || !all) continue;
    for (size_t i = w * 32; i < std::min(b.fibers.size(), w * 32 + 32); ++i)
      if (b.fibers[i].wait == Wait::Warp) b.fibers[i].wait = Wait::None;
    b.warps[w].gen++;
    released = true;
  }
  return released;
}

std::string describe_waits() {
  Block& b = *g_block;
  std::string s;
  for (const Fiber& f : b.fibers) {
    const char* w = f.wait == Wait::Block ? "syncthreads" : f.wait == Wait::Warp ? "warp" : f.wait == Wait::Done ? "exited" : "running";
    s += std::to_string(f.linear) + ":" + w + " ";
    if (s.size() > 600) break;
  }
  return s;
}

}  // namespace

const uint3& thread_idx() { return g_block && g_block->cur ? g_block->cur->tid : kNoThread; }

void sync_block() { yield(Wait::Block); }

void sync_warp() { yield(Wait::Warp); }

uint64_t warp_exchange(uint64_t mine, int src) {
  Block& b = *g_block;
  Fiber* f = b.cur;
  const int w = f->linear / 32, lane = f->linear % 32;
  Warp& wp = b.warps[size_t(w)];
  const int gen = wp.gen, parity = gen & 1;
  wp.slot[parity][lane] = mine;
  wp.slot_gen[parity][lane] = gen + 1;  // + 1: a never-written slot (0) matches no exchange
  yield(Wait::Warp);
  if (src < 0 || src >= 32) return mine;
  if (wp.slot_gen[parity][src] != gen + 1) {  // the lane exited (or never existed) before this exchange
    if (b.error.empty()) b.error = "shuffle from lane " + std::to_string(src) + " which did not take part";
    return 0;
  }
  return wp.slot[parity][src];
}

bool warp_allgather(const void* mine, size_t bytes, void* all) {
  Block& b = *g_block;
  Fiber* f = b.cur;
  const int w = f->linear / 32, lane = f->linear % 32;
  Warp& wp = b.warps[size_t(w)];
  const int gen = wp.gen, parity = gen & 1;
  if (bytes > kMaxGather) {
    if (b.error.empty()) b.error = "warp_allgather of more than " + std::to_string(kMaxGather) + " bytes";
    return false;
  }
  std::memcpy(wp.big[parity][lane], mine, bytes);
  wp.big_gen[parity][lane] = gen + 1;
  yield(Wait::Warp);
  bool ok = true;
  for (int l = 0; l < 32; ++l) {
    unsigned char* dst = static_cast<unsigned char*>(all) + size_t(l) * bytes;
    if (wp.big_gen[parity][l] != gen + 1) {  // the lane exited or does not exist: a warp-wide op without it
      if (b.error.empty()) b.error = "warp-wide operation without lane " + std::to_string(l);
      std::memset(dst, 0, bytes);
      ok = false;
    } else {
      std::memcpy(dst, wp.big[parity][l], bytes);
    }
  }
  return ok;
}

void* dynamic_smem() { return g_block->smem.data(); }

void async_copy(void* dst, const void* src, size_t bytes) { g_block->cur->open.push_back({dst, src, bytes}); }

void async_commit() {
  Fiber* f = g_block->cur;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}

void async_wait(int keep) {
  Fiber* f = g_block->cur;
  while (int(f->groups.size()) > keep) {
    for (const Copy& c : f->groups.front()) std::memcpy(c.dst, c.src, c.bytes);
    f->groups.erase(f->groups.begin());
  }
}

namespace {
bool g_capturing = false;
bool g_capture_valid = true;
std::vector<Op> g_captured;
int64_t g_capture_violations = 0;
std::string g_capture_violation;
}  // namespace

bool capturing() { return g_capturing; }
void capture_add(Op op) { g_captured.push_back(std::move(op)); }
void capture_begin() {
  g_capturing = true;
  g_capture_valid = true;
  g_captured.clear();
}
std::vector<Op> capture_end() {
  g_capturing = false;
  return std::move(g_captured);
}
bool capture_refuse(const char* call) {
  if (!g_capturing) return false;
  ++g_capture_violations;
  g_capture_violation = call;
  g_capture_valid = false;
  return true;
}
void capture_invalidate() {
  if (g_capturing) g_capture_valid = false;
}
bool capture_valid() { return g_capture_valid; }
int64_t take_capture_violations() { return std::exchange(g_capture_violations, 0); }
const char* last_capture_violation() { return g_capture_violation.c_str(); }

namespace {
int64_t g_fault_at[kFaultKinds] = {-1, -1, -1, -1};  // calls left before the armed fault, per kind
int64_t g_fault_calls[kFaultKinds] = {};
}  // namespace

void arm_fault(Fault kind, int64_t n) { g_fault_at[int(kind)] = n < 0 ? -1 : n; }
bool fault_fires(Fault kind) {
  const int k = int(kind);
  ++g_fault_calls[k];
  if (g_fault_at[k] < 0) return false;
  return g_fault_at[k]-- == 0;  // fires once, then disarmed (-1)
}
int64_t fault_calls(Fault kind) { return g_fault_calls[int(kind)]; }

void set_order(bool reverse) { g_reverse = reverse; }

const char* last_error() { return g_last_error.c_str(); }

namespace {
// Fiber stacks, kept from launch to launch (allocating them per block cost
// more than running most kernels).
char* stack_of(int i) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= size_t(i)) stacks.emplace_back(new char[kStackBytes]);
  return stacks[size_t(i)].get();
}
int64_t g_grids_run = 0;
}  // namespace

int64_t grids_run() { return g_grids_run; }

bool run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn, const char** err) {
  ++g_grids_run;
  g_grid_dim = grid;
  g_block_dim = block;
  const int nthreads = int(block.x * block.y * block.z);
  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  for (int64_t bi = 0; bi < nblocks; ++bi) {
    const int64_t lb = g_reverse ? nblocks - 1 - bi : bi;
    g_block_idx = {unsigned(lb % grid.x), unsigned(lb / grid.x % grid.y), unsigned(lb / (int64_t(grid.x) * grid.y))};
    Block b;
    b.fn = &fn;
    b.smem.assign(smem, 0xFF);  // NaN bytes: unwritten shared memory reads as NaN
    b.fibers.resize(size_t(nthreads));
    b.warps.resize(size_t((nthreads + 31) / 32));
    g_block = &b;
    for (int i = 0; i < nthreads; ++i) {
      Fiber& f = b.fibers[size_t(i)];
      f.linear = i;
      f.tid = {unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (block.x * block.y))};
      make_context(&f.ctx, stack_of(i), kStackBytes, fiber_main);
    }
    for (;;) {
      bool ran = false;
      for (int k = 0; k < nthreads; ++k) {
        Fiber& f = b.fibers[size_t(g_reverse ? nthreads - 1 - k : k)];
        if (f.wait != Wait::None) continue;
        b.cur = &f;
        switch_context(&b.sched, &f.ctx);
        b.cur = nullptr;
        ran = true;
      }
      if (std::all_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return f.wait == Wait::Done; })) break;
      if (!ran && !release()) {
        b.error = "deadlock in block " + std::to_string(lb) + ": " + describe_waits();
        break;
      }
    }
    g_block = nullptr;
    if (!b.error.empty()) {
      g_last_error = b.error;
      if (err) *err = g_last_error.c_str();
      return false;
    }
  }
  return true;
}

}  // namespace qwen35::emu

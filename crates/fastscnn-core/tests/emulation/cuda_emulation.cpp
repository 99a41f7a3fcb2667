// The launcher of `cuda_emulation.h`: the blocks of a grid one after another, the threads of a
// block as OS threads, with a barrier for the block and one for each warp.
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_emulation.h"

thread_local EmuIndex threadIdx, blockIdx;
EmuIndex blockDim, gridDim;

namespace {

constexpr unsigned kMaxThreads = 1024;

struct Block {
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    double lanes[kMaxThreads];
    // Threads that have returned from the kernel: one waited for at a barrier would never come.
    std::atomic<unsigned> returned{0};

    explicit Block(unsigned threads) : all(threads) {
        for (unsigned first = 0; first < threads; first += 32) {
            warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - first)));
        }
    }
};

thread_local Block* block = nullptr;

// Launches run one at a time: blockDim, gridDim and the kernels' shared arrays are global.
std::mutex launches;

[[noreturn]] void fail(const char* why) {
    std::fprintf(stderr, "cuda emulation: %s\n", why);
    std::abort();
}

}  // namespace

void __syncthreads() {
    if (block->returned.load() != 0) fail("a thread returned before a __syncthreads of its block");
    block->all.arrive_and_wait();
}

double __shfl_down_sync(unsigned, double v, int offset) {
    if (blockDim.x % 32 != 0) fail("a warp shuffle in a block of a partial warp");
    const unsigned lane = threadIdx.x & 31u, first = threadIdx.x - lane;
    std::barrier<>& warp = *block->warps[threadIdx.x >> 5];
    block->lanes[threadIdx.x] = v;
    warp.arrive_and_wait();
    const unsigned source = lane + (unsigned)offset;
    const double out = source < 32u ? block->lanes[first + source] : v;
    warp.arrive_and_wait();
    return out;
}

// Runs `body(context)` (which calls one kernel) on every thread of a (grid_x, grid_y) grid of
// blocks of `threads` threads (at most 1024). A failure stops the process with a message: no
// C++ exception crosses into the caller.
extern "C" void emu_launch(unsigned grid_x, unsigned grid_y, unsigned threads,
                           void (*body)(void*), void* context) {
    if (threads == 0 || threads > kMaxThreads) fail("a block of 0 or more than 1024 threads");
    try {
        std::lock_guard<std::mutex> one_at_a_time(launches);
        gridDim = {grid_x, grid_y, 1};
        blockDim = {threads, 1, 1};
        for (unsigned by = 0; by < grid_y; ++by) {
            for (unsigned bx = 0; bx < grid_x; ++bx) {
                Block shared(threads);
                std::vector<std::thread> workers;
                for (unsigned t = 0; t < threads; ++t) {
                    workers.emplace_back([&, t] {
                        threadIdx = {t, 0, 0};
                        blockIdx = {bx, by, 0};
                        block = &shared;
                        body(context);
                        // The others' barriers no longer wait for this thread, so that a kernel
                        // whose thread returns early stops at `fail` rather than hanging.
                        shared.returned.fetch_add(1);
                        shared.all.arrive_and_drop();
                        shared.warps[t >> 5]->arrive_and_drop();
                    });
                }
                for (std::thread& worker : workers) worker.join();
            }
        }
    } catch (const std::exception& e) {
        fail(e.what());
    }
}

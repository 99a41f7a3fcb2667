// The launcher of `cuda_emulation.h`: the blocks of a grid one after another, the threads of a
// block as OS threads, with a barrier for the block and one for each warp.
#include <barrier>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_emulation.h"

thread_local EmuIndex threadIdx, blockIdx;
EmuIndex blockDim, gridDim;

namespace {

struct Block {
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    double lanes[1024];

    explicit Block(unsigned threads) : all(threads) {
        for (unsigned first = 0; first < threads; first += 32) {
            warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - first)));
        }
    }
};

thread_local Block* block = nullptr;

// Launches run one at a time: blockDim, gridDim and the kernels' shared arrays are global.
std::mutex launches;

}  // namespace

void __syncthreads() { block->all.arrive_and_wait(); }

double __shfl_down_sync(unsigned, double v, int offset) {
    const unsigned lane = threadIdx.x & 31u, first = threadIdx.x - lane;
    std::barrier<>& warp = *block->warps[threadIdx.x >> 5];
    block->lanes[threadIdx.x] = v;
    warp.arrive_and_wait();
    const unsigned source = lane + (unsigned)offset;
    const double out = source < 32u && first + source < blockDim.x ? block->lanes[first + source] : v;
    warp.arrive_and_wait();
    return out;
}

// Runs `body(context)` (which calls one kernel) on every thread of a (grid_x, grid_y) grid of
// blocks of `threads` threads (at most 1024).
extern "C" void emu_launch(unsigned grid_x, unsigned grid_y, unsigned threads,
                           void (*body)(void*), void* context) {
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
                });
            }
            for (std::thread& worker : workers) worker.join();
        }
    }
}

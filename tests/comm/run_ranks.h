// Runs one function per rank on its own thread, the way the comm tests stand in for processes.
#pragma once

#include <functional>
#include <thread>
#include <vector>

namespace mimo::comm {

// Calls fn(rank) for every rank in [0, n) concurrently and returns once all have returned.
inline void RunRanks(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int rank = 0; rank < n; ++rank) threads.emplace_back(fn, rank);
  for (std::thread& thread : threads) thread.join();
}

}  // namespace mimo::comm

// What a PENDING job waits for before the scheduler gives it ranks, in the words of its
// state_reason: enough workers of its device kind, and no other unfinished job using its folders.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "mimo/v1/job.pb.h"
#include "mimo/v1/job_spec.pb.h"

namespace mimo::coordinator {

// Why a PENDING job is not scheduled for want of workers: "waiting for 2 CUDA workers: none
// registered", "waiting for 4 CPU workers: 2 registered", "waiting for 4 CPU workers: 6 registered,
// fewer than 4 idle"; `stuck` (workers told to stop long ago and never confirming, not counted in
// `registered`) adds their number. No idle count: it changes whenever any worker takes or leaves a
// rank (or a heartbeat is late), and every change of the text rewrites the job (fsync, under the
// manager's mutex) for every queued job.
std::string WaitingForWorkers(int world, v1::DeviceKind device, int registered,
                              const std::vector<std::string>& stuck);

// A folder as written in a spec, spelled one way: "/ckpt/./run//" and "/ckpt/run" are the same.
// Lexical only: the coordinator may not see the workers' file systems.
std::string NormalFolder(const std::string& dir);

// The folders a job writes that another job must not write at the same time: "checkpointing.dir"
// and "output_dir" (each compared with the same field of other jobs), normalized; unset ones are
// left out.
std::vector<std::pair<const char*, std::string>> SharedFolders(const v1::JobSpec& spec);

// "waiting for job J (RUNNING) to end: both use checkpointing.dir /ckpt" when another job of
// `jobs` (unfinished, in submission order) writes a folder that jobs[index] writes (the same
// field) and holds it: any job past PENDING (scheduled, running or cancelling), before or after
// `index` (a later job is scheduled first when jobs[index] went back to PENDING meanwhile), or a
// PENDING job before `index` (submitted earlier, served first). A later PENDING job holds none,
// nor one that ended (as jobs may during the scheduler's pass over `jobs`). The first such job
// in `jobs` is named; empty when there is none.
std::string FolderInUse(const std::vector<v1::Job>& jobs, size_t index);

}  // namespace mimo::coordinator

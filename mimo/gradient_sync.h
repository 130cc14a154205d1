// Gradient reduction overlapped with the backward (Megatron's overlap_grad_reduce): each bucket's
// collective starts on a communication thread as soon as the backward has reported every
// gradient in it, while the backward goes on with the layers before.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kernels/ops.h"
#include "mimo/block.h"
#include "mimo/parameter.h"

namespace mimo {

class GradientSync final : public GradientReadyHook {
 public:
  // One bucket's reduction: a collective over the bucket's gradients, run on the sync's thread
  // once the work that wrote them is done.
  using Collective = std::function<absl::Status()>;
  struct Bucket {
    std::vector<Parameter*> params;  // Not owned; each in one bucket only.
    Collective collective;
  };

  // The collectives run one at a time in the order of `buckets`, on every rank, however the
  // reports come: a bucket starts once it and every bucket before it are ready, so the members of
  // a group always make their calls in the same order (list the buckets in the order the
  // backward finishes them, or the later ones wait for the earlier). `ops` (the backward's) must
  // outlive the sync. InvalidArgument for a parameter in two buckets.
  static absl::StatusOr<std::unique_ptr<GradientSync>> Create(kernels::Ops& ops,
                                                              std::vector<Bucket> buckets);
  // Drops the collectives not yet running (as Abandon) and stops the thread.
  ~GradientSync() override;

  // Marks `params` ready; starts the buckets that became startable, after an event on the ops'
  // stream that the thread waits for. Parameters in no bucket are ignored; a stale gradient
  // (Parameter::ResetGrad, no backward wrote it) is set to zero first. InternalError for a
  // parameter reported twice in one step (its gradient was still being written), or the error
  // of an earlier collective.
  absl::Status Ready(const std::vector<Parameter*>& params) override;
  // Starts every bucket not started yet (parameters never reported: unused this step; stale
  // gradients among them set to zero), waits for all of them and readies the sync for the next
  // step. The first error of the step, if any.
  absl::Status Finish();

  // After a failed step (Finish never called): drops the collectives queued but not running,
  // waits for the running one and readies the sync for the next step. The group's other members
  // then miss this rank's remaining collectives: their step fails too (by the communicators'
  // timeout at the latest).
  void Abandon();

  // Collectives started during the backward (before Finish) in the last finished step.
  int64_t started_early() const { return last_started_early_; }

 private:
  struct Task {
    std::shared_ptr<kernels::Event> event;  // After the work that wrote the bucket.
    size_t bucket;                          // Index into buckets_.
  };
  GradientSync(kernels::Ops& ops, std::vector<Bucket> buckets,
               absl::flat_hash_map<const Parameter*, size_t> bucket_of);
  // Enqueues buckets [next_, end) for the thread.
  absl::Status Start(size_t end);
  void Run();

  // Readies the counts for the next step (the thread idle).
  void Reset();

  kernels::Ops& ops_;                  // The backward's: the events are recorded on its stream.
  const std::vector<Bucket> buckets_;  // In the order their collectives run.
  const absl::flat_hash_map<const Parameter*, size_t> bucket_of_;  // Each parameter's bucket.
  // Touched by the caller's thread only.
  std::vector<int64_t> missing_;  // Per bucket: parameters not reported this step.
  absl::flat_hash_map<const Parameter*, bool> reported_;
  size_t next_ = 0;  // The first bucket not started.
  int64_t started_early_ = 0;
  int64_t last_started_early_ = 0;

  std::mutex mu_;
  std::condition_variable wake_;  // For the thread: a task, or stop.
  std::condition_variable idle_;  // For Finish: the queue drained.
  std::deque<Task> queue_;        // Guarded by mu_.
  bool busy_ = false;             // Guarded by mu_: the thread runs a task.
  bool stop_ = false;             // Guarded by mu_.
  absl::Status error_;            // Guarded by mu_: the step's first error.
  std::thread thread_;            // Runs Run(): the collectives, one at a time.
};

}  // namespace mimo

// LifecycleTest: the coordinator fixture with a started server and the job calls the lifecycle
// tests share (state history, cancel, checkpoint, state events).
#pragma once

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/job_state.h"
#include "tests/coordinator/test_server.h"

namespace mimo::coordinator::testing {

class LifecycleTest : public CoordinatorFixture {
 protected:
  void SetUp() override { StartServer(); }

  // The states of the job's events, in order.
  std::vector<std::string> StateHistory(const std::string& id) {
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto context = Context();
    auto reader = jobs_->WatchJob(context.get(), request);
    std::vector<std::string> states;
    v1::WatchJobResponse response;
    // A finished job's watch returns its current state only; history comes from the events.
    while (reader->Read(&response)) {
      if (response.has_event() && response.event().has_state()) {
        states.push_back(v1::JobState_Name(response.event().state()));
      }
    }
    EXPECT_TRUE(reader->Finish().ok());
    return states;
  }

  // Cancels the job with `reason` ("" for the default).
  grpc::Status Cancel(const std::string& id, v1::CancelJobResponse* response,
                      const std::string& reason = "") {
    v1::CancelJobRequest request;
    request.set_job_id(id);
    request.set_reason(reason);
    return jobs_->CancelJob(Context().get(), request, response);
  }

  grpc::Status Checkpoint(const std::string& id, bool stop, const std::string& reason,
                          v1::CheckpointJobResponse* response) {
    v1::CheckpointJobRequest request;
    request.set_job_id(id);
    request.set_stop(stop);
    request.set_reason(reason);
    return jobs_->CheckpointJob(Context().get(), request, response);
  }

  // "STATE: message" of each of the job's state events so far; works while the job runs.
  std::vector<std::string> StateEvents(const std::string& id) {
    v1::ListJobEventsRequest request;
    request.set_job_id(id);
    request.set_page_size(1000);
    v1::ListJobEventsResponse response;
    EXPECT_TRUE(jobs_->ListJobEvents(Context().get(), request, &response).ok());
    std::vector<std::string> out;
    for (const v1::JobEvent& e : response.events()) {
      if (e.has_state()) out.push_back(absl::StrCat(StateName(e.state()), ": ", e.message()));
    }
    return out;
  }
};

// SmallSpec saving checkpoints into /ckpt (nothing is written: the workers are fakes).
inline v1::JobSpec CheckpointingSpec(int max_restarts = 0) {
  v1::JobSpec spec = SmallSpec();
  spec.mutable_checkpointing()->set_dir("/ckpt");
  spec.set_max_restarts(max_restarts);
  return spec;
}

}  // namespace mimo::coordinator::testing

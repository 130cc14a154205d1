// The gRPC services (JobService, WorkerService): thin adapters from protos to the JobManager,
// with authentication, request metrics and Status conversion done once for every method.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "coordinator/job_manager.h"
#include "coordinator/metrics.h"
#include "mimo/v1/job_service.grpc.pb.h"
#include "mimo/v1/worker_service.grpc.pb.h"

namespace mimo::coordinator {

// What every method shares.
struct ServiceContext {
  JobManager* manager = nullptr;
  CoordinatorMetrics* metrics = nullptr;  // May be null (no metrics endpoint).
  // Required as "authorization: Bearer <token>"; empty: no authentication.
  std::string auth_token;
};

class JobServiceImpl final : public v1::JobService::Service {
 public:
  explicit JobServiceImpl(ServiceContext ctx) : ctx_(std::move(ctx)) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::GetJobResponse* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::CancelJobResponse* response) override;
  grpc::Status CheckpointJob(grpc::ServerContext* context, const v1::CheckpointJobRequest* request,
                             v1::CheckpointJobResponse* response) override;
  grpc::Status ListJobEvents(grpc::ServerContext* context, const v1::ListJobEventsRequest* request,
                             v1::ListJobEventsResponse* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override;
  grpc::Status StreamLogs(grpc::ServerContext* context, const v1::StreamLogsRequest* request,
                          grpc::ServerWriter<v1::StreamLogsResponse>* writer) override;
  grpc::Status ValidateJob(grpc::ServerContext* context, const v1::ValidateJobRequest* request,
                           v1::ValidateJobResponse* response) override;

 private:
  const ServiceContext ctx_;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(ServiceContext ctx) : ctx_(std::move(ctx)) {}

  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status GetAssignment(grpc::ServerContext* context, const v1::GetAssignmentRequest* request,
                             v1::GetAssignmentResponse* response) override;
  grpc::Status ReportStatus(grpc::ServerContext* context, const v1::ReportStatusRequest* request,
                            v1::ReportStatusResponse* response) override;
  grpc::Status ReportMetrics(grpc::ServerContext* context, const v1::ReportMetricsRequest* request,
                             v1::ReportMetricsResponse* response) override;
  grpc::Status ReportLogs(grpc::ServerContext* context,
                          grpc::ServerReader<v1::ReportLogsRequest>* reader,
                          v1::ReportLogsResponse* response) override;
  grpc::Status SetKey(grpc::ServerContext* context, const v1::SetKeyRequest* request,
                      v1::SetKeyResponse* response) override;
  grpc::Status GetKey(grpc::ServerContext* context, const v1::GetKeyRequest* request,
                      v1::GetKeyResponse* response) override;
  grpc::Status WaitKeys(grpc::ServerContext* context, const v1::WaitKeysRequest* request,
                        v1::WaitKeysResponse* response) override;

 private:
  const ServiceContext ctx_;
};

}  // namespace mimo::coordinator

// mimo/gradient_sync.h with CUDA ops: the communication thread waits for the event after the
// work that wrote a bucket before its collective reads it. The "collective" copies the bucket to
// the host on the legacy default stream, which does not wait for the ops' non-blocking stream on
// its own: only the event orders it after the 200 additions still queued when Ready returns.
#include <cuda_runtime_api.h>

#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_ops.h"
#include "kernels/device_info.h"
#include "mimo/gradient_buffer.h"
#include "mimo/gradient_sync.h"

namespace mimo {
namespace {

TEST(GradientSyncCudaTest, TheCollectiveSeesEveryWriteEnqueuedBeforeReady) {
  const kernels::CudaDevices devices = kernels::ListCudaDevices();
  if (devices.devices.empty()) GTEST_SKIP() << "no CUDA device: " << devices.unavailable_reason;
  auto ops = kernels::NewCudaOps();
  ASSERT_TRUE(ops.ok()) << ops.status();
  constexpr int64_t kElements = 1 << 24;
  constexpr int kAdds = 200;
  auto param =
      Parameter::Create(**ops, {.name = "w", .shape = {kElements}}, kernels::DType::kF32, 1);
  ASSERT_TRUE(param.ok()) << param.status();
  Parameter* p = param->get();
  auto buffer = GradientBuffer::Create(**ops, {p});
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  auto ones = kernels::Tensor::Empty({kElements}, kernels::DType::kF32, (*ops)->allocator(),
                                     (*ops)->stream());
  ASSERT_TRUE(ones.ok()) << ones.status();
  const std::vector<float> host(kElements, 1.0f);
  ASSERT_TRUE((*ops)->CopyFromHost(ones->data(), host.data(), 4 * kElements).ok());
  ASSERT_TRUE((*ops)->Synchronize().ok());

  std::vector<float> seen(kElements, -1.0f);
  cudaError_t copied = cudaErrorUnknown;
  const float* grad = p->grad().data<float>();
  auto sync = GradientSync::Create(**ops, {{.params = {p}, .collective = [&] {
                                              copied = cudaMemcpy(seen.data(), grad, 4 * kElements,
                                                                  cudaMemcpyDeviceToHost);
                                              return absl::OkStatus();
                                            }}});
  ASSERT_TRUE(sync.ok()) << sync.status();
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(p->ZeroGrad(**ops).ok());
    for (int i = 0; i < kAdds; ++i) {
      ASSERT_TRUE((*ops)
                      ->Add({.dtype = kernels::DType::kF32,
                             .a = grad,
                             .b = ones->data(),
                             .out = p->grad().data(),
                             .n = kElements})
                      .ok());
    }
    ASSERT_TRUE((*sync)->Ready({p}).ok());
    ASSERT_TRUE((*sync)->Finish().ok());
    ASSERT_EQ(copied, cudaSuccess) << cudaGetErrorName(copied);
    EXPECT_EQ((*sync)->started_early(), 1);
    int64_t wrong = 0;
    for (float v : seen) wrong += v != static_cast<float>(kAdds);
    EXPECT_EQ(wrong, 0) << "step " << step << ": first " << seen[0] << ", last " << seen.back();
  }
}

}  // namespace
}  // namespace mimo

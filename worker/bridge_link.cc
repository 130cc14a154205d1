// Floats and rows to and from the other end of a bridge link, and the check that a rank's links
// are the ones the layout pairs it with.
#include "worker/bridge_link.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "mimo/tensor_checks.h"

namespace mimo::worker {
namespace {

using kernels::Tensor;

// The replicas of a module with `peer_dp` of them that replica `own` of a module with `own_dp`
// exchanges samples with (parallel/bridge.h's pairing, the same seen from either side).
std::vector<int> ExpectedPeers(int own, int own_dp, int peer_dp) {
  if (own_dp >= peer_dp) return {own / (own_dp / peer_dp)};
  std::vector<int> peers;
  for (int p = own * (peer_dp / own_dp); p < (own + 1) * (peer_dp / own_dp); ++p) {
    peers.push_back(p);
  }
  return peers;
}

}  // namespace

// One float to or from the other end of a link, through the ops' memory.
absl::Status SendFloat(kernels::Ops& ops, const BridgeEnd& link, float value) {
  MIMO_ASSIGN_OR_RETURN(Tensor buffer,
                        Tensor::Empty({1}, kernels::DType::kF32, ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(buffer.data(), &value, sizeof(value)));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  return link.group->Send(buffer.data(), 1, comm::DataType::kFloat32, 1 - link.group->rank());
}

absl::StatusOr<float> RecvFloat(kernels::Ops& ops, const BridgeEnd& link) {
  MIMO_ASSIGN_OR_RETURN(Tensor buffer,
                        Tensor::Empty({1}, kernels::DType::kF32, ops.allocator(), ops.stream()));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(
      link.group->Recv(buffer.data(), 1, comm::DataType::kFloat32, 1 - link.group->rank()));
  float value = 0;
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(&value, buffer.data(), sizeof(value)));
  return value;
}

// Rows [row, row + rows) of `t` (rows, width) to or from the other end of `link`.
absl::Status SendRows(const BridgeEnd& link, const Tensor& t, int64_t row, int64_t rows) {
  if (rows == 0) return absl::OkStatus();
  const int64_t width = t.size(1);
  const auto type =
      t.dtype() == kernels::DType::kBF16 ? comm::DataType::kBFloat16 : comm::DataType::kFloat32;
  return link.group->Send(RowAt(t, row, width), static_cast<size_t>(rows * width), type,
                          1 - link.group->rank());
}

absl::Status RecvRows(const BridgeEnd& link, const Tensor& t, int64_t row, int64_t rows) {
  if (rows == 0) return absl::OkStatus();
  const int64_t width = t.size(1);
  const auto type =
      t.dtype() == kernels::DType::kBF16 ? comm::DataType::kBFloat16 : comm::DataType::kFloat32;
  return link.group->Recv(RowAt(t, row, width), static_cast<size_t>(rows * width), type,
                          1 - link.group->rank());
}

// Sorts `links` by peer replica and checks they are the ones the layout pairs this replica with.
absl::Status CheckLinks(std::vector<BridgeEnd>& links, absl::string_view encoder, bool encoder_side,
                        int own, int own_dp, int64_t micro_batch_size) {
  const std::string what = absl::StrCat("TrainerOptions: the ", encoder, " links");
  if (links.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": none given"));
  std::sort(links.begin(), links.end(),
            [](const BridgeEnd& a, const BridgeEnd& b) { return a.peer_replica < b.peer_replica; });
  const int peer_dp = links[0].peer_dp;
  std::vector<int> peers;
  for (const BridgeEnd& l : links) {
    if (l.group == nullptr || l.group->size() != 2 || l.group->rank() != (encoder_side ? 0 : 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": each needs a group of two members with the encoder end at rank 0"));
    }
    if (l.peer_dp != peer_dp) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": peer_dp differs between links"));
    }
    peers.push_back(l.peer_replica);
  }
  const int language_dp = encoder_side ? peer_dp : own_dp;
  const int encoder_dp = encoder_side ? own_dp : peer_dp;
  if (peer_dp < 1 || (language_dp % encoder_dp != 0 && encoder_dp % language_dp != 0) ||
      (language_dp * micro_batch_size) % encoder_dp != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": the encoder's data-parallel size ", encoder_dp, " and the language model's ",
        language_dp, " must divide one another, and the encoder's must divide the ",
        language_dp * micro_batch_size, " samples of a global micro-batch"));
  }
  const std::vector<int> want = ExpectedPeers(own, own_dp, peer_dp);
  if (peers != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " of replica ", own, " of ", own_dp, " reach replicas [", absl::StrJoin(peers, ","),
        "] of ", peer_dp, "; the layout pairs it with [", absl::StrJoin(want, ","), "]"));
  }
  return absl::OkStatus();
}

}  // namespace mimo::worker

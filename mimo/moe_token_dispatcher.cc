// MoeTokenDispatcher: the local path (one permutation into the experts' buffer) and the
// all-to-all path (pad to the group's token count, permute by global expert, exchange the row
// counts, all-to-all, regroup the received rows by local expert; the reverse to combine).
#include "mimo/moe_token_dispatcher.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/moe_permute.h"
#include "mimo/comm_type.h"

namespace mimo {
namespace {

using kernels::DType;
using kernels::Tensor;

// `t` (n, width...) extended to `rows` rows: zeros, or -1 for int32 routing indices. `t` itself
// when it already has that many.
absl::StatusOr<Tensor> PadRows(const StepContext& ctx, const Tensor& t, int64_t rows) {
  const int64_t n = t.size(0);
  if (rows == n) return t;
  kernels::Shape shape = t.shape();
  shape[0] = rows;
  MIMO_ASSIGN_OR_RETURN(Tensor out, NewTensor(ctx, shape, t.dtype()));
  kernels::Ops& ops = *ctx.ops;
  const size_t row_bytes = out.nbytes() / rows;  // rows > n >= 0.
  const size_t tail = (rows - n) * row_bytes;
  if (n > 0) MIMO_RETURN_IF_ERROR(ops.Copy(out.data(), t.data(), n * row_bytes));
  char* tail_data = static_cast<char*>(out.data()) + n * row_bytes;
  if (t.dtype() == DType::kI32) {
    const std::vector<int32_t> none(tail / sizeof(int32_t), -1);
    MIMO_RETURN_IF_ERROR(ops.CopyFromHost(tail_data, none.data(), tail));
  } else {
    MIMO_RETURN_IF_ERROR(ops.SetZero(tail_data, tail));
  }
  return out;
}

// Element counts of `rows` rows of `width` elements each.
std::vector<size_t> Elements(const std::vector<size_t>& rows, int64_t width) {
  std::vector<size_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * static_cast<size_t>(width);
  return out;
}

size_t Sum(const std::vector<size_t>& v) { return std::accumulate(v.begin(), v.end(), size_t{0}); }

// All-to-all of rows: `send` (rows in peer order) to `recv` (rows in peer order). The ops'
// stream is drained first: the communicator reads what the ops wrote.
absl::Status ExchangeRows(const StepContext& ctx, comm::Communicator& ep, const Tensor& send,
                          const std::vector<size_t>& send_rows, const Tensor& recv,
                          const std::vector<size_t>& recv_rows, int64_t width) {
  MIMO_ASSIGN_OR_RETURN(comm::DataType type, CommType(send.dtype()));
  MIMO_RETURN_IF_ERROR(ctx.ops->Synchronize());
  return ep.AllToAll(send.data(), Elements(send_rows, width), recv.data(),
                     Elements(recv_rows, width), type);
}

}  // namespace

absl::StatusOr<MoeTokenDispatcher> MoeTokenDispatcher::Create(const MoeDispatcherOptions& o) {
  if (o.experts < 1 || o.top_k < 1 || o.top_k > o.experts || o.hidden < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeTokenDispatcher: needs 1 <= top_k <= experts and hidden >= 1, got experts ", o.experts,
        ", top_k ", o.top_k, ", hidden ", o.hidden));
  }
  if (o.align < 1 || o.align > 1024 || o.pad_multiple < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeTokenDispatcher: needs align in [1, 1024] and pad_multiple >= 1, got ",
                     o.align, " and ", o.pad_multiple));
  }
  const int ep = o.ep == nullptr ? 1 : o.ep->size();
  if (o.expt_tp != nullptr && o.expt_tp->size() > 1 && o.expt_tp == o.ep) {
    return absl::InvalidArgumentError("MoeTokenDispatcher: ep and expt_tp are one communicator");
  }
  if (o.experts % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat("MoeTokenDispatcher: ", o.experts,
                                                   " experts do not split evenly over ", ep,
                                                   " expert-parallel ranks"));
  }
  return MoeTokenDispatcher(o);
}

MoeTokenDispatcher::MoeTokenDispatcher(const MoeDispatcherOptions& options)
    : options_(options),
      ep_size_(options.ep == nullptr ? 1 : options.ep->size()),
      ep_rank_(options.ep == nullptr ? 0 : options.ep->rank()),
      etp_size_(options.expt_tp == nullptr ? 1 : options.expt_tp->size()),
      local_experts_(options.experts / ep_size_),
      first_expert_(ep_rank_ * local_experts_) {}

absl::StatusOr<MoeDispatched> MoeTokenDispatcher::DispatchOverEp(const StepContext& ctx,
                                                                 const Tensor& x,
                                                                 const Tensor& indices,
                                                                 const Tensor& probs) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t t = x.size(0), c = options_.hidden, k = options_.top_k, e = options_.experts;
  if (x.dim() != 2 || x.size(1) != c || indices.shape() != kernels::Shape{t, k} ||
      indices.dtype() != DType::kI32 || probs.shape() != kernels::Shape{t, k} ||
      probs.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MoeTokenDispatcher: needs x (T, ", c, "), indices (T, ", k, ") i32 and probs (T, ", k,
        ") f32, got ", x.ToString(), ", ", indices.ToString(), ", ", probs.ToString()));
  }
  MoeDispatched out;
  MoeDispatchState& s = out.state;
  s.tokens = t;
  s.padded = t;
  if (!expert_parallel()) {
    // One permutation straight into the experts' padded buffer.
    const int64_t capacity = kernels::MoePermuteCapacity(t, k, e, options_.align);
    MIMO_ASSIGN_OR_RETURN(s.rows, NewTensor(ctx, {t, k}, DType::kI32));
    MIMO_ASSIGN_OR_RETURN(s.pair_of_row, NewTensor(ctx, {capacity}, DType::kI32));
    MIMO_ASSIGN_OR_RETURN(Tensor offsets, NewTensor(ctx, {e + 1}, DType::kI32));
    MIMO_RETURN_IF_ERROR(ops.MoePermuteMap({.indices = indices.data<int32_t>(),
                                            .rows = s.rows.data<int32_t>(),
                                            .offsets = offsets.data<int32_t>(),
                                            .pair_of_row = s.pair_of_row.data<int32_t>(),
                                            .tokens = t,
                                            .top_k = k,
                                            .experts = e,
                                            .align = options_.align,
                                            .capacity = capacity}));
    MIMO_ASSIGN_OR_RETURN(out.rows, NewTensor(ctx, {capacity, c}, x.dtype()));
    MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = x.dtype(),
                                         .x = x.data(),
                                         .pair_of_row = s.pair_of_row.data<int32_t>(),
                                         .rows = s.rows.data<int32_t>(),
                                         .out = out.rows.data(),
                                         .tokens = t,
                                         .top_k = k,
                                         .hidden = c,
                                         .capacity = capacity}));
    // Expert-tensor parallelism works out the gathered rows' places on the host.
    if (options_.host_offsets || expert_tensor_parallel()) {
      out.offsets.host.resize(e + 1);
      MIMO_RETURN_IF_ERROR(
          ops.CopyToHost(out.offsets.host.data(), offsets.data(), sizeof(int32_t) * (e + 1)));
    }
    out.offsets.device = std::move(offsets);
    out.offsets.row_multiple = options_.align;
    s.probs = probs;
    return out;
  }

  comm::Communicator& ep = *options_.ep;
  const int n = ep_size_;
  const int64_t el = local_experts_;
  // The group's largest token count, rounded up: every member dispatches T_pad tokens.
  MIMO_ASSIGN_OR_RETURN(Tensor count, NewTensor(ctx, {1}, DType::kI64));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(count.data(), &t, sizeof(int64_t)));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(ep.AllReduce(count.data(), 1, comm::DataType::kInt64, comm::ReduceOp::kMax));
  int64_t most = 0;
  MIMO_RETURN_IF_ERROR(ops.CopyToHost(&most, count.data(), sizeof(int64_t)));
  const int64_t pad = options_.pad_multiple;
  s.padded = (most + pad - 1) / pad * pad;
  const int64_t tp = s.padded, send_capacity = tp * k;
  MIMO_ASSIGN_OR_RETURN(Tensor x_pad, PadRows(ctx, x, tp));
  MIMO_ASSIGN_OR_RETURN(Tensor indices_pad, PadRows(ctx, indices, tp));
  MIMO_ASSIGN_OR_RETURN(s.probs, PadRows(ctx, probs, tp));

  // Group the pairs by global expert: peer p's experts are one contiguous block of rows.
  MIMO_ASSIGN_OR_RETURN(s.rows, NewTensor(ctx, {tp, k}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(s.pair_of_row, NewTensor(ctx, {send_capacity}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(Tensor offsets, NewTensor(ctx, {e + 1}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.MoePermuteMap({.indices = indices_pad.data<int32_t>(),
                                          .rows = s.rows.data<int32_t>(),
                                          .offsets = offsets.data<int32_t>(),
                                          .pair_of_row = s.pair_of_row.data<int32_t>(),
                                          .tokens = tp,
                                          .top_k = k,
                                          .experts = e,
                                          .align = 1,
                                          .capacity = send_capacity}));
  MIMO_ASSIGN_OR_RETURN(Tensor send, NewTensor(ctx, {send_capacity, c}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = x.dtype(),
                                       .x = x_pad.data(),
                                       .pair_of_row = s.pair_of_row.data<int32_t>(),
                                       .rows = s.rows.data<int32_t>(),
                                       .out = send.data(),
                                       .tokens = tp,
                                       .top_k = k,
                                       .hidden = c,
                                       .capacity = send_capacity}));
  // Every member's expert offsets: what each sends to each.
  MIMO_ASSIGN_OR_RETURN(Tensor all_offsets, NewTensor(ctx, {n, e + 1}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(
      ep.AllGather(offsets.data(), all_offsets.data(), e + 1, comm::DataType::kInt32));
  std::vector<int32_t> off(n * (e + 1));
  MIMO_RETURN_IF_ERROR(
      ops.CopyToHost(off.data(), all_offsets.data(), sizeof(int32_t) * off.size()));
  auto at = [&](int p, int64_t expert) { return static_cast<int64_t>(off[p * (e + 1) + expert]); };
  s.send_rows.resize(n);
  s.recv_rows.resize(n);
  for (int p = 0; p < n; ++p) {
    s.send_rows[p] = at(ep_rank_, (p + 1) * el) - at(ep_rank_, p * el);
    s.recv_rows[p] = at(p, (ep_rank_ + 1) * el) - at(p, ep_rank_ * el);
  }
  const int64_t received = static_cast<int64_t>(Sum(s.recv_rows));
  // The experts' row offsets and the regrouping's row indices are int32.
  if (received + el * (options_.align - 1) > std::numeric_limits<int32_t>::max()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("MoeTokenDispatcher: member ", ep_rank_, " would receive ", received,
                     " rows for its experts, more than int32 row indices reach"));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor recv, NewTensor(ctx, {received, c}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ExchangeRows(ctx, ep, send, s.send_rows, recv, s.recv_rows, c));

  // Regroup the received rows (by peer, then local expert) by local expert, then peer, each
  // expert padded to `align`.
  std::vector<int32_t>& expert_offsets = out.offsets.host;
  expert_offsets.assign(el + 1, 0);
  for (int64_t j = 0; j < el; ++j) {
    int64_t rows = 0;
    for (int p = 0; p < n; ++p) {
      rows += at(p, first_expert_ + j + 1) - at(p, first_expert_ + j);
    }
    expert_offsets[j + 1] = static_cast<int32_t>(
        expert_offsets[j] + (rows + options_.align - 1) / options_.align * options_.align);
  }
  out.offsets.row_multiple = options_.align;
  const int64_t expert_rows = expert_offsets[el];
  std::vector<int32_t> received_of(expert_rows, -1), expert_row_of(received);
  std::vector<int64_t> next(expert_offsets.begin(), expert_offsets.end() - 1);
  int64_t base = 0;  // The first received row from peer p.
  for (int p = 0; p < n; ++p) {
    for (int64_t j = 0; j < el; ++j) {
      const int64_t rows = at(p, first_expert_ + j + 1) - at(p, first_expert_ + j);
      for (int64_t i = 0; i < rows; ++i) {
        received_of[next[j]] = static_cast<int32_t>(base + i);
        expert_row_of[base + i] = static_cast<int32_t>(next[j]++);
      }
      base += rows;
    }
  }
  MIMO_ASSIGN_OR_RETURN(s.received_of_expert_row, NewTensor(ctx, {expert_rows}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(s.expert_row_of_received, NewTensor(ctx, {received}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(s.received_of_expert_row.data(), received_of.data(),
                                        sizeof(int32_t) * expert_rows));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(s.expert_row_of_received.data(), expert_row_of.data(),
                                        sizeof(int32_t) * received));
  MIMO_ASSIGN_OR_RETURN(out.rows, NewTensor(ctx, {expert_rows, c}, x.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = x.dtype(),
                                       .x = recv.data(),
                                       .pair_of_row = s.received_of_expert_row.data<int32_t>(),
                                       .out = out.rows.data(),
                                       .tokens = received,
                                       .top_k = 1,
                                       .hidden = c,
                                       .capacity = expert_rows}));
  return out;
}

absl::StatusOr<Tensor> MoeTokenDispatcher::CombineOverEp(const StepContext& ctx,
                                                         MoeDispatchState& s,
                                                         const Tensor& h) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t c = options_.hidden, k = options_.top_k;
  if (!expert_parallel()) {
    s.combined = h;
  } else {
    // Back to the senders: the reverse regrouping, then the reverse all-to-all.
    const int64_t received = s.expert_row_of_received.numel();
    MIMO_ASSIGN_OR_RETURN(Tensor back, NewTensor(ctx, {received, c}, h.dtype()));
    MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = h.dtype(),
                                                 .dout = h.data(),
                                                 .rows = s.expert_row_of_received.data<int32_t>(),
                                                 .dx = back.data(),
                                                 .tokens = received,
                                                 .top_k = 1,
                                                 .hidden = c}));
    MIMO_ASSIGN_OR_RETURN(s.combined, NewTensor(ctx, {s.pair_of_row.numel(), c}, h.dtype()));
    MIMO_RETURN_IF_ERROR(
        ExchangeRows(ctx, *options_.ep, back, s.recv_rows, s.combined, s.send_rows, c));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor y, NewTensor(ctx, {s.padded, c}, h.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoeUnpermute({.dtype = h.dtype(),
                                         .h = s.combined.data(),
                                         .rows = s.rows.data<int32_t>(),
                                         .probs = s.probs.data<float>(),
                                         .y = y.data(),
                                         .tokens = s.padded,
                                         .top_k = k,
                                         .hidden = c}));
  return y.Slice(0, 0, s.tokens);
}

absl::StatusOr<MoeCombineGrads> MoeTokenDispatcher::CombineBackwardOverEp(const StepContext& ctx,
                                                                          MoeDispatchState& s,
                                                                          const Tensor& dy) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t c = options_.hidden, k = options_.top_k;
  if (dy.shape() != kernels::Shape{s.tokens, c} || !s.combined.defined()) {
    return absl::InvalidArgumentError(absl::StrCat("MoeTokenDispatcher: CombineBackward needs dy (",
                                                   s.tokens, ", ", c, ") after a Combine, got ",
                                                   dy.ToString()));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dy_pad, PadRows(ctx, dy, s.padded));
  const int64_t send_capacity = s.pair_of_row.numel();
  MoeCombineGrads g;
  MIMO_ASSIGN_OR_RETURN(Tensor dsend, NewTensor(ctx, {send_capacity, c}, dy.dtype()));
  MIMO_ASSIGN_OR_RETURN(g.dprobs, NewTensor(ctx, {s.padded, k}, DType::kF32));
  MIMO_RETURN_IF_ERROR(ops.MoeUnpermuteBackward({.dtype = dy.dtype(),
                                                 .dy = dy_pad.data(),
                                                 .h = s.combined.data(),
                                                 .rows = s.rows.data<int32_t>(),
                                                 .pair_of_row = s.pair_of_row.data<int32_t>(),
                                                 .probs = s.probs.data<float>(),
                                                 .dh = dsend.data(),
                                                 .dprobs = g.dprobs.data<float>(),
                                                 .tokens = s.padded,
                                                 .top_k = k,
                                                 .hidden = c,
                                                 .capacity = send_capacity}));
  s.combined = Tensor();
  MIMO_ASSIGN_OR_RETURN(g.dprobs, g.dprobs.Slice(0, 0, s.tokens));
  if (!expert_parallel()) {
    g.dh = std::move(dsend);
    return g;
  }
  // The output gradients travel the dispatch's way.
  const int64_t received = s.expert_row_of_received.numel();
  const int64_t expert_rows = s.received_of_expert_row.numel();
  MIMO_ASSIGN_OR_RETURN(Tensor drecv, NewTensor(ctx, {received, c}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(ExchangeRows(ctx, *options_.ep, dsend, s.send_rows, drecv, s.recv_rows, c));
  MIMO_ASSIGN_OR_RETURN(g.dh, NewTensor(ctx, {expert_rows, c}, dy.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = dy.dtype(),
                                       .x = drecv.data(),
                                       .pair_of_row = s.received_of_expert_row.data<int32_t>(),
                                       .out = g.dh.data(),
                                       .tokens = received,
                                       .top_k = 1,
                                       .hidden = c,
                                       .capacity = expert_rows}));
  return g;
}

absl::StatusOr<Tensor> MoeTokenDispatcher::DispatchBackwardOverEp(const StepContext& ctx,
                                                                  const MoeDispatchState& s,
                                                                  const Tensor& drows) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t c = options_.hidden, k = options_.top_k;
  Tensor dsend = drows;
  if (expert_parallel()) {
    // The input gradients travel the combine's way.
    const int64_t received = s.expert_row_of_received.numel();
    MIMO_ASSIGN_OR_RETURN(Tensor drecv, NewTensor(ctx, {received, c}, drows.dtype()));
    MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = drows.dtype(),
                                                 .dout = drows.data(),
                                                 .rows = s.expert_row_of_received.data<int32_t>(),
                                                 .dx = drecv.data(),
                                                 .tokens = received,
                                                 .top_k = 1,
                                                 .hidden = c}));
    MIMO_ASSIGN_OR_RETURN(dsend, NewTensor(ctx, {s.pair_of_row.numel(), c}, drows.dtype()));
    MIMO_RETURN_IF_ERROR(
        ExchangeRows(ctx, *options_.ep, drecv, s.recv_rows, dsend, s.send_rows, c));
  }
  MIMO_ASSIGN_OR_RETURN(Tensor dx, NewTensor(ctx, {s.padded, c}, drows.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = drows.dtype(),
                                               .dout = dsend.data(),
                                               .rows = s.rows.data<int32_t>(),
                                               .dx = dx.data(),
                                               .tokens = s.padded,
                                               .top_k = k,
                                               .hidden = c}));
  return dx.Slice(0, 0, s.tokens);
}

absl::StatusOr<MoeDispatched> MoeTokenDispatcher::Dispatch(const StepContext& ctx, const Tensor& x,
                                                           const Tensor& indices,
                                                           const Tensor& probs) const {
  MIMO_ASSIGN_OR_RETURN(MoeDispatched out, DispatchOverEp(ctx, x, indices, probs));
  if (expert_tensor_parallel()) {
    MIMO_RETURN_IF_ERROR(GatherForExptTp(ctx, out));
  }
  if (!out.offsets.device.defined()) {
    const std::vector<int32_t>& host = out.offsets.host;
    MIMO_ASSIGN_OR_RETURN(out.offsets.device,
                          NewTensor(ctx, {static_cast<int64_t>(host.size())}, DType::kI32));
    MIMO_RETURN_IF_ERROR(ctx.ops->CopyFromHost(out.offsets.device.data(), host.data(),
                                               sizeof(int32_t) * host.size()));
  }
  return out;
}

absl::Status MoeTokenDispatcher::GatherForExptTp(const StepContext& ctx, MoeDispatched& out) const {
  // Every member of expt_tp holds a part of the same experts' width: each gets every member's
  // rows of them, padded to the group's largest row count for the all-gather.
  kernels::Ops& ops = *ctx.ops;
  MoeDispatchState& s = out.state;
  const int n = etp_size_;
  const int64_t el = local_experts_;
  s.own_rows = out.offsets.host[el];
  MIMO_ASSIGN_OR_RETURN(Tensor offsets, NewTensor(ctx, {el + 1}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(Tensor all_offsets, NewTensor(ctx, {n, el + 1}, DType::kI32));
  MIMO_RETURN_IF_ERROR(
      ops.CopyFromHost(offsets.data(), out.offsets.host.data(), sizeof(int32_t) * (el + 1)));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(options_.expt_tp->AllGather(offsets.data(), all_offsets.data(), el + 1,
                                                   comm::DataType::kInt32));
  std::vector<int32_t> off(n * (el + 1));
  MIMO_RETURN_IF_ERROR(
      ops.CopyToHost(off.data(), all_offsets.data(), sizeof(int32_t) * off.size()));
  auto at = [&](int m, int64_t j) { return static_cast<int64_t>(off[m * (el + 1) + j]); };
  s.member_rows = 0;
  for (int m = 0; m < n; ++m) s.member_rows = std::max(s.member_rows, at(m, el));
  // Expert j's rows: member 0's, member 1's, ... (each already a multiple of `align`).
  std::vector<int32_t> offsets_all(el + 1, 0);
  for (int64_t j = 0; j < el; ++j) {
    offsets_all[j + 1] = offsets_all[j];
    for (int m = 0; m < n; ++m) offsets_all[j + 1] += at(m, j + 1) - at(m, j);
  }
  const int64_t rows = offsets_all[el], gathered = n * s.member_rows;
  std::vector<int32_t> gathered_of(rows), expert_row_of(gathered, -1);
  for (int64_t j = 0, r = 0; j < el; ++j) {
    for (int m = 0; m < n; ++m) {
      for (int64_t i = m * s.member_rows + at(m, j); i < m * s.member_rows + at(m, j + 1); ++i) {
        gathered_of[r] = static_cast<int32_t>(i);
        expert_row_of[i] = static_cast<int32_t>(r++);
      }
    }
  }
  MIMO_ASSIGN_OR_RETURN(s.gathered_of_expert_row, NewTensor(ctx, {rows}, DType::kI32));
  MIMO_ASSIGN_OR_RETURN(s.expert_row_of_gathered, NewTensor(ctx, {gathered}, DType::kI32));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(s.gathered_of_expert_row.data(), gathered_of.data(),
                                        sizeof(int32_t) * rows));
  MIMO_RETURN_IF_ERROR(ops.CopyFromHost(s.expert_row_of_gathered.data(), expert_row_of.data(),
                                        sizeof(int32_t) * gathered));
  MIMO_ASSIGN_OR_RETURN(out.rows, GatherOverExptTp(ctx, s, out.rows));
  out.offsets = {.device = {}, .host = std::move(offsets_all), .row_multiple = options_.align};
  return absl::OkStatus();
}

absl::StatusOr<Tensor> MoeTokenDispatcher::Combine(const StepContext& ctx, MoeDispatchState& s,
                                                   const Tensor& h) const {
  if (!expert_tensor_parallel()) return CombineOverEp(ctx, s, h);
  MIMO_ASSIGN_OR_RETURN(Tensor own, ScatterOverExptTp(ctx, s, h));
  return CombineOverEp(ctx, s, own);
}

absl::StatusOr<MoeCombineGrads> MoeTokenDispatcher::CombineBackward(const StepContext& ctx,
                                                                    MoeDispatchState& s,
                                                                    const Tensor& dy) const {
  MIMO_ASSIGN_OR_RETURN(MoeCombineGrads g, CombineBackwardOverEp(ctx, s, dy));
  if (expert_tensor_parallel()) {
    MIMO_ASSIGN_OR_RETURN(g.dh, GatherOverExptTp(ctx, s, g.dh));
  }
  return g;
}

absl::StatusOr<Tensor> MoeTokenDispatcher::DispatchBackward(const StepContext& ctx,
                                                            const MoeDispatchState& s,
                                                            const Tensor& drows) const {
  if (!expert_tensor_parallel()) return DispatchBackwardOverEp(ctx, s, drows);
  MIMO_ASSIGN_OR_RETURN(Tensor own, ScatterOverExptTp(ctx, s, drows));
  return DispatchBackwardOverEp(ctx, s, own);
}

absl::StatusOr<Tensor> MoeTokenDispatcher::GatherOverExptTp(const StepContext& ctx,
                                                            const MoeDispatchState& s,
                                                            const Tensor& own) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t c = options_.hidden, rows = s.gathered_of_expert_row.numel();
  const int64_t gathered = s.expert_row_of_gathered.numel();
  MIMO_ASSIGN_OR_RETURN(Tensor mine, own.Slice(0, 0, s.own_rows));
  MIMO_ASSIGN_OR_RETURN(Tensor padded, PadRows(ctx, mine, s.member_rows));
  MIMO_ASSIGN_OR_RETURN(Tensor all, NewTensor(ctx, {gathered, c}, own.dtype()));
  MIMO_ASSIGN_OR_RETURN(comm::DataType type, CommType(own.dtype()));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(
      options_.expt_tp->AllGather(padded.data(), all.data(), s.member_rows * c, type));
  MIMO_ASSIGN_OR_RETURN(Tensor out, NewTensor(ctx, {rows, c}, own.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermute({.dtype = own.dtype(),
                                       .x = all.data(),
                                       .pair_of_row = s.gathered_of_expert_row.data<int32_t>(),
                                       .out = out.data(),
                                       .tokens = gathered,
                                       .top_k = 1,
                                       .hidden = c,
                                       .capacity = rows}));
  return out;
}

absl::StatusOr<Tensor> MoeTokenDispatcher::ScatterOverExptTp(const StepContext& ctx,
                                                             const MoeDispatchState& s,
                                                             const Tensor& rows) const {
  kernels::Ops& ops = *ctx.ops;
  const int64_t c = options_.hidden, gathered = s.expert_row_of_gathered.numel();
  MIMO_ASSIGN_OR_RETURN(Tensor all, NewTensor(ctx, {gathered, c}, rows.dtype()));
  MIMO_RETURN_IF_ERROR(ops.MoePermuteBackward({.dtype = rows.dtype(),
                                               .dout = rows.data(),
                                               .rows = s.expert_row_of_gathered.data<int32_t>(),
                                               .dx = all.data(),
                                               .tokens = gathered,
                                               .top_k = 1,
                                               .hidden = c}));
  MIMO_ASSIGN_OR_RETURN(Tensor own, NewTensor(ctx, {s.member_rows, c}, rows.dtype()));
  MIMO_ASSIGN_OR_RETURN(comm::DataType type, CommType(rows.dtype()));
  MIMO_RETURN_IF_ERROR(ops.Synchronize());
  MIMO_RETURN_IF_ERROR(options_.expt_tp->ReduceScatter(all.data(), own.data(), s.member_rows * c,
                                                       type, comm::ReduceOp::kSum));
  return own;
}

}  // namespace mimo

// OneForwardOneBackward: Megatron's 1F1B order, its batched send/receive pairs serialized.
#include "mimo/pipeline_schedule.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"

namespace mimo {

absl::StatusOr<std::vector<PipelineAction>> OneForwardOneBackward(int stage, int stages,
                                                                  int64_t micro_batches) {
  if (stages < 1 || stage < 0 || stage >= stages || micro_batches < 1) {
    return absl::InvalidArgumentError(absl::StrCat("1F1B schedule: stage ", stage, " of ", stages,
                                                   " over ", micro_batches, " micro-batches"));
  }
  using A = PipelineAction;
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<A> out;
  auto add = [&](A::Kind kind, int64_t i, bool applies) {
    if (applies) out.push_back({kind, i});
  };
  const int64_t warmup = std::min<int64_t>(stages - stage - 1, micro_batches);
  const int64_t steady = micro_batches - warmup;
  for (int64_t i = 0; i < warmup; ++i) {
    add(A::kRecvActivation, i, !first);
    add(A::kForward, i, true);
    add(A::kSendActivation, i, !last);
  }
  if (steady > 0) add(A::kRecvActivation, warmup, !first);
  for (int64_t j = 0; j < steady; ++j) {
    add(A::kForward, warmup + j, true);
    // With the next stage (this one the lower): send, then receive.
    add(A::kSendActivation, warmup + j, !last);
    add(A::kRecvGradient, j, !last);
    add(A::kBackward, j, true);
    if (j + 1 < steady) {
      // With the previous stage (this one the upper): receive, then send.
      add(A::kRecvActivation, warmup + j + 1, !first);
    }
    add(A::kSendGradient, j, !first);
  }
  for (int64_t i = steady; i < micro_batches; ++i) {
    add(A::kRecvGradient, i, !last);
    add(A::kBackward, i, true);
    add(A::kSendGradient, i, !first);
  }
  return out;
}

namespace {

// A message between two ranks: an activation for (or a gradient from) virtual stage `to`'s
// micro-batch.
struct Message {
  bool gradient = false;
  int to = 0;  // The virtual stage that consumes it.
  int64_t micro_batch = 0;
  bool operator==(const Message&) const = default;
};

}  // namespace

absl::StatusOr<std::vector<std::vector<PipelineAction>>> InterleavedOneForwardOneBackward(
    int stages, int chunks, int64_t micro_batches) {
  if (stages < 2 || chunks < 2 || micro_batches < 1 || micro_batches % stages != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("interleaved 1F1B schedule: ", stages, " stages of ", chunks, " chunks over ",
                     micro_batches,
                     " micro-batches (needs 2 or more of each, the micro-batches a multiple of "
                     "the stages)"));
  }
  using A = PipelineAction;
  const int p = stages, v = chunks, last_virtual = p * v - 1;
  const int64_t total = micro_batches * v;
  // Virtual micro-batch k of a rank's forwards (backwards: chunks from the last).
  auto chunk_of = [&](int64_t k, bool forward) {
    const int c = static_cast<int>(k % (p * v) / p);
    return forward ? c : v - 1 - c;
  };
  auto micro_of = [&](int64_t k) { return k / (p * v) * p + k % p; };
  // Each rank's computes in order.
  std::vector<std::vector<A>> computes(p);
  for (int s = 0; s < p; ++s) {
    const int64_t warmup =
        micro_batches == p ? total : std::min<int64_t>(2 * (p - s - 1) + (v - 1) * p, total);
    auto f = [&](int64_t k) {
      computes[s].push_back({A::kForward, micro_of(k), chunk_of(k, true)});
    };
    auto b = [&](int64_t k) {
      computes[s].push_back({A::kBackward, micro_of(k), chunk_of(k, false)});
    };
    for (int64_t k = 0; k < warmup; ++k) f(k);
    for (int64_t k = 0; k < total - warmup; ++k) {
      f(warmup + k);
      b(k);
    }
    for (int64_t k = total - warmup; k < total; ++k) b(k);
  }
  // Every rank at once in time (forwards 1 unit, backwards 2): a send and its receive are one
  // event between two ranks that are both between computes. A rank between computes first hands
  // its finished outputs to every neighbour that is also between computes, then starts its next
  // compute if that compute's input is here, else waits; a rank that finishes a compute thus
  // serves a neighbour waiting for it before going on.
  std::vector<std::vector<A>> out(p);
  std::vector<size_t> at(p, 0);
  std::vector<double> busy_until(p, 0);
  std::vector<bool> computing(p, false);
  std::vector<std::optional<Message>> output(p);  // Of the running compute.
  std::vector<std::vector<Message>> outbox(p), inbox(p);
  auto rank_of = [&](int virtual_stage) { return virtual_stage % p; };
  for (double now = 0;;) {
    for (int s = 0; s < p; ++s) {
      if (computing[s] && busy_until[s] <= now) {
        computing[s] = false;
        if (output[s].has_value()) outbox[s].push_back(*output[s]);
        output[s].reset();
      }
    }
    for (bool changed = true; changed;) {
      changed = false;
      for (int s = 0; s < p; ++s) {
        if (computing[s]) continue;
        for (auto it = outbox[s].begin(); it != outbox[s].end();) {
          const int q = rank_of(it->to);
          if (computing[q]) {
            ++it;
            continue;
          }
          const int from = it->to + (it->gradient ? 1 : -1);
          out[s].push_back(
              {it->gradient ? A::kSendGradient : A::kSendActivation, it->micro_batch, from / p});
          out[q].push_back(
              {it->gradient ? A::kRecvGradient : A::kRecvActivation, it->micro_batch, it->to / p});
          inbox[q].push_back(*it);
          it = outbox[s].erase(it);
          changed = true;
        }
      }
      for (int s = 0; s < p; ++s) {
        if (computing[s] || at[s] == computes[s].size()) continue;
        const A& a = computes[s][at[s]];
        const bool forward = a.kind == A::kForward;
        const int virtual_stage = a.chunk * p + s;
        const bool needs = forward ? virtual_stage > 0 : virtual_stage < last_virtual;
        const Message want{.gradient = !forward, .to = virtual_stage, .micro_batch = a.micro_batch};
        if (needs) {
          auto it = std::find(inbox[s].begin(), inbox[s].end(), want);
          if (it == inbox[s].end()) continue;  // Waits.
          inbox[s].erase(it);
        }
        out[s].push_back(a);
        if (forward ? virtual_stage < last_virtual : virtual_stage > 0) {
          output[s] = Message{.gradient = !forward,
                              .to = virtual_stage + (forward ? 1 : -1),
                              .micro_batch = a.micro_batch};
        }
        computing[s] = true;
        busy_until[s] = now + (forward ? 1.0 : 2.0);
        ++at[s];
        changed = true;
      }
    }
    double next = -1;
    for (int s = 0; s < p; ++s) {
      if (computing[s] && (next < 0 || busy_until[s] < next)) next = busy_until[s];
    }
    if (next < 0) break;  // Nothing runs: done, or stalled (checked below).
    now = next;
  }
  for (int s = 0; s < p; ++s) {
    if (at[s] != computes[s].size() || !outbox[s].empty()) {
      return absl::InternalError(absl::StrCat("interleaved 1F1B schedule: rank ", s,
                                              " stalls at compute ", at[s], " of ",
                                              computes[s].size()));
    }
  }
  return out;
}

double PipelineBubbleFraction(int stages, int64_t micro_batches, int chunks) {
  return static_cast<double>(stages - 1) / static_cast<double>(chunks * micro_batches + stages - 1);
}

}  // namespace mimo

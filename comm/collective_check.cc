// The selftest of one process group: every collective, checked element by element.
#include "comm/collective_check.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bfloat16.h"
#include "common/status_macros.h"

namespace mimo::comm {
namespace {

// Elements per member: not a multiple of any small group size, so Gloo's ring algorithms split
// the data unevenly.
constexpr size_t kCount = 37;

std::string Show(float v) { return absl::StrFormat("%.9g", v); }
std::string Show(int32_t v) { return absl::StrCat(v); }
std::string Show(int64_t v) { return absl::StrCat(v); }
std::string Show(uint16_t v) { return absl::StrFormat("0x%04x", v); }

// A host vector's twin where the communicator works: the vector's own storage for host memory,
// else a buffer in `space`, freed on destruction.
class Staged {
 public:
  template <typename T>
  static absl::StatusOr<Staged> Create(BufferSpace* space, std::vector<T>& host) {
    Staged staged(space, host.data(), host.size() * sizeof(T));
    if (space != nullptr) {
      MIMO_ASSIGN_OR_RETURN(staged.buffer_, space->Allocate(staged.bytes_));
      MIMO_RETURN_IF_ERROR(space->CopyIn(staged.buffer_, staged.host_, staged.bytes_));
    }
    return staged;
  }
  Staged(Staged&& other) noexcept
      : space_(other.space_), host_(other.host_), bytes_(other.bytes_), buffer_(other.buffer_) {
    other.buffer_ = nullptr;
  }
  Staged& operator=(Staged&&) = delete;
  ~Staged() {
    if (space_ != nullptr && buffer_ != nullptr) space_->Free(buffer_);
  }

  void* get() const { return buffer_; }
  // Brings the communicator's result back into the host vector.
  absl::Status CopyOut() const {
    return space_ == nullptr ? absl::OkStatus() : space_->CopyOut(host_, buffer_, bytes_);
  }

 private:
  Staged(BufferSpace* space, void* host, size_t bytes)
      : space_(space), host_(host), bytes_(bytes), buffer_(space == nullptr ? host : nullptr) {}

  BufferSpace* space_;
  void* host_;
  size_t bytes_;
  void* buffer_;
};

class Checker {
 public:
  Checker(Communicator& comm, int global_rank, absl::string_view kind, BufferSpace* space)
      : comm_(comm),
        space_(space),
        rank_(comm.rank()),
        size_(comm.size()),
        global_rank_(global_rank),
        kind_(kind) {}

  absl::Status Run() {
    MIMO_RETURN_IF_ERROR(AllReduces());
    MIMO_RETURN_IF_ERROR(ReduceScatters());
    MIMO_RETURN_IF_ERROR(AllGathers());
    MIMO_RETURN_IF_ERROR(AllToAll());
    MIMO_RETURN_IF_ERROR(Broadcasts());
    if (size_ > 1) MIMO_RETURN_IF_ERROR(SendRecvRing());
    return Call("barrier", comm_.Barrier());
  }

 private:
  // The error of a call, prefixed with where it happened.
  absl::Status Call(absl::string_view collective, const absl::Status& status) const {
    if (status.ok()) return status;
    return absl::Status(status.code(), absl::StrCat("selftest of group ", kind_, ", ", collective,
                                                    ", group rank ", rank_, " (global rank ",
                                                    global_rank_, "): ", status.message()));
  }

  // DataLoss at the first element of `got` that differs from expected(i).
  template <typename T, typename Expected>
  absl::Status Expect(absl::string_view collective, const std::vector<T>& got,
                      Expected expected) const {
    for (size_t i = 0; i < got.size(); ++i) {
      const T want = expected(i);
      if (!(got[i] == want)) {
        return absl::DataLossError(absl::StrCat(
            "selftest of group ", kind_, ", ", collective, ", group rank ", rank_, " (global rank ",
            global_rank_, "): element ", i, ": expected ", Show(want), ", got ", Show(got[i])));
      }
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::StatusOr<Staged> Stage(absl::string_view name, std::vector<T>& host) const {
    absl::StatusOr<Staged> staged = Staged::Create(space_, host);
    if (!staged.ok()) return Call(name, staged.status());
    return staged;
  }

  // Fills a vector of `count` elements of member `r` with value(r, i).
  template <typename T, typename Value>
  static std::vector<T> Fill(int r, size_t count, Value value) {
    std::vector<T> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = value(r, i);
    return v;
  }

  // All-reduces value(r, i) over the group and checks against the same reduction done locally.
  template <typename T, typename Value, typename Combine>
  absl::Status CheckAllReduce(absl::string_view name, DataType type, ReduceOp op, Value value,
                              Combine combine) {
    std::vector<T> data = Fill<T>(rank_, kCount, value);
    MIMO_ASSIGN_OR_RETURN(Staged buffer, Stage(name, data));
    MIMO_RETURN_IF_ERROR(Call(name, comm_.AllReduce(buffer.get(), kCount, type, op)));
    MIMO_RETURN_IF_ERROR(Call(name, buffer.CopyOut()));
    return Expect(name, data, [&](size_t i) {
      T acc = value(0, i);
      for (int q = 1; q < size_; ++q) acc = combine(acc, value(q, i));
      return acc;
    });
  }

  absl::Status AllReduces() {
    // Multiples of 1/4 far below 2^24: float sums are exact in any order.
    auto f32 = [](int r, size_t i) {
      return static_cast<float>((r + 1) * static_cast<int>(i % 13 + 1)) - 0.25f * r;
    };
    auto f32_mixed = [](int r, size_t i) {
      return static_cast<float>((r * 7 + static_cast<int>(i) * 3) % 11) - 5.25f;
    };
    // Beyond 32 bits, with both signs.
    auto i64 = [](int r, size_t i) {
      return (int64_t{1} << 40) * (r + 1) - static_cast<int64_t>(i) * (r + 3);
    };
    auto i64_mixed = [](int r, size_t i) {
      const int64_t magnitude = (int64_t{1} << 35) + r * 1000 + static_cast<int64_t>(i);
      return (r + static_cast<int>(i)) % 2 == 0 ? magnitude : -magnitude;
    };
    auto i32 = [](int r, size_t i) { return (r + 1) * 1000 - static_cast<int32_t>(i); };
    auto sum = [](auto a, auto b) { return a + b; };
    auto max = [](auto a, auto b) { return std::max(a, b); };
    auto min = [](auto a, auto b) { return std::min(a, b); };
    MIMO_RETURN_IF_ERROR(CheckAllReduce<float>("all-reduce(sum, float32)", DataType::kFloat32,
                                               ReduceOp::kSum, f32, sum));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<float>("all-reduce(max, float32)", DataType::kFloat32,
                                               ReduceOp::kMax, f32_mixed, max));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<float>("all-reduce(min, float32)", DataType::kFloat32,
                                               ReduceOp::kMin, f32_mixed, min));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<int64_t>("all-reduce(sum, int64)", DataType::kInt64,
                                                 ReduceOp::kSum, i64, sum));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<int64_t>("all-reduce(max, int64)", DataType::kInt64,
                                                 ReduceOp::kMax, i64_mixed, max));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<int64_t>("all-reduce(min, int64)", DataType::kInt64,
                                                 ReduceOp::kMin, i64_mixed, min));
    MIMO_RETURN_IF_ERROR(CheckAllReduce<int32_t>("all-reduce(sum, int32)", DataType::kInt32,
                                                 ReduceOp::kSum, i32, sum));
    if (size_ <= 256) {
      // Zero or 2^k (k in -1..2) per member: every partial sum is at most 256 * 2^k, which
      // bfloat16's 8 significant bits hold exactly.
      auto bf16 = [](int r, size_t i) {
        return (r + i) % 3 == 0 ? FloatToBFloat16(0.5f * static_cast<float>(1 << (i % 4)))
                                : FloatToBFloat16(0.0f);
      };
      auto bf16_sum = [](uint16_t a, uint16_t b) {
        return FloatToBFloat16(BFloat16ToFloat(a) + BFloat16ToFloat(b));
      };
      MIMO_RETURN_IF_ERROR(CheckAllReduce<uint16_t>(
          "all-reduce(sum, bfloat16)", DataType::kBFloat16, ReduceOp::kSum, bf16, bf16_sum));
    }
    return absl::OkStatus();
  }

  absl::Status ReduceScatters() {
    const size_t total = kCount * size_;
    {
      constexpr absl::string_view kName = "reduce-scatter(sum, float32)";
      auto value = [](int r, size_t j) {
        return static_cast<float>((r + 1) * static_cast<int>(j % 17)) - 0.25f * r;
      };
      std::vector<float> input = Fill<float>(rank_, total, value);
      std::vector<float> output(kCount, -1.0f);
      MIMO_ASSIGN_OR_RETURN(Staged in, Stage(kName, input));
      MIMO_ASSIGN_OR_RETURN(Staged out, Stage(kName, output));
      MIMO_RETURN_IF_ERROR(Call(kName, comm_.ReduceScatter(in.get(), out.get(), kCount,
                                                           DataType::kFloat32, ReduceOp::kSum)));
      MIMO_RETURN_IF_ERROR(Call(kName, out.CopyOut()));
      MIMO_RETURN_IF_ERROR(Expect(kName, output, [&](size_t i) {
        float acc = 0;
        for (int q = 0; q < size_; ++q) acc += value(q, rank_ * kCount + i);
        return acc;
      }));
    }
    {
      constexpr absl::string_view kName = "reduce-scatter(max, int64)";
      auto value = [](int r, size_t j) {
        return (int64_t{3} << 33) * ((r * 5 + static_cast<int64_t>(j)) % 7) - r;
      };
      std::vector<int64_t> input = Fill<int64_t>(rank_, total, value);
      std::vector<int64_t> output(kCount, -1);
      MIMO_ASSIGN_OR_RETURN(Staged in, Stage(kName, input));
      MIMO_ASSIGN_OR_RETURN(Staged out, Stage(kName, output));
      MIMO_RETURN_IF_ERROR(Call(kName, comm_.ReduceScatter(in.get(), out.get(), kCount,
                                                           DataType::kInt64, ReduceOp::kMax)));
      MIMO_RETURN_IF_ERROR(Call(kName, out.CopyOut()));
      MIMO_RETURN_IF_ERROR(Expect(kName, output, [&](size_t i) {
        int64_t acc = value(0, rank_ * kCount + i);
        for (int q = 1; q < size_; ++q) acc = std::max(acc, value(q, rank_ * kCount + i));
        return acc;
      }));
    }
    return absl::OkStatus();
  }

  absl::Status AllGathers() {
    {
      constexpr absl::string_view kName = "all-gather(float32)";
      auto value = [](int r, size_t i) { return static_cast<float>(r * 100 + i) + 0.5f; };
      std::vector<float> input = Fill<float>(rank_, kCount, value);
      std::vector<float> output(kCount * size_, -1.0f);
      MIMO_ASSIGN_OR_RETURN(Staged in, Stage(kName, input));
      MIMO_ASSIGN_OR_RETURN(Staged out, Stage(kName, output));
      MIMO_RETURN_IF_ERROR(
          Call(kName, comm_.AllGather(in.get(), out.get(), kCount, DataType::kFloat32)));
      MIMO_RETURN_IF_ERROR(Call(kName, out.CopyOut()));
      MIMO_RETURN_IF_ERROR(Expect(kName, output, [&](size_t j) {
        return value(static_cast<int>(j / kCount), j % kCount);
      }));
    }
    {
      // Arbitrary bit patterns (NaNs included): bfloat16 is moved, never interpreted.
      constexpr absl::string_view kName = "all-gather(bfloat16)";
      auto value = [](int r, size_t i) {
        return static_cast<uint16_t>((r * 257 + static_cast<int>(i) * 7919) & 0xffff);
      };
      std::vector<uint16_t> input = Fill<uint16_t>(rank_, kCount, value);
      std::vector<uint16_t> output(kCount * size_, 0);
      MIMO_ASSIGN_OR_RETURN(Staged in, Stage(kName, input));
      MIMO_ASSIGN_OR_RETURN(Staged out, Stage(kName, output));
      MIMO_RETURN_IF_ERROR(
          Call(kName, comm_.AllGather(in.get(), out.get(), kCount, DataType::kBFloat16)));
      MIMO_RETURN_IF_ERROR(Call(kName, out.CopyOut()));
      MIMO_RETURN_IF_ERROR(Expect(kName, output, [&](size_t j) {
        return value(static_cast<int>(j / kCount), j % kCount);
      }));
    }
    return absl::OkStatus();
  }

  absl::Status AllToAll() {
    constexpr absl::string_view kName = "all-to-all(float32)";
    // Member s sends count(s, d) elements to member d: uneven, and zero for some pairs.
    auto count = [](int s, int d) { return static_cast<size_t>((s + 2 * d + 1) % 4); };
    auto value = [](int s, int d, size_t k) { return static_cast<float>(s * 1000 + d * 10 + k); };
    std::vector<size_t> send_counts(size_), recv_counts(size_);
    std::vector<float> input;
    for (int d = 0; d < size_; ++d) {
      send_counts[d] = count(rank_, d);
      recv_counts[d] = count(d, rank_);
      for (size_t k = 0; k < send_counts[d]; ++k) input.push_back(value(rank_, d, k));
    }
    std::vector<float> expected;
    for (int s = 0; s < size_; ++s) {
      for (size_t k = 0; k < recv_counts[s]; ++k) expected.push_back(value(s, rank_, k));
    }
    std::vector<float> output(expected.size(), -1.0f);
    MIMO_ASSIGN_OR_RETURN(Staged in, Stage(kName, input));
    MIMO_ASSIGN_OR_RETURN(Staged out, Stage(kName, output));
    MIMO_RETURN_IF_ERROR(Call(
        kName, comm_.AllToAll(in.get(), send_counts, out.get(), recv_counts, DataType::kFloat32)));
    MIMO_RETURN_IF_ERROR(Call(kName, out.CopyOut()));
    return Expect(kName, output, [&](size_t j) { return expected[j]; });
  }

  absl::Status Broadcasts() {
    for (int root = 0; root < size_; ++root) {
      const std::string name = absl::StrCat("broadcast(float32, root ", root, ")");
      auto value = [root](size_t i) { return static_cast<float>(root * 1000 + i) + 0.75f; };
      std::vector<float> data(kCount, -1.0f);
      if (rank_ == root) {
        for (size_t i = 0; i < kCount; ++i) data[i] = value(i);
      }
      MIMO_ASSIGN_OR_RETURN(Staged buffer, Stage(name, data));
      MIMO_RETURN_IF_ERROR(
          Call(name, comm_.Broadcast(buffer.get(), kCount, DataType::kFloat32, root)));
      MIMO_RETURN_IF_ERROR(Call(name, buffer.CopyOut()));
      MIMO_RETURN_IF_ERROR(Expect(name, data, value));
    }
    constexpr absl::string_view kName = "broadcast(int64, root 0)";
    auto value = [](size_t i) { return (int64_t{5} << 40) + static_cast<int64_t>(i); };
    std::vector<int64_t> data(kCount, -1);
    if (rank_ == 0) {
      for (size_t i = 0; i < kCount; ++i) data[i] = value(i);
    }
    MIMO_ASSIGN_OR_RETURN(Staged buffer, Stage(kName, data));
    MIMO_RETURN_IF_ERROR(Call(kName, comm_.Broadcast(buffer.get(), kCount, DataType::kInt64, 0)));
    MIMO_RETURN_IF_ERROR(Call(kName, buffer.CopyOut()));
    return Expect(kName, data, value);
  }

  // Each member sends to the next and receives from the previous. A send may block until its
  // receive is posted, so even members send first and odd ones receive first: member 1 always
  // receives first, which breaks the cycle for every group size.
  template <typename T, typename Value>
  absl::Status RingStep(absl::string_view name, DataType type, Value value) {
    const int next = (rank_ + 1) % size_;
    const int prev = (rank_ + size_ - 1) % size_;
    std::vector<T> out = Fill<T>(rank_, kCount, value);
    std::vector<T> in(kCount, T{});
    MIMO_ASSIGN_OR_RETURN(Staged out_buffer, Stage(name, out));
    MIMO_ASSIGN_OR_RETURN(Staged in_buffer, Stage(name, in));
    auto send = [&] { return Call(name, comm_.Send(out_buffer.get(), kCount, type, next)); };
    auto recv = [&] { return Call(name, comm_.Recv(in_buffer.get(), kCount, type, prev)); };
    if (rank_ % 2 == 0) {
      MIMO_RETURN_IF_ERROR(send());
      MIMO_RETURN_IF_ERROR(recv());
    } else {
      MIMO_RETURN_IF_ERROR(recv());
      MIMO_RETURN_IF_ERROR(send());
    }
    MIMO_RETURN_IF_ERROR(Call(name, in_buffer.CopyOut()));
    return Expect(name, in, [&](size_t i) { return value(prev, i); });
  }

  absl::Status SendRecvRing() {
    MIMO_RETURN_IF_ERROR(
        RingStep<float>("send/recv ring(float32)", DataType::kFloat32,
                        [](int r, size_t i) { return static_cast<float>(r * 10 + i) + 0.125f; }));
    // A second message right behind the first: messages between two members keep their order.
    return RingStep<int64_t>("send/recv ring(int64)", DataType::kInt64, [](int r, size_t i) {
      return (int64_t{7} << 36) * (r + 1) + static_cast<int64_t>(i);
    });
  }

  Communicator& comm_;
  BufferSpace* const space_;
  const int rank_;
  const int size_;
  const int global_rank_;
  const absl::string_view kind_;
};

}  // namespace

absl::Status CheckCollectives(Communicator& comm, int global_rank, absl::string_view kind,
                              BufferSpace* space) {
  return Checker(comm, global_rank, kind, space).Run();
}

}  // namespace mimo::comm

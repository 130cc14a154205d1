// ConsolidatedReader: slices gathered per parameter from the model files' "shards" metadata,
// checked to tile the full tensor, and scattered into it on Read.
#include "checkpoint/consolidated_reader.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace mimo::checkpoint {
namespace {

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

absl::Status Bad(const std::string& path, const std::string& name, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": tensor \"", name, "\": ", what));
}

bool Intersect(const Ranges& a, const Ranges& b) {
  for (const auto& [s1, n1] : a) {
    for (const auto& [s2, n2] : b) {
      if (s1 < s2 + n2 && s2 < s1 + n1) return true;
    }
  }
  return false;
}

int64_t Volume(const Slice& s) {
  int64_t v = 1;
  for (const Ranges& d : s.ranges) {
    int64_t n = 0;
    for (const auto& r : d) n += r.second;
    v *= n;
  }
  return v;
}

}  // namespace

uint64_t WholeTensor::bytes() const {
  uint64_t n = DTypeBytes(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

absl::StatusOr<ConsolidatedReader> ConsolidatedReader::Open(const std::string& dir) {
  ConsolidatedReader out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (absl::StartsWith(name, "model_rank_") && absl::EndsWith(name, ".safetensors")) {
      out.paths_.push_back(e.path().string());
    }
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  if (out.paths_.empty()) {
    return absl::NotFoundError(absl::StrCat(dir, " holds no model_rank_*.safetensors files"));
  }
  std::sort(out.paths_.begin(), out.paths_.end());
  for (size_t f = 0; f < out.paths_.size(); ++f) {
    const std::string& path = out.paths_[f];
    MIMO_ASSIGN_OR_RETURN(SafetensorsReader reader, SafetensorsReader::Open(path));
    nlohmann::json shards = nlohmann::json::object();
    if (const auto it = reader.header().metadata.find("shards");
        it != reader.header().metadata.end()) {
      shards = nlohmann::json::parse(it->second, nullptr, false);
      if (!shards.is_object()) return absl::DataLossError(path + ": \"shards\" is not JSON");
    }
    for (const TensorEntry& t : reader.header().tensors) {
      Slice slice{.file = static_cast<int>(f)};
      std::vector<int64_t> full = t.shape;
      for (int64_t n : t.shape) slice.ranges.push_back({{0, n}});
      if (shards.contains(t.name)) {
        const nlohmann::json& dims = shards[t.name];
        if (!dims.is_array()) return Bad(path, t.name, "its shards are not a list");
        for (const nlohmann::json& d : dims) {
          if (!d.is_object() || !d.contains("dim") || !d.contains("full_size") ||
              !d.contains("ranges") || !d["dim"].is_number_integer() ||
              !d["full_size"].is_number_integer() || !d["ranges"].is_array()) {
            return Bad(path, t.name, "a shard without dim, full_size and ranges");
          }
          const int64_t dim = d["dim"].get<int64_t>(), size = d["full_size"].get<int64_t>();
          if (dim < 0 || dim >= static_cast<int64_t>(t.shape.size()) || size < 1) {
            return Bad(path, t.name, absl::StrCat("a shard of dimension ", dim, " of size ", size));
          }
          Ranges ranges;
          int64_t held = 0;
          for (const nlohmann::json& r : d["ranges"]) {
            if (!r.is_array() || r.size() != 2 || !r[0].is_number_integer() ||
                !r[1].is_number_integer() || r[0].get<int64_t>() < 0 || r[1].get<int64_t>() < 0 ||
                r[0].get<int64_t>() + r[1].get<int64_t>() > size) {
              return Bad(path, t.name, "a range outside the full dimension");
            }
            ranges.push_back({r[0].get<int64_t>(), r[1].get<int64_t>()});
            held += ranges.back().second;
          }
          if (held != t.shape[dim]) {
            return Bad(path, t.name,
                       absl::StrCat("ranges of ", held, " for a local size of ", t.shape[dim]));
          }
          slice.ranges[dim] = std::move(ranges);
          full[dim] = size;
        }
      }
      auto [it, fresh] = out.tensors_.try_emplace(t.name);
      WholeTensor& whole = it->second;
      if (fresh) {
        whole = {.name = t.name, .dtype = t.dtype, .shape = full};
      } else if (whole.dtype != t.dtype || whole.shape != full) {
        return Bad(path, t.name,
                   "another dtype or full shape than in " + out.paths_[whole.slices[0].file]);
      }
      bool replica = false;
      for (const Slice& other : whole.slices) {
        if (other.ranges == slice.ranges) {
          replica = true;  // The same slice on another rank: one copy is read.
          break;
        }
        bool overlap = true;
        for (size_t d = 0; d < full.size(); ++d) {
          overlap = overlap && Intersect(other.ranges[d], slice.ranges[d]);
        }
        if (overlap) {
          return Bad(path, t.name, "a slice overlapping another of " + out.paths_[other.file]);
        }
      }
      if (!replica) whole.slices.push_back(std::move(slice));
    }
    out.readers_.push_back(std::move(reader));
  }
  for (const auto& [name, whole] : out.tensors_) {
    int64_t covered = 0, numel = 1;
    for (const Slice& s : whole.slices) covered += Volume(s);
    for (int64_t d : whole.shape) numel *= d;
    if (covered != numel) {
      return absl::DataLossError(absl::StrCat(dir, ": tensor \"", name, "\": its slices hold ",
                                              covered, " of its ", numel,
                                              " elements (a rank's files missing?)"));
    }
  }
  return out;
}

absl::Status ConsolidatedReader::Read(const std::string& name, absl::Span<char> out) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError(absl::StrCat("no tensor \"", name, "\""));
  const WholeTensor& whole = it->second;
  if (out.size() != whole.bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" has ", whole.bytes(), " bytes, not ", out.size()));
  }
  const size_t element = DTypeBytes(whole.dtype);
  const int dims = static_cast<int>(whole.shape.size());
  std::vector<int64_t> stride(dims, 1);  // Of the full tensor, in elements.
  for (int d = dims - 2; d >= 0; --d) stride[d] = stride[d + 1] * whole.shape[d + 1];
  std::vector<char> local;
  for (const Slice& s : whole.slices) {
    // Each local dimension's index -> the full dimension's.
    std::vector<std::vector<int64_t>> to_full(dims);
    for (int d = 0; d < dims; ++d) {
      for (const auto& [start, size] : s.ranges[d]) {
        for (int64_t i = 0; i < size; ++i) to_full[d].push_back(start + i);
      }
    }
    const TensorEntry* e = readers_[s.file].header().Find(name);
    local.resize(e->end - e->begin);
    MIMO_RETURN_IF_ERROR(readers_[s.file].Read(name, absl::MakeSpan(local)));
    // Rows of the innermost dimension, each scattered by runs of consecutive full indices.
    const int64_t inner = dims == 0 ? 1 : static_cast<int64_t>(to_full[dims - 1].size());
    const int64_t rows = inner == 0 ? 0 : static_cast<int64_t>(local.size() / element) / inner;
    std::vector<int64_t> index(std::max(dims - 1, 0), 0);  // The row's local index.
    for (int64_t row = 0; row < rows; ++row) {
      int64_t base = 0;
      for (int d = 0; d + 1 < dims; ++d) base += to_full[d][index[d]] * stride[d];
      const char* src = local.data() + row * inner * element;
      for (int64_t i = 0; i < inner;) {
        int64_t run = 1;
        const int64_t first = dims == 0 ? 0 : to_full[dims - 1][i];
        while (i + run < inner && to_full[dims - 1][i + run] == first + run) ++run;
        std::copy(src + i * element, src + (i + run) * element,
                  out.data() + (base + first) * element);
        i += run;
      }
      for (int d = dims - 2; d >= 0; --d) {  // The next row's local index.
        if (++index[d] < static_cast<int64_t>(to_full[d].size())) break;
        index[d] = 0;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mimo::checkpoint

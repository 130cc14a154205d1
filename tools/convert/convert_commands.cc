// mimo-convert's inspect and verify, over ConsolidatedReader and the folder's metadata.json.
#include "tools/convert/convert_commands.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "checkpoint/consolidated_reader.h"
#include "checkpoint/safetensors.h"
#include "common/bfloat16.h"
#include "nlohmann/json.hpp"

namespace mimo::tools {
namespace {

// Element i of a float tensor's bytes (F32 or BF16) as double.
double ValueAt(const std::string& dtype, const std::vector<char>& bytes, size_t i) {
  if (dtype == "BF16") {
    uint16_t b;
    std::memcpy(&b, bytes.data() + 2 * i, 2);
    return BFloat16ToFloat(b);
  }
  float f;
  std::memcpy(&f, bytes.data() + 4 * i, 4);
  return f;
}

}  // namespace

int RunInspect(const std::string& dir, std::ostream& out, std::ostream& err) {
  std::ifstream in(dir + "/metadata.json");
  const nlohmann::json meta =
      in ? nlohmann::json::parse(in, nullptr, false) : nlohmann::json(nullptr);
  auto reader = checkpoint::ConsolidatedReader::Open(dir);
  if (!reader.ok()) {
    err << "error: " << reader.status().message() << "\n";
    return 1;
  }
  out << "checkpoint " << dir << "\n";
  if (meta.is_object()) {
    out << "  iteration " << meta.value("iteration", nlohmann::json()).dump() << ", "
        << meta.value("world_size", nlohmann::json()).dump() << " ranks, consumed samples "
        << meta.value("consumed_samples", nlohmann::json()).dump() << "\n  layout "
        << meta.value("layout", nlohmann::json()).dump() << "\n";
  } else {
    out << "  (no readable metadata.json)\n";
  }
  // Every file the folder's metadata lists, checked.
  int bad = 0;
  if (meta.is_object() && meta.contains("files") && meta["files"].is_object()) {
    out << "files:\n";
    for (const auto& [file, d] : meta["files"].items()) {
      const auto got = checkpoint::DigestOf(dir + "/" + file);
      const bool ok = got.ok() && d.is_object() && d.value("bytes", uint64_t{0}) == got->bytes &&
                      d.value("crc32c", uint64_t{0}) == got->crc32c;
      bad += ok ? 0 : 1;
      out << "  " << file << "  " << (got.ok() ? std::to_string(got->bytes) : "?") << " bytes  "
          << (ok ? "crc32c ok" : "CHECKSUM MISMATCH OR UNREADABLE") << "\n";
    }
  }
  uint64_t total = 0;
  out << "tensors (" << reader->tensors().size() << "):\n";
  for (const auto& [name, t] : reader->tensors()) {
    total += t.bytes();
    out << "  " << name << "  " << t.dtype << " [" << absl::StrJoin(t.shape, ", ") << "]  "
        << t.slices.size() << (t.slices.size() == 1 ? " slice" : " slices") << "\n";
  }
  out << "whole tensors: " << total << " bytes\n";
  if (bad > 0) {
    err << "error: " << bad << " file(s) of " << dir << " do not match metadata.json\n";
    return 1;
  }
  return 0;
}

int RunVerify(const std::string& a, const std::string& b, std::ostream& out, std::ostream& err) {
  auto ra = checkpoint::ConsolidatedReader::Open(a);
  auto rb = checkpoint::ConsolidatedReader::Open(b);
  for (const auto* r : {&ra, &rb}) {
    if (!r->ok()) {
      err << "error: " << r->status().message() << "\n";
      return 1;
    }
  }
  for (const auto& [name, t] : rb->tensors()) {
    if (!ra->tensors().contains(name)) {
      err << "differ: " << b << " has tensor " << name << ", " << a << " does not\n";
      return 1;
    }
  }
  std::vector<char> x, y;
  for (const auto& [name, t] : ra->tensors()) {
    const auto other = rb->tensors().find(name);
    if (other == rb->tensors().end()) {
      err << "differ: " << a << " has tensor " << name << ", " << b << " does not\n";
      return 1;
    }
    if (other->second.dtype != t.dtype || other->second.shape != t.shape) {
      err << "differ: tensor " << name << " is " << t.dtype << " [" << absl::StrJoin(t.shape, ", ")
          << "] in " << a << ", " << other->second.dtype << " ["
          << absl::StrJoin(other->second.shape, ", ") << "] in " << b << "\n";
      return 1;
    }
    x.resize(t.bytes());
    y.resize(t.bytes());
    for (const auto& [reader, buffer] : {std::pair{&*ra, &x}, {&*rb, &y}}) {
      if (absl::Status s = reader->Read(name, absl::MakeSpan(*buffer)); !s.ok()) {
        err << "error: " << s.message() << "\n";
        return 1;
      }
    }
    if (x == y) continue;
    err << "differ: tensor " << name;
    if (t.dtype == "F32" || t.dtype == "BF16") {
      double worst = 0;
      for (size_t i = 0; i < x.size() / checkpoint::DTypeBytes(t.dtype); ++i) {
        worst = std::max(worst, std::abs(ValueAt(t.dtype, x, i) - ValueAt(t.dtype, y, i)));
      }
      err << ": largest absolute difference " << worst;
    }
    err << "\n";
    return 1;
  }
  out << "equal: " << ra->tensors().size() << " tensors of " << a << " and " << b << "\n";
  return 0;
}

void AddConvertCommands(CLI::App& app, int* exit_code) {
  auto dir = std::make_shared<std::string>();
  CLI::App* inspect = app.add_subcommand(
      "inspect", "print a checkpoint folder's layout, files (checksums checked) and tensors");
  inspect->add_option("DIR", *dir, "a checkpoint folder (iter_NNNNNNN)")->required();
  inspect->callback([dir, exit_code] { *exit_code = RunInspect(*dir, std::cout, std::cerr); });
  auto pair = std::make_shared<std::pair<std::string, std::string>>();
  CLI::App* verify = app.add_subcommand(
      "verify", "check that two checkpoints hold the same tensors after un-sharding");
  verify->add_option("A", pair->first, "a checkpoint folder")->required();
  verify->add_option("B", pair->second, "another, of any layout")->required();
  verify->callback([pair, exit_code] {
    *exit_code = RunVerify(pair->first, pair->second, std::cout, std::cerr);
  });
  app.require_subcommand(1);
}

}  // namespace mimo::tools

// convert_bench_export SPEC OUT: random whole tensors of a job spec's model, one
// OUT/<module>/model.safetensors per module (an export's layout), for bench/convert_bench.sh to
// import and reshard. The parameters are those the spec's own layout's ranks hold
// (worker::DescribeRank), each at its full shape, in the spec's compute dtype (bf16 unless
// precision is PRECISION_FP32); the values are a cheap pseudo-random sequence.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "coordinator/spec_validation.h"
#include "tools/mimoctl/spec_file.h"
#include "worker/rank_modules.h"
#include "worker/rank_state_format.h"

namespace {

int Run(const std::string& spec_path, const std::string& out) {
  auto spec = mimo::tools::ReadJobSpecFile(spec_path);
  if (!spec.ok()) {
    std::cerr << spec.status() << "\n";
    return 1;
  }
  auto plan = mimo::coordinator::ValidateJobSpec(*spec, nullptr);
  if (!plan.ok()) {
    std::cerr << plan.status() << "\n";
    return 1;
  }
  const mimo::kernels::DType dtype = spec->training().precision() == mimo::v1::PRECISION_FP32
                                         ? mimo::kernels::DType::kF32
                                         : mimo::kernels::DType::kBF16;
  // Every parameter at its full shape, by module.
  std::map<std::string, std::map<std::string, std::vector<int64_t>>> modules;
  for (int r = 0; r < plan->world_size(); ++r) {
    auto rank = mimo::worker::DescribeRank(*spec, *plan, r, dtype);
    if (!rank.ok()) {
      std::cerr << rank.status() << "\n";
      return 1;
    }
    for (const mimo::ParameterSpec& p : rank->parameters) {
      std::vector<int64_t> full(p.shape.begin(), p.shape.end());
      for (const mimo::ParameterShard& s : p.shards) full[s.dim] = s.full_size;
      modules[p.name.substr(0, p.name.find('.'))][p.name] = full;
    }
  }
  uint64_t state = 0x9E3779B97F4A7C15ull, total = 0;
  const std::string type = mimo::worker::SafetensorsDType(dtype);
  for (const auto& [module, tensors] : modules) {
    std::filesystem::create_directories(out + "/" + module);
    std::vector<mimo::checkpoint::TensorToWrite> specs;
    for (const auto& [name, shape] : tensors) {
      specs.push_back({.name = name, .dtype = type, .shape = shape});
    }
    auto writer = mimo::checkpoint::SafetensorsStreamWriter::Create(
        out + "/" + module + "/model.safetensors", specs, {{"format", "pt"}});
    absl::Status status = writer.status();
    std::vector<char> bytes;
    for (const auto& [name, shape] : tensors) {
      uint64_t n = mimo::checkpoint::DTypeBytes(type);
      for (int64_t d : shape) n *= static_cast<uint64_t>(d);
      bytes.resize(n);
      for (uint64_t i = 0; i < n; i += 2) {
        // Small finite values in either dtype: a random mantissa under a fixed exponent.
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const uint16_t word = static_cast<uint16_t>(0x3C00 | ((state >> 33) & 0x80FF));
        std::memcpy(bytes.data() + i, &word, 2);
      }
      total += n;
      if (status.ok()) status = writer->Append(bytes);
    }
    if (status.ok()) status = writer->Finish().status();
    if (!status.ok()) {
      std::cerr << status << "\n";
      return 1;
    }
  }
  std::cout << "wrote " << total << " bytes of whole tensors under " << out << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: convert_bench_export SPEC OUT\n";
    return 2;
  }
  return Run(argv[1], argv[2]);
}

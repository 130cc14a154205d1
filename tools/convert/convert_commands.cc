// mimo-convert's inspect, verify and export, over ConsolidatedReader and metadata.json, and the
// command line of every command.
#include "tools/convert/convert_commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "checkpoint/consolidated_reader.h"
#include "checkpoint/safetensors.h"
#include "common/bfloat16.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "tools/convert/qkv_layout.h"
#include "tools/convert/reshard.h"
#include "tools/convert/source_files.h"

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

// Writes `text` and a newline to `path`; the error of a failed open, write or close.
absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::trunc);
  file << text << "\n";
  file.close();
  if (!file) return absl::DataLossError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

int RunInspect(const std::string& dir, std::ostream& out, std::ostream& err) {
  namespace fs = std::filesystem;
  std::ifstream in(dir + "/metadata.json");
  const nlohmann::json meta =
      in ? nlohmann::json::parse(in, nullptr, false) : nlohmann::json(nullptr);
  out << "checkpoint " << dir << "\n";
  if (meta.is_object()) {
    out << "  iteration " << meta.value("iteration", nlohmann::json()).dump() << ", "
        << meta.value("world_size", nlohmann::json()).dump() << " ranks, consumed samples "
        << meta.value("consumed_samples", nlohmann::json()).dump() << "\n  layout "
        << meta.value("layout", nlohmann::json()).dump() << "\n";
  } else {
    out << "  (no readable metadata.json)\n";
  }
  // Every file the folder's metadata lists, checked, and any rank file it does not list (what a
  // resume and reshard refuse), before the tensors: a missing or damaged file is named.
  int bad = 0;
  const bool listed = meta.is_object() && meta.contains("files") && meta["files"].is_object() &&
                      !meta["files"].empty();
  if (listed) {
    out << "files:\n";
    for (const auto& [file, d] : meta["files"].items()) {
      const auto got = checkpoint::DigestOf(dir + "/" + file);
      // A hand-edited entry may hold anything: only unsigned integers are compared.
      auto field = [&d](const char* key) {
        return d.is_object() && d.contains(key) && d[key].is_number_unsigned()
                   ? std::optional<uint64_t>(d[key].get<uint64_t>())
                   : std::nullopt;
      };
      const bool ok = got.ok() && field("bytes") == got->bytes && field("crc32c") == got->crc32c;
      bad += ok ? 0 : 1;
      out << "  " << file << "  " << (got.ok() ? std::to_string(got->bytes) : "?") << " bytes  "
          << (ok ? "crc32c ok" : "CHECKSUM MISMATCH OR UNREADABLE") << "\n";
    }
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (e.path().extension() == ".safetensors" && !meta["files"].contains(name)) {
        ++bad;
        out << "  " << name << "  NOT LISTED IN metadata.json\n";
      }
    }
  }
  auto reader = checkpoint::ConsolidatedReader::Open(dir);
  if (!reader.ok()) {
    err << "error: " << reader.status().message() << "\n";
    return 1;
  }
  uint64_t total = 0;
  out << "tensors (" << reader->tensors().size() << "):\n";
  for (const auto& [name, t] : reader->tensors()) {
    total += t.bytes();
    out << "  " << name << "  " << t.dtype << " [" << absl::StrJoin(t.shape, ", ") << "]  "
        << t.slices.size() << (t.slices.size() == 1 ? " slice" : " slices")
        << (t.optimizer ? "  (optimizer)" : "") << "\n";
  }
  out << "whole tensors: " << total << " bytes\n";
  if (const auto saved = SavedStep(reader->files(), /*required=*/false); !saved.ok()) {
    err << "error: " << saved.status().message() << "\n";
    return 1;
  }
  if (!listed) {
    err << "error: " << dir << "/metadata.json is missing, unreadable or lists no files with "
        << "their checksums: not a complete checkpoint\n";
    return 1;
  }
  if (bad > 0) {
    err << "error: " << bad << " file(s) of " << dir << " do not match metadata.json\n";
    return 1;
  }
  return 0;
}

int RunVerify(const std::string& a, const std::string& b, bool weights_only, std::ostream& out,
              std::ostream& err) {
  auto ra = checkpoint::ConsolidatedReader::Open(a);
  auto rb = checkpoint::ConsolidatedReader::Open(b);
  for (const auto* r : {&ra, &rb}) {
    if (!r->ok()) {
      err << "error: " << r->status().message() << "\n";
      return 1;
    }
  }
  auto skip = [&](const checkpoint::WholeTensor& t) { return weights_only && t.optimizer; };
  size_t compared = 0;
  for (const auto& [name, t] : rb->tensors()) {
    if (!skip(t) && !ra->tensors().contains(name)) {
      err << "differ: " << b << " has tensor " << name << ", " << a << " does not\n";
      return 1;
    }
  }
  std::vector<char> x, y;
  for (const auto& [name, t] : ra->tensors()) {
    if (skip(t)) continue;
    ++compared;
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
  out << "equal: " << compared << " tensors of " << a << " and " << b << "\n";
  return 0;
}

namespace {

// The spec (proto JSON) in metadata.json of the module whose model is `kind` ("language": what
// its tensor names begin with; the module's own name is the user's), or null.
nlohmann::json ModuleSpec(const nlohmann::json& meta, const std::string& kind) {
  if (!meta.is_object()) return nullptr;
  for (const nlohmann::json& m : meta.value("modules", nlohmann::json::array())) {
    if (m.is_object() && m.contains("spec") && m["spec"].is_object() && m["spec"].contains(kind)) {
      return m["spec"];
    }
  }
  return nullptr;
}

}  // namespace

int RunExport(const ExportOptions& o, std::ostream& out, std::ostream& err) {
  namespace fs = std::filesystem;
  // "--from=", "--to=", or an unset variable: no folder named.
  for (const auto& [flag, path] : {std::pair{"--from", &o.from}, std::pair{"--to", &o.to}}) {
    if (path->empty()) {
      err << "error: " << flag << " is empty: give it a path\n";
      return 1;
    }
  }
  std::ifstream in(o.from + "/metadata.json");
  const nlohmann::json meta =
      in ? nlohmann::json::parse(in, nullptr, false) : nlohmann::json(nullptr);
  std::error_code ec;
  // A checkpoint's files are checked against its metadata first, before their tensors are read
  // (a missing or damaged file is named; damaged weights would leave under fresh names); a folder
  // of rank files without metadata.json is read as it is.
  if (fs::exists(o.from + "/metadata.json", ec)) {
    if (const absl::Status s = VerifyCheckpointFiles(o.from, meta); !s.ok()) {
      err << "error: " << s.message() << "\n";
      return 1;
    }
  }
  auto reader = checkpoint::ConsolidatedReader::Open(o.from);
  if (!reader.ok()) {
    err << "error: " << reader.status().message() << "\n";
    return 1;
  }
  // Rank files of different saves would leave as one export.
  if (const auto saved = SavedStep(reader->files(), /*required=*/false); !saved.ok()) {
    err << "error: " << saved.status().message() << "\n";
    return 1;
  }
  // The tensors by module (the name up to its first dot), in name order: the weights, and the
  // MoE routers' expert biases (aux-loss-free balancing: kept in the optimizer files, but the
  // trained model routes with them).
  std::map<std::string, std::vector<const checkpoint::WholeTensor*>> modules;
  for (const auto& [name, t] : reader->tensors()) {
    if (!t.optimizer || absl::EndsWith(name, ".expert_bias")) {
      modules[name.substr(0, name.find('.'))].push_back(&t);
    }
  }
  // A --to inside the checkpoint would add the export to its folder; a checkpoint under --to
  // where the export replaces or clears folders (a module's, the hidden ones it writes and sets
  // aside, an earlier export's with --overwrite) would be lost. Refused before anything is written.
  if (const absl::Status s = CheckTargetApart(
          o.from, o.to, "the source checkpoint folder",
          [&](const std::string& name) {
            absl::string_view hidden = name;
            return modules.contains(name) ||
                   (absl::ConsumePrefix(&hidden, ".") &&
                    (absl::ConsumeSuffix(&hidden, ".partial") ||
                     absl::ConsumeSuffix(&hidden, ".old")) &&
                    modules.contains(std::string(hidden))) ||
                   (o.overwrite &&
                    fs::exists(fs::path(o.to) / name / "model.safetensors.index.json", ec));
          });
      !s.ok()) {
    err << "error: " << s.message() << "\n";
    return 1;
  }
  // What an export that died left aside (hidden: import skips it) is no earlier export to keep.
  auto holds_files = [&] {
    if (!fs::is_directory(o.to, ec)) return fs::exists(o.to, ec) && !fs::is_empty(o.to, ec);
    for (const fs::directory_entry& e : fs::directory_iterator(o.to, ec)) {
      const std::string name = e.path().filename().string();
      if (!name.starts_with(".") || !(name.ends_with(".partial") || name.ends_with(".old"))) {
        return true;
      }
    }
    return false;
  };
  if (!o.overwrite && holds_files()) {
    err << "error: " << o.to << " already holds files; refusing to overwrite them without "
        << "--overwrite\n";
    return 1;
  }
  // Every module is written aside first and moved into place only once all are written: an
  // export that fails or dies while writing leaves an earlier one whole, not some of its modules
  // replaced by this checkpoint's (import would mix the two).
  struct Written {
    std::string module, partial, dir, line;
  };
  std::vector<Written> written;
  // The outermost folder of --to that does not exist yet: a failed export removes the folders it
  // created again (as far as they are empty), as reshard does.
  fs::path to_path = fs::absolute(o.to, ec).lexically_normal(), created;
  if (!to_path.has_filename() && to_path.has_relative_path()) to_path = to_path.parent_path();
  for (fs::path p = to_path; !ec && p.has_relative_path() && !fs::exists(p, ec) && !ec;
       p = p.parent_path()) {
    created = p;
  }
  auto drop_written = [&] {
    for (const Written& w : written) fs::remove_all(w.partial, ec);  // The disk space back.
    for (fs::path p = to_path; !created.empty(); p = p.parent_path()) {
      std::error_code kept;  // A folder that holds anything stays, and so do its parents.
      if ((fs::remove(p, kept), kept) || p == created || !p.has_relative_path()) break;
    }
  };
  std::vector<char> buffer, reordered;
  for (const auto& [module, tensors] : modules) {
    const nlohmann::json module_spec = ModuleSpec(meta, module);
    // Fused QKV rows go out in Megatron's order, which needs the module's attention sizes.
    absl::StatusOr<QkvShape> qkv = absl::NotFoundError(
        absl::StrCat("metadata.json has no spec of module \"", module,
                     "\", whose attention sizes order its fused QKV rows for Megatron"));
    if (!module_spec.is_null()) {
      v1::Module spec;
      qkv = google::protobuf::util::JsonStringToMessage(module_spec.dump(), &spec).ok()
                ? QkvShapeOf(spec)
                : absl::InvalidArgumentError(absl::StrCat("metadata.json's spec of module \"",
                                                          module, "\" does not parse"));
    }
    // Written into a hidden sibling (import skips hidden folders), renamed into place below.
    const std::string dir = o.to + "/" + module, partial = o.to + "/." + module + ".partial";
    fs::remove_all(partial, ec);
    fs::create_directories(partial, ec);
    if (ec) {
      err << "error: cannot create " << partial << ": " << ec.message() << "\n";
      drop_written();
      return 1;
    }
    // Files of at most max_shard_bytes, tensors in name order.
    std::vector<std::vector<const checkpoint::WholeTensor*>> files(1);
    uint64_t in_file = 0, total = 0;
    for (const checkpoint::WholeTensor* t : tensors) {
      if (in_file > 0 && in_file + t->bytes() > o.max_shard_bytes) {
        files.emplace_back();
        in_file = 0;
      }
      files.back().push_back(t);
      in_file += t->bytes();
      total += t->bytes();
    }
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (size_t f = 0; f < files.size(); ++f) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", f + 1, files.size());
      std::vector<checkpoint::TensorToWrite> specs;
      for (const checkpoint::WholeTensor* t : files[f]) {
        specs.push_back({.name = t->name, .dtype = t->dtype, .shape = t->shape});
        weight_map[t->name] = name;
      }
      auto writer = checkpoint::SafetensorsStreamWriter::Create(partial + "/" + name, specs,
                                                                {{"format", "pt"}});
      absl::Status status = writer.status();
      for (size_t i = 0; i < files[f].size() && status.ok(); ++i) {
        const checkpoint::WholeTensor& t = *files[f][i];
        buffer.resize(t.bytes());
        status = reader->Read(t.name, absl::MakeSpan(buffer));
        if (status.ok() && IsFusedQkv(t.name)) {
          if (!qkv.ok()) {
            status = qkv.status();
          } else if (t.shape.empty() || t.shape[0] != qkv->rows()) {
            status = absl::InvalidArgumentError(
                absl::StrCat(t.name, " has ", t.shape.empty() ? 0 : t.shape[0], " rows, its ",
                             "module's attention ", qkv->rows()));
          } else {
            reordered.resize(buffer.size());
            ToMegatronOrder(*qkv, buffer.size() / qkv->rows(), buffer.data(), reordered.data());
            buffer.swap(reordered);
          }
        }
        if (status.ok()) status = writer->Append(buffer);
      }
      if (status.ok()) status = writer->Finish().status();
      if (!status.ok()) {
        err << "error: " << status.message() << "\n";
        writer = absl::CancelledError();  // Closed before its folder goes.
        fs::remove_all(partial, ec);
        drop_written();
        return 1;
      }
    }
    const nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                          {"weight_map", weight_map}};
    nlohmann::ordered_json config = {{"mimo_module", module}};
    if (meta.is_object()) {
      config["iteration"] = meta.value("iteration", nlohmann::json());
      config["source_layout"] = meta.value("layout", nlohmann::json());
      if (!module_spec.is_null()) config["spec"] = module_spec;
    }
    absl::Status status = WriteTextFile(partial + "/model.safetensors.index.json", index.dump(2));
    if (status.ok()) status = WriteTextFile(partial + "/config.json", config.dump(2));
    if (!status.ok()) {
      err << "error: " << status.message() << "\n";
      fs::remove_all(partial, ec);
      drop_written();
      return 1;
    }
    written.push_back(
        {.module = module,
         .partial = partial,
         .dir = dir,
         .line = absl::StrCat(module, ": ", tensors.size(), " tensors, ", total, " bytes in ",
                              files.size(), files.size() == 1 ? " file" : " files", " -> ", dir)});
  }
  for (size_t i = 0; i < written.size(); ++i) {
    const auto& [module, partial, dir, line] = written[i];
    // The old export aside, the new one in, the old one gone (a leftover is hidden: harmless).
    const std::string old = o.to + "/." + module + ".old";
    fs::remove_all(old, ec);
    const bool had = fs::exists(dir, ec);
    if (had) fs::rename(dir, old, ec);
    if (!ec) {
      fs::rename(partial, dir, ec);
      std::error_code back;
      if (ec && had) fs::rename(old, dir, back);  // The earlier export back in place.
    }
    if (ec) {
      err << "error: cannot move " << partial << " into place as " << dir << ": " << ec.message()
          << "\n";
      drop_written();  // The modules not yet moved.
      return 1;
    }
    if (std::error_code kept; fs::remove_all(old, kept), kept) {
      // The new export stands; the old one, hidden (import skips it), waits for the next
      // export of the module or a hand to remove it.
      err << "warning: the earlier export of " << module << ", set aside as " << old
          << ", could not be removed (" << kept.message() << "); it takes disk space until "
          << "removed by hand or by the next export to " << o.to << "\n";
    }
    out << line << "\n";
  }
  // An earlier export's modules that this one lacks go too (import reads every file under --to).
  if (o.overwrite) {
    std::vector<fs::path> stale;
    for (const fs::directory_entry& e : fs::directory_iterator(o.to, ec)) {
      if (e.is_directory() && !modules.contains(e.path().filename().string()) &&
          fs::exists(e.path() / "model.safetensors.index.json")) {
        stale.push_back(e.path());
      }
    }
    for (const fs::path& p : stale) fs::remove_all(p, ec);
  }
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
  auto weights_only = std::make_shared<bool>(false);
  verify->add_flag("--weights-only", *weights_only,
                   "compare the parameters only, not the optimizer state");
  verify->callback([pair, weights_only, exit_code] {
    *exit_code = RunVerify(pair->first, pair->second, *weights_only, std::cout, std::cerr);
  });
  auto options = std::make_shared<ExportOptions>();
  CLI::App* export_command = app.add_subcommand(
      "export", "write a checkpoint's whole tensors per module as Hugging Face-style safetensors");
  export_command->add_option("--from", options->from, "a checkpoint folder (iter_NNNNNNN)")
      ->required();
  export_command->add_option("--to", options->to, "the export's folder (a subfolder per module)")
      ->required();
  export_command
      ->add_option("--max-shard-bytes", options->max_shard_bytes,
                   "bytes per safetensors file at most")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 50))
      ->capture_default_str();
  export_command->add_flag("--overwrite", options->overwrite,
                           "replace the modules' subfolders when --to holds files");
  export_command->callback(
      [options, exit_code] { *exit_code = RunExport(*options, std::cout, std::cerr); });

  const bool terminal = ::isatty(STDERR_FILENO) != 0;
  auto reshard = std::make_shared<ReshardOptions>();
  CLI::App* reshard_command = app.add_subcommand(
      "reshard", "write a checkpoint of another layout from a checkpoint of any layout");
  reshard_command
      ->add_option("--from", reshard->from,
                   "a checkpoint folder (iter_NNNNNNN) or root (its latest checkpoint)")
      ->required();
  reshard_command
      ->add_option("--to", reshard->to,
                   "the root to commit the new checkpoint under (a job's checkpointing.dir or "
                   "resume_from)")
      ->required();
  reshard_command
      ->add_option("--component", reshard->components,
                   "one module's layout: NAME=tp=N[,pp=N,dp=N,cp=N,ep=N,etp=N,vpp=N,rank_offset=N] "
                   "(repeat per module)")
      ->required();
  reshard_command->add_option(
      "--world", reshard->world,
      "the target's ranks (default: the modules' ranks when every component sets dp, else the "
      "source job's)");
  reshard_command->add_flag("--dry-run", reshard->dry_run,
                            "print which source files feed each target rank; write nothing");
  reshard_command->add_flag("--overwrite", reshard->overwrite,
                            "write even when --to already holds checkpoints");
  reshard_command->callback([reshard, exit_code, terminal] {
    reshard->progress = terminal;
    *exit_code = RunReshard(*reshard, std::cout, std::cerr);
  });

  auto import = std::make_shared<ImportOptions>();
  CLI::App* import_command = app.add_subcommand(
      "import", "write a checkpoint (iteration 0) of a job's layout from an export's weights");
  import_command->add_option("--from", import->from, "an export's folder (mimo-convert export)")
      ->required();
  import_command->add_option("--to", import->to, "the root to commit the checkpoint under")
      ->required();
  import_command
      ->add_option("--spec", import->spec,
                   "the job spec (.yaml/.json) whose model and layout the checkpoint is for")
      ->required();
  import_command->add_option("--component", import->components,
                             "a module's layout replacing the spec's (repeat per module)");
  import_command->add_option("--world", import->world, "the target's ranks (as for reshard)");
  import_command->add_flag("--dry-run", import->dry_run, "print the plan; write nothing");
  import_command->add_flag("--overwrite", import->overwrite,
                           "write even when --to already holds checkpoints");
  import_command->callback([import, exit_code, terminal] {
    import->progress = terminal;
    *exit_code = RunImport(*import, std::cout, std::cerr);
  });
  app.require_subcommand(1);
}

}  // namespace mimo::tools

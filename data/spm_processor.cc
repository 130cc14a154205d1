// SpmProcessor: loads libmimo_spm_plugin.so once, in a link-map namespace of its own (dlmopen),
// looks up its C functions and forwards to them.
#include "data/spm_processor.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "data/spm_plugin_abi.h"

#if defined(__SANITIZE_ADDRESS__)
#define MIMO_SPM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MIMO_SPM_ASAN 1
#endif
#endif

namespace mimo::data {
namespace {

constexpr size_t kErrorSize = 1024;

// The plugin's functions, looked up once per process; never unloaded.
struct SpmPlugin {
  MimoSpmLoadFn load = nullptr;
  MimoSpmFreeFn free = nullptr;
  MimoSpmIntFn num_pieces = nullptr;
  MimoSpmIntFn bos_id = nullptr;
  MimoSpmIntFn eos_id = nullptr;
  MimoSpmIdPredicateFn is_control = nullptr;
  MimoSpmIdPredicateFn is_unused = nullptr;
  MimoSpmIdPredicateFn is_unknown = nullptr;
  MimoSpmEncodeFn encode = nullptr;
  MimoSpmDecodeFn decode = nullptr;
  MimoSpmTrainFn train = nullptr;
};

// Where to look for the plugin, in order.
std::vector<std::string> CandidatePaths() {
  if (const char* env = std::getenv("MIMO_SPM_PLUGIN"); env != nullptr && *env != '\0') {
    return {env};
  }
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const std::filesystem::path dir = exe.parent_path();
  return {(dir / kSpmPluginFileName).string(),
          (dir.parent_path() / "lib" / kSpmPluginFileName).string()};
}

template <typename Fn>
absl::Status Lookup(void* handle, const std::string& path, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("SentencePiece plugin ", path, " has no function ", name));
  }
  return absl::OkStatus();
}

absl::StatusOr<SpmPlugin> OpenPlugin() {
#ifdef MIMO_SPM_ASAN
  return absl::FailedPreconditionError(
      "SentencePiece is not available in AddressSanitizer builds (libmimo_spm_plugin.so is "
      "loaded with dlmopen into a namespace of its own, where the sanitizer runtime cannot "
      "follow)");
#endif
  const std::vector<std::string> paths = CandidatePaths();
  std::vector<std::string> failures;
  for (const std::string& path : paths) {
    if (::access(path.c_str(), F_OK) != 0) {
      failures.push_back(absl::StrCat(path, " (not found)"));
      continue;
    }
    // A new namespace: the plugin, libsentencepiece and their own copies of libstdc++ and libc
    // see neither libprotobuf nor this process's symbols, and it never sees theirs, so
    // SentencePiece binds to its bundled protobuf-lite. (dlopen with RTLD_LOCAL | RTLD_DEEPBIND
    // does the former too, but then SentencePiece's std::cerr is libstdc++'s own, never
    // constructed copy, not the executable's copy-relocated one: it crashes at its first log.)
    // Only C types and caller-owned buffers cross; the model handle is freed by the plugin.
    void* handle = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      failures.push_back(absl::StrCat(path, " (", why != nullptr ? why : "dlmopen failed", ")"));
      continue;
    }
    MimoSpmAbiVersionFn version = nullptr;
    SpmPlugin p;
    absl::Status s = Lookup(handle, path, "mimo_spm_abi_version", &version);
    if (s.ok() && version() != MIMO_SPM_ABI_VERSION) {
      s = absl::FailedPreconditionError(absl::StrCat("SentencePiece plugin ", path,
                                                     " has interface version ", version(),
                                                     ", this binary needs ", MIMO_SPM_ABI_VERSION));
    }
    for (absl::Status next : {Lookup(handle, path, "mimo_spm_load", &p.load),
                              Lookup(handle, path, "mimo_spm_free", &p.free),
                              Lookup(handle, path, "mimo_spm_num_pieces", &p.num_pieces),
                              Lookup(handle, path, "mimo_spm_bos_id", &p.bos_id),
                              Lookup(handle, path, "mimo_spm_eos_id", &p.eos_id),
                              Lookup(handle, path, "mimo_spm_is_control", &p.is_control),
                              Lookup(handle, path, "mimo_spm_is_unused", &p.is_unused),
                              Lookup(handle, path, "mimo_spm_is_unknown", &p.is_unknown),
                              Lookup(handle, path, "mimo_spm_encode", &p.encode),
                              Lookup(handle, path, "mimo_spm_decode", &p.decode),
                              Lookup(handle, path, "mimo_spm_train", &p.train)}) {
      s.Update(next);
    }
    if (!s.ok()) {
      dlclose(handle);
      return s;
    }
    return p;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot load the SentencePiece plugin ", kSpmPluginFileName,
      " (it is built beside the binaries; set MIMO_SPM_PLUGIN to its full path to use another); "
      "tried: ",
      failures.empty() ? "nothing (the binary's own path is unknown)"
                       : absl::StrJoin(failures, "; ")));
}

// The plugin, opened on first use; thread-safe (a function-local static).
absl::StatusOr<const SpmPlugin*> Plugin() {
  static const absl::StatusOr<SpmPlugin>* const plugin =
      new absl::StatusOr<SpmPlugin>(OpenPlugin());
  if (!plugin->ok()) return plugin->status();
  return &**plugin;
}

// The plugin once it has been opened successfully (every SpmProcessor exists only then).
const SpmPlugin& Opened() { return **Plugin(); }

}  // namespace

bool SpmPluginSupported() {
#ifdef MIMO_SPM_ASAN
  return false;
#else
  return true;
#endif
}

absl::StatusOr<std::unique_ptr<SpmProcessor>> SpmProcessor::Load(const std::string& path) {
  absl::StatusOr<const SpmPlugin*> plugin = Plugin();
  if (!plugin.ok()) return plugin.status();
  char error[kErrorSize] = "";
  MimoSpmModel* model = (*plugin)->load(path.c_str(), error, sizeof(error));
  if (model == nullptr) return absl::InvalidArgumentError(error);
  return std::unique_ptr<SpmProcessor>(new SpmProcessor(model));
}

SpmProcessor::~SpmProcessor() { Opened().free(model_); }

int SpmProcessor::num_pieces() const { return Opened().num_pieces(model_); }
int SpmProcessor::bos_id() const { return Opened().bos_id(model_); }
int SpmProcessor::eos_id() const { return Opened().eos_id(model_); }
bool SpmProcessor::IsControl(int id) const { return Opened().is_control(model_, id) != 0; }
bool SpmProcessor::IsUnused(int id) const { return Opened().is_unused(model_, id) != 0; }
bool SpmProcessor::IsUnknown(int id) const { return Opened().is_unknown(model_, id) != 0; }

absl::StatusOr<std::vector<int>> SpmProcessor::Encode(const std::string& text) const {
  // Rarely more ids than bytes (plus BOS/EOS should the model add them): one call, seldom two.
  std::vector<int> ids(text.size() + 2);
  char error[kErrorSize] = "";
  for (;;) {
    const long n = Opened().encode(model_, text.data(), text.size(), ids.data(), ids.size(), error,
                                   sizeof(error));
    if (n < 0) return absl::InternalError(absl::StrCat("SentencePiece Encode: ", error));
    const size_t count = static_cast<size_t>(n);
    const bool fits = count <= ids.size();
    ids.resize(count);
    if (fits) return ids;
  }
}

absl::StatusOr<std::string> SpmProcessor::Decode(const std::vector<int>& ids) const {
  std::string text(ids.size() * 8, '\0');
  char error[kErrorSize] = "";
  for (;;) {
    const long n = Opened().decode(model_, ids.data(), ids.size(), text.data(), text.size(), error,
                                   sizeof(error));
    if (n < 0) return absl::InternalError(absl::StrCat("SentencePiece Decode: ", error));
    const size_t size = static_cast<size_t>(n);
    const bool fits = size <= text.size();
    text.resize(size);
    if (fits) return text;
  }
}

absl::Status TrainSpmModel(const std::string& flags) {
  absl::StatusOr<const SpmPlugin*> plugin = Plugin();
  if (!plugin.ok()) return plugin.status();
  char error[kErrorSize] = "";
  if ((*plugin)->train(flags.c_str(), error, sizeof(error)) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("SentencePiece training failed: ", error));
  }
  return absl::OkStatus();
}

}  // namespace mimo::data

// libmimo_spm_plugin.so: SentencePiece behind the C interface of data/spm_plugin_abi.h, loaded
// with dlmopen (data/spm_processor.cc) so its bundled protobuf-lite never meets libprotobuf's
// symbols. No exception leaves it.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "data/spm_plugin_abi.h"

struct MimoSpmModel {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

void SetError(const std::string& message, char* error, size_t error_size) {
  if (error == nullptr || error_size == 0) return;
  const size_t n = std::min(message.size(), error_size - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

bool ValidId(const MimoSpmModel* model, int id) {
  return id >= 0 && id < model->processor.GetPieceSize();
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int mimo_spm_abi_version(void) {
  return MIMO_SPM_ABI_VERSION;
}

__attribute__((visibility("default"))) MimoSpmModel* mimo_spm_load(const char* path, char* error,
                                                                   size_t error_size) {
  try {
    auto* model = new MimoSpmModel;
    const sentencepiece::util::Status status = model->processor.Load(path);
    if (!status.ok()) {
      SetError(status.ToString(), error, error_size);
      delete model;
      return nullptr;
    }
    return model;
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
    return nullptr;
  }
}

__attribute__((visibility("default"))) void mimo_spm_free(MimoSpmModel* model) { delete model; }

__attribute__((visibility("default"))) int mimo_spm_num_pieces(const MimoSpmModel* model) {
  return model->processor.GetPieceSize();
}
__attribute__((visibility("default"))) int mimo_spm_bos_id(const MimoSpmModel* model) {
  return model->processor.bos_id();
}
__attribute__((visibility("default"))) int mimo_spm_eos_id(const MimoSpmModel* model) {
  return model->processor.eos_id();
}
__attribute__((visibility("default"))) int mimo_spm_is_control(const MimoSpmModel* model, int id) {
  return ValidId(model, id) && model->processor.IsControl(id) ? 1 : 0;
}
__attribute__((visibility("default"))) int mimo_spm_is_unused(const MimoSpmModel* model, int id) {
  return ValidId(model, id) && model->processor.IsUnused(id) ? 1 : 0;
}
__attribute__((visibility("default"))) int mimo_spm_is_unknown(const MimoSpmModel* model, int id) {
  return ValidId(model, id) && model->processor.IsUnknown(id) ? 1 : 0;
}

__attribute__((visibility("default"))) long mimo_spm_encode(const MimoSpmModel* model,
                                                            const char* text, size_t text_size,
                                                            int* ids, size_t capacity, char* error,
                                                            size_t error_size) {
  try {
    std::vector<int> out;
    const sentencepiece::util::Status status =
        model->processor.Encode(std::string(text, text_size), &out);
    if (!status.ok()) {
      SetError(status.ToString(), error, error_size);
      return -1;
    }
    std::copy_n(out.begin(), std::min(out.size(), capacity), ids);
    return static_cast<long>(out.size());
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
    return -1;
  }
}

__attribute__((visibility("default"))) long mimo_spm_decode(const MimoSpmModel* model,
                                                            const int* ids, size_t count,
                                                            char* text, size_t capacity,
                                                            char* error, size_t error_size) {
  try {
    std::string out;
    const sentencepiece::util::Status status =
        model->processor.Decode(std::vector<int>(ids, ids + count), &out);
    if (!status.ok()) {
      SetError(status.ToString(), error, error_size);
      return -1;
    }
    std::memcpy(text, out.data(), std::min(out.size(), capacity));
    return static_cast<long>(out.size());
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
    return -1;
  }
}

__attribute__((visibility("default"))) int mimo_spm_train(const char* flags, char* error,
                                                          size_t error_size) {
  try {
    const sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(flags);
    if (!status.ok()) SetError(status.ToString(), error, error_size);
    return status.ok() ? 1 : 0;
  } catch (const std::exception& e) {
    SetError(e.what(), error, error_size);
    return 0;
  }
}

}  // extern "C"

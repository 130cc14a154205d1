// SpmProcessor: forwards to sentencepiece::SentencePieceProcessor, its util::Status as text.
#include "data/spm_processor.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace mimo::data {

struct SpmProcessor::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SpmProcessor::SpmProcessor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SpmProcessor::~SpmProcessor() = default;

std::unique_ptr<SpmProcessor> SpmProcessor::Load(const std::string& path, std::string* error) {
  auto impl = std::make_unique<Impl>();
  const sentencepiece::util::Status status = impl->processor.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return std::unique_ptr<SpmProcessor>(new SpmProcessor(std::move(impl)));
}

int SpmProcessor::num_pieces() const { return impl_->processor.GetPieceSize(); }
int SpmProcessor::bos_id() const { return impl_->processor.bos_id(); }
int SpmProcessor::eos_id() const { return impl_->processor.eos_id(); }
int SpmProcessor::pad_id() const { return impl_->processor.pad_id(); }
int SpmProcessor::unk_id() const { return impl_->processor.unk_id(); }
bool SpmProcessor::IsControl(int id) const { return impl_->processor.IsControl(id); }
bool SpmProcessor::IsUnused(int id) const { return impl_->processor.IsUnused(id); }
std::string SpmProcessor::IdToPiece(int id) const { return impl_->processor.IdToPiece(id); }

bool SpmProcessor::Encode(const std::string& text, std::vector<int>* ids,
                          std::string* error) const {
  const sentencepiece::util::Status status = impl_->processor.Encode(text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool SpmProcessor::Decode(const std::vector<int>& ids, std::string* text,
                          std::string* error) const {
  const sentencepiece::util::Status status = impl_->processor.Decode(ids, text);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

bool TrainSpmModel(const std::string& flags, std::string* error) {
  const sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(flags);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

}  // namespace mimo::data

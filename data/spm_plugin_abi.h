// The plain C interface of libmimo_spm_plugin.so (data/spm_plugin.cc), the one place that links
// SentencePiece; data/spm_processor.cc loads it with dlmopen into a namespace of its own (its own
// libstdc++ and libc). So only C types cross it, and no memory allocated on one side is freed on
// the other (the model handle is freed by the plugin, through mimo_spm_free).
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes; the loader refuses a plugin of another version.
#define MIMO_SPM_ABI_VERSION 1

typedef struct MimoSpmModel MimoSpmModel;

int mimo_spm_abi_version(void);

// The model in the file at `path`; null with the reason in `error` (NUL-terminated, truncated to
// `error_size` bytes) when it cannot be loaded.
MimoSpmModel* mimo_spm_load(const char* path, char* error, size_t error_size);
void mimo_spm_free(MimoSpmModel* model);

int mimo_spm_num_pieces(const MimoSpmModel* model);
int mimo_spm_bos_id(const MimoSpmModel* model);  // -1 when the model has none; so eos.
int mimo_spm_eos_id(const MimoSpmModel* model);
// 1 or 0: BOS, EOS, PAD and user control symbols; unused pieces; the unknown piece.
int mimo_spm_is_control(const MimoSpmModel* model, int id);
int mimo_spm_is_unused(const MimoSpmModel* model, int id);
int mimo_spm_is_unknown(const MimoSpmModel* model, int id);

// Encodes `text_size` bytes of `text`: returns the number of ids (-1 on failure, with `error`
// set) and writes the first min(that, `capacity`) of them to `ids`; call again with a larger
// buffer when the count exceeds `capacity`.
long mimo_spm_encode(const MimoSpmModel* model, const char* text, size_t text_size, int* ids,
                     size_t capacity, char* error, size_t error_size);
// Decodes `count` ids: returns the text's size in bytes (-1 on failure, with `error` set) and
// writes the first min(that, `capacity`) bytes (no NUL) to `text`; call again when it exceeds
// `capacity`.
long mimo_spm_decode(const MimoSpmModel* model, const int* ids, size_t count, char* text,
                     size_t capacity, char* error, size_t error_size);

// Trains a model with SentencePieceTrainer's command-line flags: 1 on success, 0 with `error`
// set.
int mimo_spm_train(const char* flags, char* error, size_t error_size);

// The function pointer types the loader looks up.
typedef int (*MimoSpmAbiVersionFn)(void);
typedef MimoSpmModel* (*MimoSpmLoadFn)(const char*, char*, size_t);
typedef void (*MimoSpmFreeFn)(MimoSpmModel*);
typedef int (*MimoSpmIntFn)(const MimoSpmModel*);
typedef int (*MimoSpmIdPredicateFn)(const MimoSpmModel*, int);
typedef long (*MimoSpmEncodeFn)(const MimoSpmModel*, const char*, size_t, int*, size_t, char*,
                                size_t);
typedef long (*MimoSpmDecodeFn)(const MimoSpmModel*, const int*, size_t, char*, size_t, char*,
                                size_t);
typedef int (*MimoSpmTrainFn)(const char*, char*, size_t);

#ifdef __cplusplus
}  // extern "C"
#endif

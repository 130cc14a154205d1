// RAII helpers over SQLite's C API: errors as absl::Status, prepared statements with checked
// binds, and transactions rolled back unless committed.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace mimo::coordinator::sqlite {

// An error naming `operation` and SQLite's message: Unavailable when the database is busy or
// locked, DataLoss when it is corrupt, ResourceExhausted when the disk is full, else Internal.
absl::Status SqliteError(sqlite3* db, int rc, absl::string_view operation);

// Runs SQL without parameters or result rows (transaction control, PRAGMAs, migrations).
absl::Status Exec(sqlite3* db, const char* sql);

// A prepared statement, finalized on destruction. Bind errors are kept and reported by Step().
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, absl::string_view sql) {
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) return SqliteError(db, rc, absl::StrCat("prepare \"", sql, "\""));
    return Statement(db, stmt);
  }

  Statement(Statement&& other) noexcept
      : db_(other.db_),
        stmt_(std::exchange(other.stmt_, nullptr)),
        bind_status_(std::move(other.bind_status_)) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  Statement& Bind(int index, int64_t value) {
    return Check(sqlite3_bind_int64(stmt_, index, value), index);
  }
  Statement& Bind(int index, absl::string_view text) {
    return Check(sqlite3_bind_text64(stmt_, index, NonNull(text), text.size(), SQLITE_TRANSIENT,
                                     SQLITE_UTF8),
                 index);
  }
  Statement& BindBlob(int index, absl::string_view bytes) {
    return Check(sqlite3_bind_blob64(stmt_, index, NonNull(bytes), bytes.size(), SQLITE_TRANSIENT),
                 index);
  }
  Statement& BindNull(int index) { return Check(sqlite3_bind_null(stmt_, index), index); }

  // True when a result row is ready.
  absl::StatusOr<bool> Step() {
    MIMO_RETURN_IF_ERROR(bind_status_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, absl::StrCat("step \"", sqlite3_sql(stmt_), "\""));
  }

  // Steps a statement that returns no rows.
  absl::Status Run() {
    MIMO_ASSIGN_OR_RETURN(const bool row, Step());
    if (row) {
      return absl::InternalError(absl::StrCat("\"", sqlite3_sql(stmt_), "\" returned a row"));
    }
    return absl::OkStatus();
  }

  // Makes the statement ready to be bound and run again (the last step's error is already known).
  void Reset() { sqlite3_reset(stmt_); }

  // Column getters; SQL NULL and empty values read as 0 or "".
  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string Text(int column) const {
    return Bytes(reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column)), column);
  }
  std::string Blob(int column) const {
    return Bytes(static_cast<const char*>(sqlite3_column_blob(stmt_, column)), column);
  }

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}

  // The size must be read after the pointer (sqlite3_column_bytes documents the order).
  std::string Bytes(const char* data, int column) const {
    return data != nullptr ? std::string(data, sqlite3_column_bytes(stmt_, column)) : "";
  }

  // SQLite binds a null pointer as SQL NULL; an empty string_view may have one.
  static const char* NonNull(absl::string_view s) { return s.data() != nullptr ? s.data() : ""; }

  Statement& Check(int rc, int index) {
    if (rc != SQLITE_OK && bind_status_.ok()) {
      bind_status_ = SqliteError(
          db_, rc, absl::StrCat("bind parameter ", index, " of \"", sqlite3_sql(stmt_), "\""));
    }
    return *this;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  absl::Status bind_status_;
};

// A transaction, rolled back on destruction unless committed. Writes take the write lock at
// BEGIN (IMMEDIATE), so a read-check-write sequence cannot race another connection; reads see
// one snapshot.
class Transaction {
 public:
  enum class Kind { kRead, kWrite };

  static absl::StatusOr<Transaction> Begin(sqlite3* db, Kind kind) {
    MIMO_RETURN_IF_ERROR(Exec(db, kind == Kind::kWrite ? "BEGIN IMMEDIATE" : "BEGIN"));
    return Transaction(db);
  }

  Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  ~Transaction() {
    // Rolling back is the cleanup of a failed call, whose error is already being returned.
    if (db_ != nullptr) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }

  absl::Status Commit() {
    MIMO_RETURN_IF_ERROR(Exec(db_, "COMMIT"));
    db_ = nullptr;
    return absl::OkStatus();
  }

 private:
  explicit Transaction(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

}  // namespace mimo::coordinator::sqlite

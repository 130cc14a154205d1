// RAII helpers over SQLite's C API: the error mapping and Exec.
#include "coordinator/sqlite.h"

namespace mimo::coordinator::sqlite {

absl::Status SqliteError(sqlite3* db, int rc, absl::string_view operation) {
  const std::string message = absl::StrCat("sqlite ", operation, ": ",
                                           db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status Exec(sqlite3* db, const char* sql) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteError(db, rc, absl::StrCat("exec \"", sql, "\""));
  return absl::OkStatus();
}

}  // namespace mimo::coordinator::sqlite

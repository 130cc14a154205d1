// Command-line parsing shared by the mimo programs (CLI11): "--name=" gives an empty value.
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace mimo {

namespace flag_parsing_internal {

// Whether `app`, its subcommands or its option groups have an option `--name` that takes a
// value (`*value`) or a flag of that name (`*flag`).
inline void FindLongOption(const CLI::App& app, const std::string& name, bool* value, bool* flag) {
  for (const CLI::Option* option : app.get_options()) {
    if (option->check_lname(name)) (option->get_items_expected_max() > 0 ? *value : *flag) = true;
  }
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    FindLongOption(*sub, name, value, flag);
  }
}

}  // namespace flag_parsing_internal

// `argv` with each "--name=" (nothing after '=') of an option of `app` that takes a value split
// into "--name" and "": CLI11 2.1 reads "--name=" as "--name" without its value, so it took the
// next argument as the value ("--metrics-listen= --db x" listened on "--db") or failed with
// "--name: 1 required TEXT missing", where "--name ''" gives the empty value. Flags, names of no
// option and everything after "--" are left as they are.
inline std::vector<std::string> SplitEmptyEqualsValues(const CLI::App& app, int argc,
                                                       const char* const* argv) {
  std::vector<std::string> out;
  bool positional_only = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !positional_only && arg == "--") positional_only = true;
    if (i > 0 && !positional_only && arg.size() > 3 && arg.starts_with("--") && arg.back() == '=' &&
        arg.find('=') == arg.size() - 1) {
      bool value = false;
      bool flag = false;
      flag_parsing_internal::FindLongOption(app, arg.substr(2, arg.size() - 3), &value, &flag);
      if (value && !flag) {
        arg.pop_back();
        out.push_back(std::move(arg));
        out.emplace_back();
        continue;
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

// app.parse(argc, argv) with SplitEmptyEqualsValues: "--name=" is "--name ''". Call once every
// option is added; throws what app.parse throws.
inline void ParseFlags(CLI::App& app, int argc, const char* const* argv) {
  const std::vector<std::string> args = SplitEmptyEqualsValues(app, argc, argv);
  std::vector<const char*> pointers;
  for (const std::string& arg : args) pointers.push_back(arg.c_str());
  app.parse(static_cast<int>(pointers.size()), pointers.data());
}

}  // namespace mimo

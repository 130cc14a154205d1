// Command-line parsing shared by the mimo programs (CLI11): "--name=" gives an empty value, and an
// empty value of a number is a usage error.
#pragma once

#include <algorithm>
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

// What an empty value of `option` would silently become (CLI11 2.1 reads "" as T{}, so
// "--seed ''" was seed 0), or how its check would refuse it unclearly (CLI::ExistingFile said
// "File does not exist: " of "--tls-ca="): "an integer" or "a number" for an option of CLI11's
// integer, floating-point or enum type (by its type name, INT, UINT, FLOAT or ENUM: an option
// renamed with type_name() is not recognized), "a file" for a named option checked with
// CLI::ExistingFile, else null.
inline const char* NumberKind(const CLI::Option& option) {
  const std::string full = option.get_type_name();  // "INT", then ":" and each check's.
  if (!option.get_lnames().empty() && full.find(":FILE") != std::string::npos) return "a file";
  std::string type = full;
  type.resize(std::min(type.size(), type.find(':')));
  if (type == "INT" || type == "UINT" || type == "ENUM") return "an integer";
  if (type == "FLOAT") return "a number";
  return nullptr;
}

// Gives every option of `app` (its subcommands and option groups included) that takes a number a
// first check that refuses an empty value, naming the flag ("--seed: the value is empty; give an
// integer, or leave the flag out for its default"): a usage error like any other. Once each.
inline void RefuseEmptyNumbers(CLI::App& app) {
  constexpr char kCheck[] = "mimo-refuse-empty-number";
  for (CLI::Option* option : app.get_options()) {
    const char* kind = NumberKind(*option);
    if (kind == nullptr || option->get_items_expected_max() == 0) continue;
    try {
      option->get_validator(kCheck);
      continue;  // Given already.
    } catch (const CLI::OptionNotFound&) {
    }
    option->transform(  // transform: ahead of the option's own checks, such as CLI::Range.
        CLI::Validator(
            [kind](std::string& value) {
              return value.empty() ? std::string("the value is empty; give ") + kind +
                                         ", or leave the flag out for its default"
                                   : std::string();
            },
            ""),
        kCheck);
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    RefuseEmptyNumbers(*sub);
  }
}

}  // namespace flag_parsing_internal

// `argv` with each "--name=" (nothing after '=') of an option of `app` that takes a value split
// into "--name" and "": CLI11 2.1 reads "--name=" as "--name" without its value, so it took the
// next argument as the value ("--metrics-listen= --db x" listened on "--db") or failed with
// "--name: 1 required TEXT missing", where "--name ''" gives the empty value. "--name=" of a flag
// throws CLI::ValidationError naming it (CLI11 set the flag). Names of no option and everything
// after "--" are left as they are.
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
      // CLI11 reads a flag's empty value as set: "--overwrite=$UNSET" would overwrite.
      if (flag && !value) {
        arg.pop_back();
        throw CLI::ValidationError(
            arg, "the value is empty; give true or false, or leave the flag out for its default");
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

// app.parse(argc, argv) with SplitEmptyEqualsValues: "--name=" is "--name ''" (a usage error for a
// flag); and an empty value
// for an option that takes a number ("--seed ''", "--seed=", or from its environment variable) is
// a CLI::ValidationError naming the option (RefuseEmptyNumbers), checked before any callback runs.
// Call once every option is added; throws what app.parse throws.
inline void ParseFlags(CLI::App& app, int argc, const char* const* argv) {
  flag_parsing_internal::RefuseEmptyNumbers(app);
  const std::vector<std::string> args = SplitEmptyEqualsValues(app, argc, argv);
  std::vector<const char*> pointers;
  for (const std::string& arg : args) pointers.push_back(arg.c_str());
  try {
    app.parse(static_cast<int>(pointers.size()), pointers.data());
  } catch (const CLI::RequiredError&) {
    // CLI11 says only "A subcommand is required" of a mistyped one ("mimoctl lsit").
    const std::vector<std::string> rest = app.remaining();
    if (app.get_require_subcommand_min() == 0 || !app.get_subcommands().empty() || rest.empty() ||
        rest.front().starts_with("-")) {
      throw;
    }
    std::string commands;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      commands += (commands.empty() ? "" : ", ") + sub->get_name();
    }
    throw CLI::ParseError("'" + rest.front() + "' is not a command; the commands are " + commands,
                          CLI::ExitCodes::ExtrasError);
  }
}

}  // namespace mimo

# Compiler settings shared by every project target: warnings as errors, sanitizers, ccache.

find_program(MIMO_CCACHE ccache)
if(MIMO_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${MIMO_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${MIMO_CCACHE})
endif()

if(MIMO_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
endif()

# Applies the project's warning policy to one of our own targets (never to third-party code).
function(mimo_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror>)
endfunction()

# mimo_add_library(NAME SOURCES... DEPS ...): one library target per folder.
function(mimo_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  mimo_target_defaults(${name})
endfunction()

# mimo_add_test(NAME SOURCES... DEPS ... LABEL unit|integration|gpu|multigpu)
# Registers every GoogleTest case as its own ctest entry; a GTEST_SKIP shows as skipped.
function(mimo_add_test name)
  cmake_parse_arguments(ARG "" "LABEL" "SOURCES;DEPS" ${ARGN})
  if(NOT ARG_LABEL)
    message(FATAL_ERROR "mimo_add_test(${name}) needs a LABEL")
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  mimo_target_defaults(${name})
  gtest_discover_tests(${name}
    DISCOVERY_MODE PRE_TEST
    PROPERTIES LABELS ${ARG_LABEL} SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
endfunction()

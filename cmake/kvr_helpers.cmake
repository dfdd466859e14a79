# kvr_library(NAME SOURCES ... DEPS ...): a static library with the project's warnings.
function(kvr_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${KVR_WARNINGS}>)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# kvr_test([NAME] name SOURCES ... DEPS ... LABEL cpu|gpu [TIMEOUT s])
# GPU tests exit with 77 when no GPU is present: CTest then reports them as skipped,
# never as passed.
function(kvr_test first)
  if(first STREQUAL "NAME")
    list(POP_FRONT ARGN name)
  else()
    set(name ${first})
  endif()
  cmake_parse_arguments(ARG "" "LABEL;TIMEOUT" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${KVR_WARNINGS}>)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABEL}" TIMEOUT ${ARG_TIMEOUT}
                       SKIP_RETURN_CODE 77
                       ENVIRONMENT "KVR_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

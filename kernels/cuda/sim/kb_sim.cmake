# kb_sim.cmake: build CUDA sources against the CPU simulation (kb_sim.h).
#
# kb_sim_add_library(<target> SOURCES <file.cu>... [ASAN] [EXCLUDE_FROM_ALL] [INCLUDE_DIRS <dir>...])
#   A shared library build/lib/lib<target>.so: the .cu files compiled as C++ with -DKB_CUDA_SIM, the
#   simulation runtime, and the generated definitions of their `extern __shared__` arrays.
#   ASAN: AddressSanitizer plus -fsanitize=bounds (indexing past a fixed-size array, which catches
#   out-of-bounds writes to static __shared__ arrays: thread_local storage has no ASan redzones). Load it
#   into Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so).
#   RACE: the race checker (kb_sim_race.cpp): kernel objects compiled with -fsanitize=thread, whose load/store
#   hooks the runtime defines (libtsan is not linked), and -g for the source lines of its reports.
#   COVERAGE: gcov instrumentation of the kernel objects (-O0 --coverage) for gcovr.
set(KB_SIM_DIR ${CMAKE_CURRENT_LIST_DIR})
find_program(KB_READELF NAMES readelf ${CMAKE_READELF})
if(NOT KB_READELF)
  message(FATAL_ERROR "kb_sim: readelf (binutils) is needed to build the CUDA simulation")
endif()

# The runtime, split along its seams (kb_sim_internal.h says which part does what).
set(KB_SIM_RUNTIME_SOURCES ${KB_SIM_DIR}/kb_sim_fiber.cpp ${KB_SIM_DIR}/kb_sim_collectives.cpp
    ${KB_SIM_DIR}/kb_sim_scheduler.cpp ${KB_SIM_DIR}/kb_sim_api.cpp ${KB_SIM_DIR}/kb_sim_race.cpp)

function(kb_sim_add_library target)
  cmake_parse_arguments(A "ASAN;RACE;COVERAGE;EXCLUDE_FROM_ALL" "" "SOURCES;INCLUDE_DIRS" ${ARGN})
  set(excl "")
  if(A_EXCLUDE_FROM_ALL)
    set(excl EXCLUDE_FROM_ALL)
  endif()
  set(objs ${target}_objs)
  add_library(${objs} OBJECT ${excl} ${A_SOURCES})
  set_source_files_properties(${A_SOURCES} TARGET_DIRECTORY ${objs} PROPERTIES LANGUAGE CXX)
  target_compile_definitions(${objs} PRIVATE KB_CUDA_SIM=1)
  target_include_directories(${objs} PRIVATE ${KB_SIM_DIR} ${A_INCLUDE_DIRS})
  # CUDA code type-puns freely (float4 over float, uint32_t over two bf16): no strict-aliasing assumptions.
  # -fno-gnu-unique: static __shared__ of template kernels would be STB_GNU_UNIQUE, one per process whatever
  # -Bsymbolic says (see below).
  target_compile_options(${objs} PRIVATE -fno-gnu-unique -fno-strict-aliasing -Wall -Wno-unused-function -Wno-unused-variable -Wno-unknown-pragmas)
  set(gen ${CMAKE_CURRENT_BINARY_DIR}/${target}_dynsmem.c)
  add_custom_command(
    OUTPUT ${gen}
    COMMAND ${CMAKE_COMMAND} -DREADELF=${KB_READELF} -DOUT=${gen} "-DOBJS=$<TARGET_OBJECTS:${objs}>"
            -P ${KB_SIM_DIR}/gen_dynsmem.cmake
    DEPENDS ${objs} $<TARGET_OBJECTS:${objs}> ${KB_SIM_DIR}/gen_dynsmem.cmake
    COMMENT "kb_sim: dynamic shared memory of ${target}"
    VERBATIM)
  add_library(${target} SHARED ${excl} $<TARGET_OBJECTS:${objs}> ${gen} ${KB_SIM_RUNTIME_SOURCES})
  set_source_files_properties(${KB_SIM_RUNTIME_SOURCES} TARGET_DIRECTORY ${target}
                              PROPERTIES COMPILE_DEFINITIONS KB_CUDA_SIM=1)
  target_include_directories(${target} PRIVATE ${KB_SIM_DIR})
  find_package(Threads REQUIRED)
  target_link_libraries(${target} PRIVATE Threads::Threads ${CMAKE_DL_LIBS})
  # Each library binds its own kernels and thread-locals (static __shared__ of template kernels are weak,
  # exported symbols): without this, a process that loads two flavours (plain and _race) runs the first one's.
  target_link_options(${target} PRIVATE -Wl,-Bsymbolic)
  if(A_ASAN)
    set(san -fsanitize=address,bounds -fno-sanitize-recover=bounds -fno-omit-frame-pointer -g -O1)
    target_compile_options(${objs} PRIVATE ${san})
    target_compile_options(${target} PRIVATE ${san})
    target_link_options(${target} PRIVATE -fsanitize=address,bounds)
  endif()
  if(A_RACE)
    target_compile_options(${objs} PRIVATE -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 -g)
    target_compile_definitions(${target} PRIVATE KB_SIM_RACECHECK=1)
    target_compile_options(${target} PRIVATE -g)
    target_link_options(${target} PRIVATE -Wl,-z,defs)
  endif()
  if(A_COVERAGE)
    target_compile_options(${objs} PRIVATE -O0 -g --coverage)
    target_link_options(${target} PRIVATE --coverage)
  endif()
endfunction()

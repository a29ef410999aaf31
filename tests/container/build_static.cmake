# Builds the static, stripped tcptunnel that the container tests and images use, in its own build
# tree. Run by ctest (the container.static_build fixture):
#   cmake -DSOURCE_DIR=... -DBUILD_DIR=... -DGENERATOR=... -P build_static.cmake
# MinSizeRel, as in the images: the relay spends its time in the kernel, and -Os keeps the binary
# within the 6 MB goal.
foreach(variable SOURCE_DIR BUILD_DIR GENERATOR)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "build_static.cmake needs -D${variable}=...")
  endif()
endforeach()

execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BUILD_DIR} -G ${GENERATOR}
          -DCMAKE_BUILD_TYPE=MinSizeRel -DTCPTUNNEL_STATIC=ON -DTCPTUNNEL_STRIP=ON
          -DTCPTUNNEL_BUILD_TESTS=OFF -DTCPTUNNEL_BUILD_BENCH=OFF
  RESULT_VARIABLE configured)
if(NOT configured EQUAL 0)
  message(FATAL_ERROR "configuring the static build failed")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target tcptunnel
  RESULT_VARIABLE built)
if(NOT built EQUAL 0)
  message(FATAL_ERROR "building the static binary failed")
endif()

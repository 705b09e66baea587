# Included by CTest after the discovered GoogleTest cases (see CMakeLists.txt).
set_tests_properties(Search.DriftAttackKeepsNoNoOpAndStillKeepsARealGain PROPERTIES RUN_SERIAL TRUE)

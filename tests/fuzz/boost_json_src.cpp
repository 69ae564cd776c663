// Boost.JSON compiled into the fuzz targets from its headers (instead of linking the distribution's
// libboost_json), so the fuzzer's coverage instrumentation and ASan see inside the JSON parser.
#include <boost/json/src.hpp>

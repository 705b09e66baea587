# Source this ON THE GPU HOST, from the project's root, after tools/gpu-deps
# filled .deps/ here and the run carried it: unpacks the Debian packages into
# /tmp/deps and points CMake, pkg-config and the loader at them.
if [ ! -f .deps/unpack-deps.sh ]; then
  echo "tools/gpu-env.sh: .deps/unpack-deps.sh missing: run tools/gpu-deps first and carry .deps" >&2
  return 2 2>/dev/null || exit 2
fi
source .deps/unpack-deps.sh
# pkg-config files carry prefix=/usr: point them at the unpacked tree.
for pc in /tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc /tmp/deps/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig/*.pc; do
  [ -f "$pc" ] && sed -i 's|^prefix=/usr$|prefix=/tmp/deps/usr|' "$pc"
done
export PKG_CONFIG_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
# Debian's OpenBLAS lives in a subdirectory that its alternatives would link; dpkg -x does not.
export CMAKE_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/openblas-pthread${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/openblas-pthread:$LD_LIBRARY_PATH
# pkg-config from the carried packages when the host has none.
command -v pkg-config >/dev/null || export PATH=/tmp/deps/usr/bin:$PATH

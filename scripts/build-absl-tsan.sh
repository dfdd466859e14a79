#!/usr/bin/env bash
# Builds Abseil with ThreadSanitizer for `scripts/sanitize.sh thread` and prints its install
# prefix (the only thing written to stdout).
#
# Debian's Abseil is not built with -fsanitize=thread: absl::Mutex's lock and unlock then create
# no happens-before edges that TSan can see, and every field that an absl::Mutex guards looks
# racy. This script builds the same Abseil that the normal build links against (Debian's source
# package of the installed libabsl-dev version: upstream tarball + Debian's patches, checksums
# checked against the package's .dsc) with -fsanitize=thread, static, into a cache folder outside
# the repository. Nothing of it is committed; a second run finds the stamp and returns at once.
#
#   KVR_CACHE_DIR   cache folder (default ~/.cache/kvr); the prefix is $KVR_CACHE_DIR/absl-tsan-<version>
#   KVR_SANITIZE_JOBS   parallel compile jobs (default: nproc)
set -euo pipefail

VERSION=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null || true)
if [ -z "$VERSION" ]; then
  echo "build-absl-tsan.sh: libabsl-dev is not installed (scripts/install-deps.sh)" >&2
  exit 1
fi
UPSTREAM=${VERSION%%-*}           # 20220623.1
CACHE=${KVR_CACHE_DIR:-$HOME/.cache/kvr}
PREFIX=$CACHE/absl-tsan-$VERSION
STAMP=$PREFIX/.kvr-built
if [ -f "$STAMP" ]; then
  echo "$PREFIX"
  exit 0
fi

JOBS=${KVR_SANITIZE_JOBS:-$(nproc)}
POOL=http://deb.debian.org/debian/pool/main/a/abseil
SRC=$CACHE/absl-src-$VERSION
mkdir -p "$SRC"
cd "$SRC"
DSC=abseil_$VERSION.dsc
ORIG=abseil_$UPSTREAM.orig.tar.gz
DEBIAN=abseil_$VERSION.debian.tar.xz
for f in "$DSC" "$ORIG" "$DEBIAN"; do
  if [ ! -s "$f" ]; then
    curl -fsSL -o "$f.part" "$POOL/$f" ||
      { echo "build-absl-tsan.sh: could not download $POOL/$f" >&2; exit 1; }
    mv -f "$f.part" "$f"
  fi
done
for f in "$ORIG" "$DEBIAN"; do
  want=$(awk -v f="$f" '/^Checksums-Sha256:/{s=1;next} /^[^ ]/{s=0} s && $3==f {print $1}' "$DSC")
  have=$(sha256sum "$f" | cut -d' ' -f1)
  if [ -z "$want" ] || [ "$want" != "$have" ]; then
    echo "build-absl-tsan.sh: checksum mismatch for $f (want '$want', have '$have')" >&2
    exit 1
  fi
done

rm -rf tree build
mkdir tree
tar xzf "$ORIG" -C tree --strip-components=1
tar xJf "$DEBIAN" -C tree
(cd tree && while read -r p; do
   case "$p" in ''|'#'*) continue ;; esac
   patch -p1 -s < "debian/patches/$p"
 done < debian/patches/series)

FLAGS="-fsanitize=thread -fno-omit-frame-pointer -O1 -g1"
# C++17 and static, as Debian's own static build (debian/rules).
cmake -S tree -B build -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_STANDARD=17 \
  -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_C_FLAGS="$FLAGS" -DBUILD_SHARED_LIBS=OFF \
  -DBUILD_TESTING=OFF -DABSL_BUILD_TESTING=OFF -DABSL_PROPAGATE_CXX_STD=ON \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_INSTALL_PREFIX="$PREFIX" >&2
cmake --build build -j"$JOBS" >&2
cmake --install build >&2
rm -rf tree build
touch "$STAMP"
echo "$PREFIX"

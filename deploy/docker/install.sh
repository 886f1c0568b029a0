#!/usr/bin/env bash
# The steps that make the sluice image, in one script run by the Dockerfile
# and by CI (tests/deploy.rs), so they are tested even where no image can be
# built.
#
#   install.sh build-deps          apt packages to compile sluice (build stage)
#   install.sh runtime             apt packages sluice needs at run time
#   install.sh pdfium PREFIX       libpdfium (from the pypdfium2 wheel) into PREFIX/lib
#   install.sh check BINARY PREFIX every shared library resolves; libpdfium and libtesseract are there
#
# PYTHON (default python3) is the interpreter whose pip provides pypdfium2;
# a version already installed there is used as is.
set -euo pipefail

PDFIUM_WHEEL="pypdfium2==5.15.2"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-}" in
  build-deps)
    apt_install ca-certificates build-essential pkg-config clang libclang-dev protobuf-compiler libprotobuf-dev \
      python3 python3-venv libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
      libswresample-dev libavfilter-dev libavdevice-dev libturbojpeg0-dev
    ;;
  runtime)
    # The FFmpeg 5.1 and libjpeg-turbo libraries sluice links (Debian 12),
    # CA certificates for object stores over TLS, and Tesseract with its
    # English data for OCR (loaded when first needed; more languages:
    # tesseract-ocr-<lang>).
    apt_install ca-certificates libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libturbojpeg0 \
      tesseract-ocr tesseract-ocr-eng
    ;;
  pdfium)
    prefix=${2:?usage: install.sh pdfium PREFIX}
    python=${PYTHON:-python3}
    if ! "$python" -c 'import pypdfium2_raw' 2>/dev/null; then
      venv=$(mktemp -d)
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q "$PDFIUM_WHEEL"
      python="$venv/bin/python"
    fi
    lib=$("$python" -c 'import os, pypdfium2_raw; print(os.path.join(os.path.dirname(pypdfium2_raw.__file__), "libpdfium.so"))')
    mkdir -p "$prefix/lib"
    install -m 0644 "$lib" "$prefix/lib/libpdfium.so"
    echo "libpdfium: $prefix/lib/libpdfium.so"
    ;;
  check)
    binary=${2:?usage: install.sh check BINARY PREFIX}
    prefix=${3:?usage: install.sh check BINARY PREFIX}
    if ldd "$binary" | grep "not found" >/dev/null; then
      ldd "$binary" | grep "not found" >&2
      exit 1
    fi
    test -s "$prefix/lib/libpdfium.so"
    # grep reads all of it (no -q): under pipefail, ldconfig cut off by a
    # closed pipe would fail the check.
    if ! /sbin/ldconfig -p | grep 'libtesseract\.so\.5 ' >/dev/null; then
      echo "check: libtesseract.so.5 is not installed (OCR)" >&2
      exit 1
    fi
    echo "check: $binary resolves every library; libpdfium and libtesseract present"
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac

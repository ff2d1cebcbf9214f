#!/usr/bin/env bash
# Installs the S3 emulators the provider tests start (idempotent):
# - moto's server (PyPI `moto[server]`, which brings boto3 for the tests' independent client);
# - s3s-fs (crates.io), a small S3 server that verifies SigV4 signatures.
#   Versions after 0.14.1 need a newer rustc; the build takes about 5 minutes.
set -euo pipefail

if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi

if ! command -v s3s-fs >/dev/null; then
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

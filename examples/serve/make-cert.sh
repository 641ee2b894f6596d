#!/usr/bin/env bash
# Makes a self-signed certificate for localhost (and 127.0.0.1) for the example's TLS listeners:
#   examples/serve/make-cert.sh [DIR]      # writes DIR/localhost.crt and DIR/localhost.key (default: this folder)
# For testing only: a client must be told to trust this certificate (or not to check it). It is an
# end-entity certificate (CA:FALSE), which is what strict verifiers such as webpki accept as a pinned
# server certificate.
set -euo pipefail
dir=${1:-$(dirname "$0")}
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -sha256 -days 3650 -nodes \
    -keyout "$dir/localhost.key" -out "$dir/localhost.crt" \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
    -addext "extendedKeyUsage=serverAuth" 2>/dev/null
chmod 600 "$dir/localhost.key"
echo "wrote $dir/localhost.crt and $dir/localhost.key"

#!/bin/sh
# `zoogate ca init` and `zoogate passwd-hash` as an operator runs them.
# Usage: egress_cli_test.sh ZOOGATE_BINARY
set -eu

zoogate=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

mode_of() { stat -c %a "$1"; }

# Default place: the files `zoogate serve` loads with the default configuration, in a private folder.
umask 022
"$zoogate" ca init >out.txt || fail "ca init exited $?"
[ -f zoogate-cache/ca/ca.pem ] || fail "no zoogate-cache/ca/ca.pem"
[ "$(mode_of zoogate-cache/ca/ca.key)" = 600 ] || fail "key mode $(mode_of zoogate-cache/ca/ca.key)"
[ "$(mode_of zoogate-cache/ca)" = 700 ] || fail "folder mode $(mode_of zoogate-cache/ca)"
[ "$(mode_of zoogate-cache/ca/ca.pem)" = 644 ] || fail "certificate mode $(mode_of zoogate-cache/ca/ca.pem)"
grep -q "certificate:  $work/zoogate-cache/ca/ca.pem" out.txt || fail "the certificate path is not printed"
grep -q "update-ca-certificates" out.txt || fail "no installation hint"
grep -q "NODE_EXTRA_CA_CERTS" out.txt || fail "no Node.js hint"

text=$(openssl x509 -in zoogate-cache/ca/ca.pem -noout -text)
echo "$text" | grep -A1 "X509v3 Basic Constraints: critical" | grep -q "CA:TRUE" || fail "no critical CA:TRUE"
echo "$text" | grep -A1 "X509v3 Key Usage: critical" | grep -q "Certificate Sign, CRL Sign" || fail "key usage"
echo "$text" | grep -q "Subject: CN = zoogate interception CA" || fail "default subject"
echo "$text" | grep -q "ASN1 OID: prime256v1" || fail "not a P-256 key"
openssl pkey -in zoogate-cache/ca/ca.key -noout || fail "the key does not parse"
fingerprint=$(openssl x509 -in zoogate-cache/ca/ca.pem -noout -fingerprint -sha256 | sed 's/.*=//')
grep -q "SHA-256 fingerprint: $fingerprint" out.txt || fail "fingerprint differs from openssl's"

# Never replaced: a second run fails and leaves both files as they were.
before=$(cat zoogate-cache/ca/ca.pem zoogate-cache/ca/ca.key | sha256sum)
if "$zoogate" ca init 2>err.txt; then fail "a second ca init succeeded"; fi
grep -q "exists" err.txt || fail "no 'exists' in: $(cat err.txt)"
[ "$(cat zoogate-cache/ca/ca.pem zoogate-cache/ca/ca.key | sha256sum)" = "$before" ] || fail "files changed"

# Explicit files, an RSA key, a name and a lifetime; the key stays 0600 under a permissive umask.
umask 000
"$zoogate" ca init --cert my-ca.crt --key my-ca.key --key-type rsa --name "Example Corp egress CA" --days 30 \
  >/dev/null || fail "ca init --cert --key exited $?"
[ "$(mode_of my-ca.key)" = 600 ] || fail "RSA key mode $(mode_of my-ca.key)"
text=$(openssl x509 -in my-ca.crt -noout -text)
echo "$text" | grep -q "CA:TRUE" || fail "RSA CA lacks CA:TRUE"
echo "$text" | grep -q "Public-Key: (3072 bit)" || fail "not RSA-3072"
echo "$text" | grep -q "Subject: CN = Example Corp egress CA" || fail "subject"
openssl x509 -in my-ca.crt -noout -checkend $((29 * 86400)) >/dev/null || fail "expires too early"
if openssl x509 -in my-ca.crt -noout -checkend $((31 * 86400)) >/dev/null; then fail "valid too long"; fi
umask 022

# Usage errors.
if "$zoogate" ca init --cert only.pem 2>/dev/null; then fail "--cert without --key accepted"; fi
if "$zoogate" ca init --dir d --cert c --key k 2>/dev/null; then fail "--dir with --cert accepted"; fi
if "$zoogate" ca init --dir d2 --days 0 2>/dev/null; then fail "--days 0 accepted"; fi
if "$zoogate" ca init --dir d3 --key-type dsa 2>/dev/null; then fail "--key-type dsa accepted"; fi
[ ! -e d3/ca.key ] || fail "a refused run wrote a key"

# Password hashes: the first line of standard input; nothing on it is an error.
hash=$(printf 'hunter2\n' | "$zoogate" passwd-hash) || fail "passwd-hash exited $?"
echo "$hash" | grep -Eq '^scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=$' || fail "hash shape: $hash"
other=$(printf 'hunter2' | "$zoogate" passwd-hash) || fail "passwd-hash without a newline exited $?"
[ "$hash" != "$other" ] || fail "two hashes of one password are equal (no salt?)"
if printf '' | "$zoogate" passwd-hash >/dev/null 2>&1; then fail "an empty password was hashed"; fi

echo "egress CLI: all checks passed"

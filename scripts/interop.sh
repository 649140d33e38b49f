#!/usr/bin/env bash
# The interoperability suite: this project against the official Java implementations (the Java
# KCL 3.x, the KPL, DynamoDB Local; versions pinned in interop/java/pom.xml). Needs, beyond
# what scripts/test.sh needs (Rust, Node.js), Java 17+ and Maven; the first run downloads the
# Java libraries from Maven Central into ~/.m2.
#
#   1. builds interop/java with Maven (the KCL application, the KPL producer, DynamoDB Local);
#   2. runs consumer/tests/interop.rs (ignored by plain `cargo test`, run here with --ignored),
#      which also checks that a Java KCL application reads every record this producer
#      acknowledged while aggregating through splits under load, exactly once;
#   3. runs the leased-mode tests again with their lease tables in DynamoDB Local
#      (TEST_DYNAMODB=dynamodb-local) instead of dynalite.
#
# Every step must run at least one test and pass all of them: a suite that ran nothing fails.
# Usage: scripts/interop.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

fail() {
    echo "interop: $*" >&2
    exit 1
}

command -v java >/dev/null || fail "java is not installed (Java 17 or newer is needed)"
command -v mvn >/dev/null || fail "mvn is not installed (Maven is needed)"
java_version="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
[[ "${java_version%%.*}" =~ ^[0-9]+$ && "${java_version%%.*}" -ge 17 ]] ||
    fail "java $java_version is too old: Java 17 or newer is needed"

echo "==> installing the emulators pinned in emulators/package-lock.json" >&2
npm ci --prefix emulators --no-audit --no-fund --loglevel=error >&2

echo "==> building interop/java with Maven (java $java_version)" >&2
mvn -B -q -f interop/java/pom.xml package >&2

echo "==> building the service binaries" >&2
cargo build --locked --bins >&2

# Runs cargo test with the given arguments; fails unless at least one test ran and none failed.
run_tests() {
    local log
    log="$(mktemp)"
    if ! cargo test --locked "$@" 2>&1 | tee "$log"; then
        rm -f "$log"
        fail "tests failed: cargo test $*"
    fi
    if ! grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$log"; then
        rm -f "$log"
        fail "no test ran: cargo test $*"
    fi
    rm -f "$log"
}

echo "==> interoperability tests (consumer/tests/interop.rs)" >&2
run_tests -p kinesis-consumer --test interop -- --ignored

echo "==> leased-mode tests with DynamoDB Local" >&2
(
    export TEST_DYNAMODB=dynamodb-local
    run_tests -p kinesis-consumer --test leased
    run_tests -p kinesis-consumer --test lease_moves
    run_tests -p kinesis-consumer --test aggregation -- leased
)

echo "==> interop: all passed" >&2

#!/usr/bin/env python3
"""Producer and end-to-end benchmark, run on demand (not part of the test suite).

    python3 bench/run.py                 # defaults below
    python3 bench/run.py --count 2000000 --latency-seconds 30

Builds nothing itself: run `bench/prepare.sh` first (release binaries, emulators, the Node.js
peer, the AWS CLI in .venv). Everything runs on this machine against local emulators it starts
on free ports:

1. Throughput, against kinesalite (fast, no throttling): each producer sends ~100-byte
   DataMessages and exits when Kinesis acknowledged all of them. Measured per process with
   wait4(): wall time, user+system CPU seconds and peak RSS.
     - ours, aggregated       target/release/producer, PRODUCER_AGGREGATION=true
     - ours, not aggregated   target/release/producer, PRODUCER_AGGREGATION=false
     - peer: plain Rust SDK   500-record PutRecords, 8 in flight (producer/examples/plain_sdk_peer.rs)
     - peer: official KPL aggregation library for Node.js with the AWS SDK v3 (bench/node-peer)
2. End to end, against kinesis-mock (the engine LocalStack runs): the producer at a fixed
   rate and the consumer, latency = consumer's log timestamp - the message's CreatedOn.

Prints a Markdown table.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(ROOT, "emulators", "node_modules")
RELEASE = os.path.join(ROOT, "target", "release")
AWS_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline_s=60):
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answered: up
        except OSError:
            time.sleep(0.1)
    sys.exit(f"emulator at {url} did not start within {deadline_s}s")


class Emulator:
    def __init__(self, kind):
        self.port = free_port()
        env = dict(os.environ)
        if kind == "dynalite":
            cmd = ["node", os.path.join(MODULES, "dynalite", "cli.js"), "--port", str(self.port),
                   "--createTableMs", "0"]
            health = f"http://127.0.0.1:{self.port}/"
        elif kind == "kinesalite":
            cmd = ["node", os.path.join(MODULES, "kinesalite", "cli.js"), "--port", str(self.port),
                   "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"]
            health = f"http://127.0.0.1:{self.port}/"
        else:
            pkg = os.path.join(MODULES, "kinesis-local")
            cmd = ["node", os.path.join(pkg, "main.js")]
            env.update(KINESIS_MOCK_CERT_PATH=os.path.join(pkg, "server.json"),
                       KINESIS_MOCK_PLAIN_PORT=str(self.port), KINESIS_MOCK_TLS_PORT=str(free_port()),
                       CREATE_STREAM_DURATION="0ms", LOG_LEVEL="ERROR")
            health = f"http://127.0.0.1:{self.port}/healthcheck"
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        wait_http(health)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()

    def create_stream(self, shards):
        name = f"bench-{uuid.uuid4().hex[:10]}"
        aws = os.path.join(ROOT, ".venv", "bin", "aws")
        env = {**os.environ, **AWS_ENV}
        subprocess.run([aws, "--endpoint-url", self.endpoint, "kinesis", "create-stream",
                        "--stream-name", name, "--shard-count", str(shards)], env=env, check=True)
        for _ in range(300):
            out = subprocess.run([aws, "--endpoint-url", self.endpoint, "kinesis", "describe-stream-summary",
                                  "--stream-name", name], env=env, capture_output=True, text=True)
            if out.returncode == 0 and '"ACTIVE"' in out.stdout:
                return name
            time.sleep(0.2)
        sys.exit(f"stream {name} did not become ACTIVE")


def run_measured(cmd, env, stdout=subprocess.DEVNULL):
    """Runs cmd to completion; returns (exit code, wall seconds, cpu seconds, peak RSS MiB, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    return code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def throughput(emu, name, cmd, extra_env, count, parse_stdout=False):
    stream = emu.create_stream(2)
    env = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": emu.endpoint, "STREAM_NAME": stream,
           "COUNT": str(count), **extra_env}
    code, wall, cpu, rss, out = run_measured(cmd, env, subprocess.PIPE if parse_stdout else subprocess.DEVNULL)
    if code != 0:
        sys.exit(f"{name} exited with {code}")
    seconds = wall
    if parse_stdout:
        seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
    return {"name": name, "records": count, "wall_s": wall, "send_s": seconds,
            "rate": count / seconds, "cpu_per_m": cpu / count * 1e6, "rss_mib": rss}


def ours(aggregated):
    return {"PRODUCER_INTERVAL_MS": "0", "PRODUCER_MESSAGES_PER_TICK": "1000",
            "PRODUCER_AGGREGATION": "true" if aggregated else "false", "PRODUCER_SOURCE": "bench",
            "PRODUCER_SHARD_RATE_LIMIT": "0", "LOG_FORMAT": "json", "RUST_LOG": "warn"}


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def end_to_end(rate, seconds, aggregated, leased):
    emu = Emulator("kinesis-mock")
    dynamo = Emulator("dynalite") if leased else None
    try:
        stream = emu.create_stream(2)
        base = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": emu.endpoint, "STREAM_NAME": stream,
                "LOG_FORMAT": "json", "RUST_LOG": "info"}
        if dynamo:
            base.update(AWS_ENDPOINT_URL_DYNAMODB=dynamo.endpoint, CONSUMER_MODE="leased",
                        CONSUMER_APPLICATION_NAME=stream)
        log_path = tempfile.NamedTemporaryFile(suffix=".log", delete=False).name
        # The consumer appends to its own descriptor; this script reads through a separate one
        # (seeking a shared descriptor would move the writer's offset too).
        with open(log_path, "a") as sink:
            consumer = subprocess.Popen([os.path.join(RELEASE, "consumer")],
                                        env={**base, "CONSUMER_POLL_INTERVAL_MS": "200"},
                                        stdout=sink, stderr=subprocess.DEVNULL)
        per_tick = max(1, rate // 20)
        count = rate * seconds
        env = {**base, "PRODUCER_INTERVAL_MS": "50", "PRODUCER_MESSAGES_PER_TICK": str(per_tick),
               "PRODUCER_COUNT": str(count), "PRODUCER_AGGREGATION": "true" if aggregated else "false",
               "RUST_LOG": "warn"}
        code, _, _, producer_rss, _ = run_measured([os.path.join(RELEASE, "producer")], env)
        if code != 0:
            sys.exit(f"producer exited with {code}")
        latencies = []
        deadline = time.time() + 120
        while time.time() < deadline:
            latencies = []
            with open(log_path) as log:
                lines = log.readlines()
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "record received":
                    latencies.append(parse_time(event["timestamp"]) - parse_time(event["created_on"]))
            if len(latencies) >= count:
                break
            time.sleep(0.5)
        consumer.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(consumer.pid, 0)
        latencies.sort()
        os.unlink(log_path)
        return {"aggregated": aggregated, "rate": rate, "count": count, "received": len(latencies),
                "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
                "producer_rss_mib": producer_rss, "consumer_rss_mib": usage.ru_maxrss / 1024}
    finally:
        emu.stop()
        if dynamo:
            dynamo.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="records for our aggregated producer")
    parser.add_argument("--plain-count", type=int, default=100_000, help="records for unaggregated producers")
    parser.add_argument("--peer-agg-count", type=int, default=300_000, help="records for the Node.js aggregation peer")
    parser.add_argument("--latency-rate", type=int, default=200, help="messages per second in the end-to-end run")
    parser.add_argument("--latency-seconds", type=int, default=20)
    args = parser.parse_args()

    producer = [os.path.join(RELEASE, "producer")]
    peer_rust = [os.path.join(RELEASE, "examples", "plain_sdk_peer")]
    peer_node = ["node", os.path.join(ROOT, "bench", "node-peer", "producer.js")]
    for path in (producer[0], peer_rust[0], os.path.join(RELEASE, "consumer")):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run bench/prepare.sh first")

    print(f"machine: {os.cpu_count()} cores; emulator runs on the same cores", file=sys.stderr)
    emu = Emulator("kinesalite")
    try:
        rows = [
            throughput(emu, "ours, aggregated", producer, {**ours(True), "PRODUCER_COUNT": str(args.count)}, args.count),
            throughput(emu, "ours, not aggregated", producer, {**ours(False), "PRODUCER_COUNT": str(args.plain_count)}, args.plain_count),
            throughput(emu, "peer: plain Rust SDK, 500/PutRecords", peer_rust, {}, args.plain_count, parse_stdout=True),
            throughput(emu, "peer: aws-kinesis-agg + AWS SDK v3 (Node.js)", peer_node, {}, args.peer_agg_count, parse_stdout=True),
        ]
    finally:
        emu.stop()
    best_peer = max(r["rate"] for r in rows if r["name"].startswith("peer"))
    print("\n### Producer throughput (kinesalite, ~100-byte DataMessages, 2-shard stream)\n")
    print("| producer | records | user records/s | CPU-s per million | peak RSS MiB | vs best peer |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['records']:,} | {r['rate']:,.0f} | {r['cpu_per_m']:.1f} | {r['rss_mib']:.1f} | {r['rate'] / best_peer:.1f}x |")

    print(f"\n### End to end (kinesis-mock, {args.latency_rate} msg/s for {args.latency_seconds} s, consumer polling every 200 ms)\n")
    print("| consumer mode | aggregation | received / sent | latency p50 ms | latency p99 ms | producer peak RSS MiB | consumer peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for leased, aggregated in ((False, True), (False, False), (True, True)):
        e = end_to_end(args.latency_rate, args.latency_seconds, aggregated, leased)
        print(f"| {'leased' if leased else 'polling'} | {'on' if aggregated else 'off'} | {e['received']:,} / {e['count']:,} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['producer_rss_mib']:.1f} | {e['consumer_rss_mib']:.1f} |")


if __name__ == "__main__":
    main()

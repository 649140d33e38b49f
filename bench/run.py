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
2. Throughput over TLS, against kinesalite serving HTTPS with a certificate made for this run
   (bench/kinesalite-tls.js): the KPL talks HTTPS only, so it is compared with this producer
   and the Node.js peer over the same TLS endpoint, in the same run, with the same messages.
     - ours, aggregated, TLS  target/release/producer, verifying the certificate (SSL_CERT_FILE)
     - peer: Node.js, TLS     bench/node-peer, verifying the certificate (NODE_EXTRA_CA_CERTS)
     - peer: the KPL          interop/java/kpl-producer (the KPL's Java library starting its
                              native daemon; VerifyCertificate=false, CloudWatch metrics off,
                              its per-shard rate limit raised out of the way as ours is off)
   Left out with --no-kpl (the KPL needs Java 17+ and the Maven build of interop/java).
3. End to end, against kinesis-mock 0.6.2 (LocalStack 4.14 runs 0.5.2, which has no SubscribeToShard): the producer at a
   fixed rate and the consumer, latency = consumer's log timestamp - the message's CreatedOn,
   for both retrievals in the same run: polling (GetRecords, 200 ms apart when idle) and
   enhanced fan-out (SubscribeToShard). kinesis-mock pushes fan-out events about once a second,
   so the fan-out figure measures that pace, not what AWS does (about 70 ms).

    python3 bench/run.py --only end-to-end     # section 3 alone
    python3 bench/run.py --only throughput     # sections 1 and 2
    python3 bench/run.py --only throughput --ferrokinesis ~/.cargo/bin/ferrokinesis   # and against ferrokinesis

To profile this producer, --wrap runs it alone (aggregated, plain HTTP, --count records) under a
command, e.g. (CPU-seconds and memory then include the wrapper's):

    python3 bench/run.py --wrap "perf record -e cpu-clock -F 4000 -o /tmp/perf.data"
    python3 bench/run.py --count 200000 --wrap "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out"

Release binaries are taken from $CARGO_TARGET_DIR/release when CARGO_TARGET_DIR is set, else
from target/release.

Prints Markdown tables.
"""

import argparse
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(ROOT, "emulators", "node_modules")
# Where cargo put the release build: CARGO_TARGET_DIR when set, as cargo itself reads it.
RELEASE = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
# An optional faster emulator for a rate table of its own (--ferrokinesis PATH).
FERROKINESIS = None
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
        self.ca_bundle = None
        env = dict(os.environ)
        if kind == "dynalite":
            cmd = ["node", os.path.join(MODULES, "dynalite", "cli.js"), "--port", str(self.port),
                   "--createTableMs", "0"]
            health = f"http://127.0.0.1:{self.port}/"
        elif kind == "kinesalite":
            cmd = ["node", os.path.join(MODULES, "kinesalite", "cli.js"), "--port", str(self.port),
                   "--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"]
            health = f"http://127.0.0.1:{self.port}/"
        elif kind == "ferrokinesis":
            cmd = [FERROKINESIS, "--port", str(self.port), "--create-stream-ms", "0", "--delete-stream-ms", "0",
                   "--update-stream-ms", "0", "--shard-limit", "200"]
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
        aws = [os.path.join(ROOT, ".venv", "bin", "aws"), "--endpoint-url", self.endpoint]
        if self.ca_bundle:
            aws += ["--ca-bundle", self.ca_bundle]
        env = {**os.environ, **AWS_ENV}
        subprocess.run(aws + ["kinesis", "create-stream", "--stream-name", name, "--shard-count", str(shards)],
                       env=env, check=True)
        for _ in range(300):
            out = subprocess.run(aws + ["kinesis", "describe-stream-summary", "--stream-name", name],
                                 env=env, capture_output=True, text=True)
            if out.returncode == 0 and '"ACTIVE"' in out.stdout:
                return name
            time.sleep(0.2)
        sys.exit(f"stream {name} did not become ACTIVE")


class TlsKinesalite(Emulator):
    """kinesalite over HTTPS with a CA and a server certificate (IP 127.0.0.1) made by openssl for
    this run, so that a verifying client (this producer, with SSL_CERT_FILE) accepts it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench-tls-")
        self.ca_bundle = os.path.join(self.dir, "ca.pem")
        key, cert = os.path.join(self.dir, "server.key"), os.path.join(self.dir, "server.pem")
        csr, ext = os.path.join(self.dir, "server.csr"), os.path.join(self.dir, "ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        for cmd in (
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
             "-keyout", os.path.join(self.dir, "ca.key"), "-out", self.ca_bundle,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
            ["openssl", "x509", "-req", "-in", csr, "-CA", self.ca_bundle, "-CAkey", os.path.join(self.dir, "ca.key"),
             "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", ext],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        self.port = free_port()
        self.endpoint = f"https://127.0.0.1:{self.port}"
        env = {**os.environ, "EMULATORS_MODULES": MODULES, "KINESALITE_PORT": str(self.port),
               "TLS_KEY": key, "TLS_CERT": cert}
        self.proc = subprocess.Popen(["node", os.path.join(ROOT, "bench", "kinesalite-tls.js")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        context = ssl.create_default_context(cafile=self.ca_bundle)
        end = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2, context=context)
                break
            except urllib.error.HTTPError:
                break  # answered over verified TLS: up
            except OSError:
                if time.time() > end:
                    sys.exit(f"kinesalite over TLS did not start on port {self.port}")
                time.sleep(0.1)

    def stop(self):
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class CpuLimit:
    """A control group whose processes share `fraction` of one CPU between them (cgroup v1's
    cpu controller, or v2's cpu.max); making one needs root."""

    PERIOD_US = 100_000

    def __init__(self, fraction):
        quota = max(1000, int(fraction * self.PERIOD_US))
        name = f"kinesis-bench-{os.getpid()}-{int(time.time() * 1000)}"
        v1, v2 = "/sys/fs/cgroup/cpu", "/sys/fs/cgroup"
        try:
            if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")) or os.path.exists(os.path.join(v1, "tasks")):
                self.path = os.path.join(v1, name)
                os.mkdir(self.path)
                self._write("cpu.cfs_period_us", str(self.PERIOD_US))
                self._write("cpu.cfs_quota_us", str(quota))
            else:
                self.path = os.path.join(v2, name)
                os.mkdir(self.path)
                self._write("cpu.max", f"{quota} {self.PERIOD_US}")
        except OSError as e:
            sys.exit(f"--cpu-limit: cannot make a CPU control group ({e}); it needs root and cgroups")

    def _write(self, file, value):
        with open(os.path.join(self.path, file), "w") as f:
            f.write(value)

    def enter(self):
        """For preexec_fn: moves the new process into the group before it runs."""
        self._write("cgroup.procs", str(os.getpid()))

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def run_measured(cmd, env, stdout=subprocess.DEVNULL, cpu_limit=None):
    """Runs cmd to completion; returns (exit code, wall seconds, cpu seconds, peak RSS MiB, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE,
                            preexec_fn=cpu_limit.enter if cpu_limit else None)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    return code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def throughput(emu, name, cmd, extra_env, count, parse_stdout=False, cpu_fraction=None):
    stream = emu.create_stream(2)
    env = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": emu.endpoint, "STREAM_NAME": stream,
           "COUNT": str(count), **extra_env}
    limit = CpuLimit(cpu_fraction) if cpu_fraction else None
    try:
        code, wall, cpu, rss, out = run_measured(cmd, env, subprocess.PIPE if parse_stdout else subprocess.DEVNULL,
                                                 limit)
    finally:
        if limit:
            limit.remove()
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


def end_to_end(rate, seconds, aggregated, leased, retrieval):
    emu = Emulator("kinesis-mock")
    dynamo = Emulator("dynalite") if leased else None
    try:
        stream = emu.create_stream(2)
        base = {**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": emu.endpoint, "STREAM_NAME": stream,
                "LOG_FORMAT": "json", "RUST_LOG": "info"}
        if dynamo:
            base.update(AWS_ENDPOINT_URL_DYNAMODB=dynamo.endpoint, CONSUMER_MODE="leased",
                        CONSUMER_APPLICATION_NAME=stream)
        consumer_env = {**base, "CONSUMER_POLL_INTERVAL_MS": "200", "CONSUMER_RETRIEVAL": retrieval,
                        "CONSUMER_EFO_NAME": "bench"}
        log_path = tempfile.NamedTemporaryFile(suffix=".log", delete=False).name
        # The consumer appends to its own descriptor; this script reads through a separate one
        # (seeking a shared descriptor would move the writer's offset too).
        with open(log_path, "a") as sink:
            consumer = subprocess.Popen([os.path.join(RELEASE, "consumer")],
                                        env=consumer_env,
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
        return {"aggregated": aggregated, "retrieval": retrieval, "rate": rate, "count": count, "received": len(latencies),
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
    parser.add_argument("--tls-count", type=int, default=1_000_000, help="records for our aggregated producer over TLS")
    parser.add_argument("--kpl-count", type=int, default=300_000, help="records for the KPL")
    parser.add_argument("--no-kpl", action="store_true", help="leave out the KPL row (the KPL needs Java and Maven)")
    parser.add_argument("--latency-rate", type=int, default=200, help="messages per second in the end-to-end run")
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument("--only", choices=["all", "end-to-end", "throughput", "cpu-limit"], default="all",
                        help="end-to-end: leave out the producer throughput sections; "
                             "throughput: leave out the end-to-end section; "
                             "cpu-limit: only the --cpu-limit section")
    parser.add_argument("--ferrokinesis", metavar="PATH",
                        help="also measure this producer (aggregated) and the Node.js peer against ferrokinesis "
                             "(crates.io ferrokinesis 0.7.0, a Kinesis emulator in Rust), whose ingest bounds "
                             "the rates less than kinesalite's")
    parser.add_argument("--cpu-limit", type=float, metavar="FRACTION",
                        help="also run ours and the Node.js peer each in a control group with FRACTION of one CPU "
                             "(against ferrokinesis if given, else kinesalite): rates at the same CPU; needs root")
    parser.add_argument("--limited-count", type=int, default=1_000_000,
                        help="records for ours under --cpu-limit (the Node.js peer sends a fifth of them)")
    parser.add_argument("--wrap", metavar="COMMAND",
                        help="run only this producer, aggregated over plain HTTP, under COMMAND (a profiler)")
    args = parser.parse_args()

    producer = [os.path.join(RELEASE, "producer")]
    peer_rust = [os.path.join(RELEASE, "examples", "plain_sdk_peer")]
    peer_node = ["node", os.path.join(ROOT, "bench", "node-peer", "producer.js")]
    kpl_lib = os.path.join(ROOT, "interop", "java", "kpl-producer", "target", "lib")
    peer_kpl = ["java", "-cp", os.path.join(kpl_lib, "*"), "interop.KplProducer"]
    kpl_jars = glob.glob(os.path.join(kpl_lib, "amazon-kinesis-producer-*.jar"))
    kpl_version = os.path.basename(kpl_jars[0])[len("amazon-kinesis-producer-"):-len(".jar")] if kpl_jars else "?"
    needed = (producer[0],) + (() if args.only in ("throughput", "cpu-limit") else (os.path.join(RELEASE, "consumer"),))
    if args.only != "end-to-end":
        needed += (peer_rust[0],) + (() if args.no_kpl else (kpl_lib,))
    if args.wrap or args.only == "cpu-limit":
        needed = (producer[0],)
    for path in needed:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run bench/prepare.sh first")

    print(f"machine: {os.cpu_count()} cores; emulator runs on the same cores", file=sys.stderr)
    if args.wrap:
        emu = Emulator("kinesalite")
        try:
            r = throughput(emu, "ours, aggregated", shlex.split(args.wrap) + producer,
                           {**ours(True), "PRODUCER_COUNT": str(args.count)}, args.count)
        finally:
            emu.stop()
        print(f"{r['name']} under {args.wrap!r}: {r['records']:,} records, {r['rate']:,.0f}/s, "
              f"{r['cpu_per_m']:.2f} CPU-s per million (the wrapper's included), peak RSS {r['rss_mib']:.1f} MiB")
        return
    if args.only == "cpu-limit":
        cpu_limit_section(args, producer, peer_node)
        return
    if args.only != "end-to-end":
        throughput_sections(args, producer, peer_rust, peer_node, peer_kpl, kpl_version)
    if args.ferrokinesis and args.only != "end-to-end":
        ferrokinesis_section(args, producer, peer_node)
    if args.cpu_limit and args.only != "end-to-end":
        cpu_limit_section(args, producer, peer_node)
    if args.only != "throughput":
        end_to_end_section(args)


def ferrokinesis_section(args, producer, peer_node):
    global FERROKINESIS
    FERROKINESIS = args.ferrokinesis
    emu = Emulator("ferrokinesis")
    try:
        rows = [
            throughput(emu, "ours, aggregated", producer, {**ours(True), "PRODUCER_COUNT": str(args.count)}, args.count),
            throughput(emu, "peer: aws-kinesis-agg + AWS SDK v3 (Node.js)", peer_node, {}, args.peer_agg_count,
                       parse_stdout=True),
        ]
    finally:
        emu.stop()
    node = rows[-1]["rate"]
    print("\n### Producer throughput (ferrokinesis 0.7.0, plain HTTP, ~100-byte DataMessages, 2-shard stream)\n")
    print("| producer | records | user records/s | CPU-s per million | peak RSS MiB | vs Node.js |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['records']:,} | {r['rate']:,.0f} | {r['cpu_per_m']:.2f} | {r['rss_mib']:.1f} | {r['rate'] / node:.1f}x |")
    sys.stdout.flush()


def cpu_limit_section(args, producer, peer_node):
    """Each producer alone in a control group with the same share of one CPU, the emulator
    outside it: the rates then compare what each does with the same CPU, not what the emulator
    lets through."""
    global FERROKINESIS
    FERROKINESIS = args.ferrokinesis
    kind = "ferrokinesis" if args.ferrokinesis else "kinesalite"
    emu = Emulator(kind)
    share = args.cpu_limit
    try:
        rows = [
            throughput(emu, "ours, aggregated", producer, {**ours(True), "PRODUCER_COUNT": str(args.limited_count)},
                       args.limited_count, cpu_fraction=share),
            throughput(emu, "peer: aws-kinesis-agg + AWS SDK v3 (Node.js)", peer_node, {}, args.limited_count // 5,
                       parse_stdout=True, cpu_fraction=share),
        ]
    finally:
        emu.stop()
    node = rows[-1]["rate"]
    print(f"\n### Producer throughput at {share:g} of a CPU each ({kind}, plain HTTP, ~100-byte DataMessages, 2-shard stream)\n")
    print("| producer | records | user records/s | CPU-s per million | peak RSS MiB | vs Node.js |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['records']:,} | {r['rate']:,.0f} | {r['cpu_per_m']:.2f} | {r['rss_mib']:.1f} | {r['rate'] / node:.1f}x |")
    sys.stdout.flush()


def throughput_sections(args, producer, peer_rust, peer_node, peer_kpl, kpl_version):
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
        print(f"| {r['name']} | {r['records']:,} | {r['rate']:,.0f} | {r['cpu_per_m']:.2f} | {r['rss_mib']:.1f} | {r['rate'] / best_peer:.1f}x |")
    sys.stdout.flush()

    node_plain = rows[-1]["rate"]
    tls = TlsKinesalite()
    try:
        tls_rows = [
            throughput(tls, "ours, aggregated, TLS", producer,
                       {**ours(True), "PRODUCER_COUNT": str(args.tls_count), "SSL_CERT_FILE": tls.ca_bundle},
                       args.tls_count),
            throughput(tls, "peer: aws-kinesis-agg + AWS SDK v3 (Node.js), TLS", peer_node,
                       {"NODE_EXTRA_CA_CERTS": tls.ca_bundle}, args.peer_agg_count, parse_stdout=True),
        ]
        if not args.no_kpl:
            tls_rows.append(throughput(
                tls, f"peer: KPL {kpl_version} (Java library + native daemon)", peer_kpl,
                {"KINESIS_HOST": "127.0.0.1", "KINESIS_PORT": str(tls.port), "SOURCE": "bench",
                 "RATE_LIMIT": "100000"},
                args.kpl_count, parse_stdout=True))
    finally:
        tls.stop()
    node = tls_rows[1]["rate"]
    kpl = tls_rows[2]["rate"] if len(tls_rows) > 2 else float("nan")
    print("\n### Producer throughput over TLS (kinesalite serving HTTPS, ~100-byte DataMessages, 2-shard stream)\n")
    print("| producer | records | user records/s | CPU-s per million | peak RSS MiB | vs Node.js | vs KPL |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in tls_rows:
        print(f"| {r['name']} | {r['records']:,} | {r['rate']:,.0f} | {r['cpu_per_m']:.2f} | {r['rss_mib']:.1f} | {r['rate'] / node:.1f}x | {r['rate'] / kpl:.1f}x |")
    print(f"\nours, aggregated: {rows[0]['rate'] / node_plain:.1f}x the Node.js peer over plain HTTP, "
          f"{tls_rows[0]['rate'] / node:.1f}x over TLS", file=sys.stderr)
    sys.stdout.flush()


def end_to_end_section(args):
    print(f"\n### End to end (kinesis-mock 0.6.2, {args.latency_rate} msg/s for {args.latency_seconds} s; "
          "polling: GetRecords 200 ms apart when idle; fan-out: kinesis-mock pushes about once a second)\n")
    print("| consumer mode | retrieval | aggregation | received / sent | latency p50 ms | latency p99 ms | producer peak RSS MiB | consumer peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    runs = ((False, True, "polling"), (False, False, "polling"), (True, True, "polling"),
            (False, True, "fanout"), (False, False, "fanout"), (True, True, "fanout"))
    for leased, aggregated, retrieval in runs:
        e = end_to_end(args.latency_rate, args.latency_seconds, aggregated, leased, retrieval)
        print(f"| {'leased' if leased else 'polling'} | {retrieval} | {'on' if aggregated else 'off'} | {e['received']:,} / {e['count']:,} | {e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['producer_rss_mib']:.1f} | {e['consumer_rss_mib']:.1f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

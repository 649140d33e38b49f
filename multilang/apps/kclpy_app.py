#!/usr/bin/env python3
"""A record processor on the real amazon-kclpy (its v3 API), for consumer/tests/multilang.rs.

Writes one line to standard error per event ("processed SHARD SEQUENCE SUB DATA",
"initialized SHARD SEQUENCE", "empty batch SHARD", "shutdown requested SHARD", ...), which the daemon forwards to
its log, and checkpoints after every batch (a checkpoint with no sequence number: the last
record delivered). A record whose data starts with "crash-once", "hang-once" or
"garbage-once" makes it exit, hang or write a line that is not the protocol, the first time
only (a marker file in $MULTILANG_MARKERS remembers it). With MULTILANG_QUIET set (the
benchmark, consumer/examples/multilang_bench.rs) it writes one line per batch instead,
"batch SHARD COUNT", and has no faults.
"""
import os
import sys
import time

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor


QUIET = bool(os.environ.get("MULTILANG_QUIET"))


def log(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def first_time(data):
    marker = os.path.join(os.environ["MULTILANG_MARKERS"], data)
    if os.path.exists(marker):
        return False
    with open(marker, "w"):
        pass
    return True


class App(processor.RecordProcessorBase):
    def __init__(self):
        self.shard = None

    def initialize(self, initialize_input):
        self.shard = initialize_input.shard_id
        log("initialized {} {}".format(self.shard, initialize_input.sequence_number))

    def process_records(self, process_records_input):
        if QUIET:
            log("batch {} {}".format(self.shard, len(process_records_input.records)))
            process_records_input.checkpointer.checkpoint()
            return
        if not process_records_input.records:
            log("empty batch " + self.shard)
        for record in process_records_input.records:
            data = record.binary_data.decode("utf-8", "replace")
            if data.startswith("crash-once") and first_time(data):
                log("crashing on " + data)
                os._exit(3)
            if data.startswith("hang-once") and first_time(data):
                log("hanging on " + data)
                time.sleep(3600)
            if data.startswith("garbage-once") and first_time(data):
                sys.stdout.write("this is not the protocol\n")
                sys.stdout.flush()
            log("processed {} {} {} {}".format(
                self.shard, record.sequence_number, record.sub_sequence_number, data))
        process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input):
        log("lease lost " + self.shard)

    def shard_ended(self, shard_ended_input):
        shard_ended_input.checkpointer.checkpoint()
        log("shard ended " + self.shard)

    def shutdown_requested(self, shutdown_requested_input):
        shutdown_requested_input.checkpointer.checkpoint()
        log("shutdown requested " + self.shard)


if __name__ == "__main__":
    kcl.KCLProcess(App()).run()

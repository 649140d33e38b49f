// A record processor on the real Node.js KCL (npm aws-kcl), for consumer/tests/multilang.rs.
// Writes one line to standard error per event ("processed SHARD SEQUENCE SUB DATA", ...), which
// the daemon forwards to its log, and checkpoints after every batch at its last record's
// sequence number (as the library's sample does).
'use strict';

const path = require('path');
const kcl = require(path.join(__dirname, '..', 'node_modules', 'aws-kcl'));

function log(line) {
  process.stderr.write(line + '\n');
}

function processor() {
  let shard;
  return {
    initialize(input, done) {
      shard = input.shardId;
      log(`initialized ${shard} ${input.sequenceNumber}`);
      done();
    },
    processRecords(input, done) {
      let last = null;
      for (const record of input.records) {
        const data = Buffer.from(record.data, 'base64').toString();
        log(`processed ${shard} ${record.sequenceNumber} ${record.subSequenceNumber} ${data}`);
        last = record.sequenceNumber;
      }
      if (last === null) {
        done();
        return;
      }
      input.checkpointer.checkpoint(last, (err) => {
        if (err) {
          log(`checkpoint failed ${shard} ${err}`);
        }
        done();
      });
    },
    leaseLost(input, done) {
      log(`lease lost ${shard}`);
      done();
    },
    shardEnded(input, done) {
      input.checkpointer.checkpoint((err) => {
        log(`shard ended ${shard} ${err || ''}`);
        done();
      });
    },
    shutdownRequested(input, done) {
      input.checkpointer.checkpoint((err) => {
        log(`shutdown requested ${shard} ${err || ''}`);
        done();
      });
    },
  };
}

kcl(processor()).run();

// Benchmark peer: sends COUNT ~100-byte DataMessages to STREAM_NAME with the official
// aws-kinesis-agg RecordAggregator (aggregates up to AGG_BYTES) and the AWS SDK v3's
// PutRecords (up to 500 records / 5 MiB a call, CONCURRENCY calls at once), re-sending failed
// entries. Endpoint, region and credentials come from the standard AWS environment variables;
// over HTTPS, Node.js's NODE_EXTRA_CA_CERTS names a CA to trust besides the usual ones.
// Prints one JSON line: {"peer":"node-agg","acknowledged":N,"seconds":S}.
'use strict';
const { KinesisClient, PutRecordsCommand } = require('@aws-sdk/client-kinesis');
const agg = require('aws-kinesis-agg');
const crypto = require('crypto');

const stream = process.env.STREAM_NAME;
const count = parseInt(process.env.COUNT || '100000', 10);
const concurrency = parseInt(process.env.CONCURRENCY || '8', 10);
const aggBytes = parseInt(process.env.AGG_BYTES || '51200', 10);
// The Kinesis client defaults to HTTP/2, which the local emulators do not speak; real AWS
// takes HTTP/1.1 for PutRecords as well.
const { NodeHttpHandler } = require('@smithy/node-http-handler');
const http = require('http');
const https = require('https');
const client = new KinesisClient({
  requestHandler: new NodeHttpHandler({
    httpAgent: new http.Agent({ keepAlive: true, maxSockets: 64 }),
    httpsAgent: new https.Agent({ keepAlive: true, maxSockets: 64 }),
  }),
});

function message() {
  return Buffer.from(JSON.stringify({
    Id: crypto.randomUUID(),
    CreatedOn: new Date().toISOString(),
    Source: 'bench',
  }));
}

async function putAll(entries) {
  let pending = entries;
  for (let attempt = 0; pending.length > 0; attempt++) {
    const out = await client.send(new PutRecordsCommand({ StreamName: stream, Records: pending }));
    pending = pending.filter((_, i) => out.Records[i].ErrorCode);
    if (pending.length > 0) await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
  }
}

async function main() {
  const started = process.hrtime.bigint();
  const aggregates = [];
  let aggregator = new agg.RecordAggregator();
  let userRecords = 0;
  const inFlight = new Set();
  let batch = [];
  let batchBytes = 0;

  const flushBatch = async () => {
    if (batch.length === 0) return;
    const entries = batch;
    batch = [];
    batchBytes = 0;
    const p = putAll(entries).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= concurrency) await Promise.race(inFlight);
  };
  const seal = async () => {
    if (aggregator.length() === 0) return;
    const built = aggregator.build();
    const entry = { PartitionKey: built.partitionKey, Data: built.data };
    if (built.ExplicitHashKey) entry.ExplicitHashKey = built.ExplicitHashKey;
    if (batch.length === 500 || batchBytes + built.data.length > 5 * 1024 * 1024) await flushBatch();
    batch.push(entry);
    batchBytes += built.data.length + built.partitionKey.length;
    aggregator = new agg.RecordAggregator();
  };

  for (let i = 0; i < count; i++) {
    const data = message();
    const record = { partitionKey: crypto.randomUUID(), data };
    if (aggregator.length() > 0 && aggregator.calculateUserRecordSize(record) + aggregator.totalBytes > aggBytes) {
      await seal();
    }
    aggregator.addUserRecord(record);
    userRecords++;
  }
  await seal();
  await flushBatch();
  await Promise.all(inFlight);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(JSON.stringify({ peer: 'node-agg', acknowledged: userRecords, seconds }) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

// Bridges the official aws-kinesis-agg library (npm) into the Rust interoperability tests.
//   node kpl_interop.js aggregate    < [{partitionKey, data}]            > {partitionKey, explicitHashKey?, data}
//   node kpl_interop.js deaggregate  < [{partitionKey, sequenceNumber, data}] > [{partitionKey, subSequenceNumber, data}]
// `data` is base64 everywhere. The library is resolved from emulators/node_modules.
'use strict';
const path = require('path');
const modules = process.env.EMULATORS_MODULES || path.join(__dirname, '../../../emulators/node_modules');
const agg = require(path.join(modules, 'aws-kinesis-agg'));

const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const mode = process.argv[2];

if (mode === 'aggregate') {
  const aggregator = new agg.RecordAggregator();
  for (const r of input) {
    aggregator.addUserRecord({ partitionKey: r.partitionKey, data: Buffer.from(r.data, 'base64') });
  }
  const built = aggregator.build();
  process.stdout.write(JSON.stringify({
    partitionKey: built.partitionKey,
    explicitHashKey: built.ExplicitHashKey,
    data: Buffer.from(built.data).toString('base64'),
  }));
} else if (mode === 'deaggregate') {
  const out = [];
  for (const record of input) {
    agg.deaggregateSync(record, true, (err, users) => {
      if (err) {
        console.error('deaggregation failed: ' + err);
        process.exit(1);
      }
      for (const u of users) {
        out.push({ partitionKey: u.partitionKey, subSequenceNumber: u.subSequenceNumber, data: u.data });
      }
    });
  }
  process.stdout.write(JSON.stringify(out));
} else {
  console.error('usage: kpl_interop.js aggregate|deaggregate < input.json');
  process.exit(2);
}

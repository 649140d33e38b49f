// Starts kinesalite (emulators/node_modules) over HTTPS with the key and certificate given, for
// the TLS rows of bench/run.py. Its own --ssl flag serves a built-in certificate that names the
// host "kinesalite" and expired in 2018, which no verifying client accepts.
//   KINESALITE_PORT=4567 TLS_KEY=server.key TLS_CERT=server.pem node bench/kinesalite-tls.js
'use strict';
const fs = require('fs');
const path = require('path');
const modules = process.env.EMULATORS_MODULES || path.join(__dirname, '../emulators/node_modules');
const kinesalite = require(path.join(modules, 'kinesalite'));

const server = kinesalite({
  ssl: true,
  key: fs.readFileSync(process.env.TLS_KEY),
  cert: fs.readFileSync(process.env.TLS_CERT),
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
});
server.listen(parseInt(process.env.KINESALITE_PORT, 10), '127.0.0.1', () => {
  console.log('kinesalite listening over HTTPS on port ' + server.address().port);
});

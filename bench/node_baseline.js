'use strict';
// The Node.js baseline for the benchmark: what the script tcptunnel replaces does, and no more.
// Usage: node node_baseline.js LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST]
// Each client gets a new upstream connection; bytes are piped both ways; an error on either side
// destroys the other; the client's address is logged when it connects and when it closes.
const net = require('net');

const [localPort, remoteHost, remotePort, bindHost = '127.0.0.1'] = process.argv.slice(2);
if (!localPort || !remoteHost || !remotePort) {
  console.error('usage: node node_baseline.js LOCAL_PORT REMOTE_HOST REMOTE_PORT [BIND_HOST]');
  process.exit(1);
}

const server = net.createServer((client) => {
  const peer = `${client.remoteAddress}:${client.remotePort}`;
  console.error(`connection from ${peer}`);
  const upstream = net.connect({ host: remoteHost, port: Number(remotePort) });

  client.pipe(upstream);
  upstream.pipe(client);

  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  client.on('close', () => console.error(`closed ${peer}`));
});

server.listen(Number(localPort), bindHost, () => {
  console.log(`Forwarding ${bindHost}:${localPort} \u2192 ${remoteHost}:${remotePort}`);
});

// Memory check: sends COUNT requests, each with a distinct valid HS256 token, over CONNS
// keep-alive connections. node bench/flood.js URL SECRET COUNT CONNS [FIRST]
// (tokens FIRST..FIRST+COUNT, so successive runs never repeat a token)
const http = require('http');
const path = require('path');
const crypto = require('crypto');
const [url, secret, countArg, connsArg, firstArg] = process.argv.slice(2);
const first = Number(firstArg || 0);
const count = Number(countArg);
const conns = Number(connsArg || 32);
const agent = new http.Agent({ keepAlive: true, maxSockets: conns });
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const head = b64({ alg: 'HS256', typ: 'JWT', kid: 'hs' });
const exp = Math.floor(Date.now() / 1000) + 7200;
function token(i) {
  const body = b64({ sub: 'u' + i, iss: 'authgate', aud: 'apps', exp, jti: 'f' + i });
  const sig = crypto.createHmac('sha256', secret).update(head + '.' + body).digest('base64url');
  return head + '.' + body + '.' + sig;
}
let next = 0, done = 0, failed = 0;
function one() {
  if (next >= count) return;
  const i = first + next++;
  const req = http.get(url, { agent, headers: { authorization: 'Bearer ' + token(i) } }, (res) => {
    if (res.statusCode !== 200) failed++;
    res.resume();
    res.on('end', () => { done++; if (done === count) finish(); else one(); });
  });
  req.on('error', () => { failed++; done++; if (done === count) finish(); else one(); });
}
function finish() {
  console.log(JSON.stringify({ sent: count, failed }));
  agent.destroy();
}
for (let c = 0; c < conns; c++) one();

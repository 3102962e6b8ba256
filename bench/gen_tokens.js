// Test-only tokens for the benchmark: node bench/gen_tokens.js OUT_DIR HS_SECRET RS_PEM [N]
// Writes hs256.txt, rs256.txt (one token each), rs256-distinct.txt (N tokens, distinct jti)
// and bad.txt (a token with a wrong signature).
const fs = require('fs');
const path = require('path');
const jwt = require(path.join(__dirname, '..', 'tests', 'node', 'node_modules', 'jsonwebtoken'));
const [out, secret, pemFile, nArg] = process.argv.slice(2);
const pem = fs.readFileSync(pemFile);
const n = Number(nArg || 20000);
const claims = { sub: 'alice', roles: ['admin', 'dev'], iss: 'authgate', aud: 'apps' };
const hs = (c) => jwt.sign(c, secret, { algorithm: 'HS256', keyid: 'hs', expiresIn: '2h' });
const rs = (c) => jwt.sign(c, pem, { algorithm: 'RS256', keyid: 'rs', expiresIn: '2h' });
fs.writeFileSync(path.join(out, 'hs256.txt'), hs(claims) + '\n');
fs.writeFileSync(path.join(out, 'rs256.txt'), rs(claims) + '\n');
const good = hs(claims);
fs.writeFileSync(path.join(out, 'bad.txt'), good.slice(0, -4) + (good.endsWith('AAAA') ? 'BBBB' : 'AAAA') + '\n');
const lines = [];
for (let i = 0; i < n; i++) lines.push(rs({ ...claims, jti: 'bench-' + i }));
fs.writeFileSync(path.join(out, 'rs256-distinct.txt'), lines.join('\n') + '\n');

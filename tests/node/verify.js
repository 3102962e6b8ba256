// node verify.js TOKEN SECRET OPTIONS_JSON -> prints the decoded payload as JSON, or exits 1
// with the error message
const jwt = require('jsonwebtoken');
const [token, secret, options] = process.argv.slice(2);
try {
  console.log(JSON.stringify(jwt.verify(token, secret, JSON.parse(options || '{}'))));
} catch (e) {
  console.error(e.message);
  process.exit(1);
}

// node sign.js SECRET PAYLOAD_JSON OPTIONS_JSON -> prints jwt.sign(payload, secret, options)
const jwt = require('jsonwebtoken');
const [secret, payload, options] = process.argv.slice(2);
console.log(jwt.sign(JSON.parse(payload), secret, JSON.parse(options || '{}')));

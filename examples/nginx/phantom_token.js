// njs (nginx's JavaScript module, Debian package libnginx-mod-http-js): the cache key of a decision.
//
// nginx writes the text of `proxy_cache_key` into every cache file ("KEY: ..."), so keying on
// $http_authorization would put the raw opaque token on disk. This key is a SHA-256 of everything the decision
// depends on: the original method, host and URI, and every Authorization header the client sent (two headers
// make a different key, so they can never hit an entry that one header made; the decision service answers them
// 400). Only this hex digest reaches the disk.
const crypto = require('crypto');

function decisionKey(r) {
    const authorization = r.rawHeadersIn
        .filter((header) => header[0].toLowerCase() === 'authorization')
        .map((header) => header[1]);
    return crypto.createHash('sha256')
        .update([r.variables.request_method, r.variables.host, r.variables.request_uri]
            .concat(authorization).join('\n'))
        .digest('hex');
}

export default { decisionKey };

// njs (nginx's JavaScript module, Debian package libnginx-mod-http-js): the cache key of a decision.
//
// nginx writes the text of `proxy_cache_key` into every cache file ("KEY: ..."), so keying on
// $http_authorization would put the raw opaque token on disk. This key is a SHA-256 of everything the decision
// depends on: the original method, scheme, host and URI, and the Authorization header (nginx itself refuses a request
// with two: 400). Only this hex digest reaches the disk.
//
// One template string and one hash: the earlier version (filtering r.rawHeadersIn, then an array join) cost nginx
// 18,000 more instructions a request (bench/nginx_instructions.py).
const crypto = require('crypto');

function decisionKey(r) {
    const v = r.variables;
    return crypto.createHash('sha256')
        .update(`${v.request_method}\n${v.scheme}\n${v.http_host || ''}\n${v.request_uri}\n${r.headersIn.Authorization || ''}`)
        .digest('hex');
}

export default { decisionKey };

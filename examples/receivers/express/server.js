// An Express receiver for Dihya webhooks that refuses forged, stale and replayed deliveries.
//
// What the Python receiver SDK does, with Node's crypto only:
//   1. the Standard Webhooks signature: webhook-signature holds "v1,<base64 HMAC-SHA256>" of
//      "{webhook-id}.{webhook-timestamp}.{raw body}", one per secret Dihya signs with;
//   2. webhook-timestamp within 5 minutes of now, both ways;
//   3. the nonce in the signed body (delivery.nonce) not seen before, and delivery.timestamp
//      equal to webhook-timestamp.
//
//   npm install
//   DIHYA_WEBHOOK_SECRET=whsec_... node server.js          # PORT=8000, HOST=127.0.0.1
//
// During a secret rotation, set DIHYA_WEBHOOK_SECRET to the new secret and
// DIHYA_WEBHOOK_PREVIOUS_SECRET to the old one until the overlap window ends.
'use strict';
const crypto = require('node:crypto');
const express = require('express');

const TOLERANCE_SECONDS = 5 * 60;
// The current secret, then the previous one while a rotation's overlap lasts.
const SECRETS = [process.env.DIHYA_WEBHOOK_SECRET, process.env.DIHYA_WEBHOOK_PREVIOUS_SECRET]
  .filter(Boolean);
if (!process.env.DIHYA_WEBHOOK_SECRET) {
  console.error('set DIHYA_WEBHOOK_SECRET');
  process.exit(1);
}

// Standard Webhooks keys: a "whsec_<base64>" secret is the decoded bytes; a free-form secret
// (one you chose yourself) is its UTF-8 bytes, as Dihya signs with it.
function hmacKey(secret) {
  const rest = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : null;
  if (rest && /^[A-Za-z0-9+/]+={0,2}$/.test(rest)) {
    const key = Buffer.from(rest, 'base64');
    if (key.length > 0) return key;
  }
  return Buffer.from(secret, 'utf8');
}
const KEYS = SECRETS.map(hmacKey);

// Remembers each nonce until its delivery expires. It lives in this process: with several
// replicas, use a shared store instead (e.g. Redis `SET nonce 1 NX EXAT expiresAt`), or a replay
// sent to another replica gets through.
const seenNonces = new Map(); // nonce -> expiry (unix seconds)
function checkAndRememberNonce(nonce, expiresAt, now) {
  if (seenNonces.size > 1024) {
    for (const [known, expiry] of seenNonces) if (expiry <= now) seenNonces.delete(known);
  }
  const expiry = seenNonces.get(nonce);
  if (expiry !== undefined && expiry > now) return false;
  seenNonces.set(nonce, expiresAt);
  return true;
}

class Rejected extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

function sameString(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// Returns the parsed delivery, or throws Rejected (401: not from Dihya; 400: anything else).
function verify(rawBody, headers, now = Date.now() / 1000) {
  const id = headers['webhook-id'];
  const stamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !stamp || !signatures) {
    throw new Rejected(400, 'missing webhook-id, webhook-timestamp or webhook-signature');
  }
  if (!/^\d+$/.test(stamp)) throw new Rejected(400, 'webhook-timestamp is not an integer');

  const signed = Buffer.concat([Buffer.from(`${id}.${stamp}.`), rawBody]);
  const expected = KEYS.map(
    (key) => crypto.createHmac('sha256', key).update(signed).digest('base64'));
  const presented = signatures.split(' ')
    .filter((s) => s.startsWith('v1,')).map((s) => s.slice(3));
  if (!presented.some((p) => expected.some((e) => sameString(p, e)))) {
    throw new Rejected(401, 'no valid v1 signature for the configured secret(s)');
  }

  const timestamp = Number(stamp);
  if (Math.abs(now - timestamp) > TOLERANCE_SECONDS) {
    throw new Rejected(400, `timestamp ${timestamp} is more than ${TOLERANCE_SECONDS}s from now`);
  }

  let payload;
  try {
    payload = JSON.parse(rawBody.toString('utf8'));
  } catch {
    throw new Rejected(400, 'the body is not JSON');
  }
  const delivery = payload && payload.delivery;
  if (!delivery || typeof delivery.nonce !== 'string') {
    throw new Rejected(400, 'the body is not a Dihya delivery (delivery.nonce)');
  }
  if (delivery.timestamp !== timestamp) {
    throw new Rejected(400, 'delivery.timestamp does not match webhook-timestamp');
  }
  if (!checkAndRememberNonce(`${id}:${delivery.nonce}`, timestamp + TOLERANCE_SECONDS, now)) {
    throw new Rejected(400, `nonce ${delivery.nonce} was already seen`);
  }
  return payload;
}

const app = express();

// express.raw: the signature covers the exact bytes, so never let a JSON parser touch them first.
app.post('/webhook', express.raw({ type: () => true, limit: '1mb' }), (req, res) => {
  let payload;
  try {
    payload = verify(Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0), req.headers);
  } catch (err) {
    if (err instanceof Rejected) return res.status(err.status).json({ error: err.message });
    throw err;
  }
  // Your work goes here, idempotently: a retry is signed anew (new nonce) but carries the same
  // payload.id (= webhook-id), so you may see an event you already handled.
  res.status(200).json({ received: payload.id });
});

module.exports = { app, verify };

if (require.main === module) {
  const port = Number(process.env.PORT || 8000);
  const host = process.env.HOST || '127.0.0.1';
  app.listen(port, host, () => console.log(`listening on http://${host}:${port}`));
}

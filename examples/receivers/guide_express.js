// The guide's Express receiver, kept as it was: it checks X-Dihya-Signature and nothing else.
//
// It still works unchanged against Dihya — but it accepts a captured delivery replayed at any
// time, and during a secret rotation only with the new secret. Prefer express/server.js. The one
// change from the guide: the secret comes from the environment instead of being written here.
//
//   (cd express && npm install)
//   DIHYA_WEBHOOK_SECRET=... NODE_PATH=express/node_modules node guide_express.js   # PORT=8000
'use strict';
const crypto = require('crypto');
const express = require('express');

const app = express();
const SECRET = process.env.DIHYA_WEBHOOK_SECRET;

app.post('/webhook', express.raw({ type: 'application/json' }), (req, res) => {
  const signature = req.get('X-Dihya-Signature') || '';
  const expected = crypto.createHmac('sha256', SECRET).update(req.body).digest('hex');
  if (signature.length !== expected.length ||
      !crypto.timingSafeEqual(Buffer.from(signature), Buffer.from(expected))) {
    return res.sendStatus(401);
  }
  const event = JSON.parse(req.body);
  console.log('received', event.event);
  res.sendStatus(200);
});

app.listen(Number(process.env.PORT || 8000), process.env.HOST || '127.0.0.1');

// Drives the published `wechat-api` npm package, unmodified, against wxtoken:
// its API host (`endpoint`) points at wxtoken and its "appsecret" is a wxtoken
// client key. Run by tests/it/sdk.rs, which reads the JSON lines this prints
// and answers on stdin when it has rotated the token behind the SDK's back.
//
// Usage: node wechat_api.js <wxtoken base url> <appid> <client key> <media file>
'use strict';

const fs = require('fs');
const readline = require('readline');
const WechatAPI = require('wechat-api');

const [base, appid, key, mediaFile] = process.argv.slice(2);
const api = new WechatAPI(appid, key);
// The SDK's API host: setEndpoint() only takes an https domain, so the
// field it sets is set directly to wxtoken's (plain-HTTP, loopback) address.
api.endpoint = base;

const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once('line', resolve));
const call = (method, ...args) =>
  new Promise((resolve) => {
    api[method](...args, (err, data) => {
      resolve({ err: err ? { name: err.name, code: err.code, message: err.message } : null, data });
    });
  });
const report = (step, value) => console.log(JSON.stringify({ step, ...value }));

(async () => {
  const user = await call('getUser', { openid: 'o-sdk-user', lang: 'zh_CN' });
  report('user', { err: user.err, openid: user.data && user.data.openid, token: api.token && api.token.accessToken });

  const sent = await call('sendText', 'o-sdk-user', 'hello from wechat-api');
  report('message', { err: sent.err, errcode: sent.data && sent.data.errcode });

  const uploaded = await call('uploadMedia', mediaFile, 'image');
  const mediaId = uploaded.data && uploaded.data.media_id;
  report('upload', { err: uploaded.err, media_id: mediaId });
  const media = await call('getMedia', mediaId);
  const same = Buffer.isBuffer(media.data) && media.data.equals(fs.readFileSync(mediaFile));
  report('download', { err: media.err, same, bytes: media.data ? media.data.length : 0 });

  // The test rotates the token where the SDK cannot see it, then sends an
  // openid to look up with the token the SDK still holds; `done` ends.
  for (;;) {
    report('waiting', {});
    const openid = (await next()).trim();
    if (openid === 'done') break;
    const again = await call('getUser', { openid, lang: 'zh_CN' });
    report('after_rotation', { err: again.err, openid: again.data && again.data.openid, token: api.token && api.token.accessToken });
  }
  lines.close();
})().catch((e) => {
  report('crash', { message: String(e && e.stack) });
  process.exit(1);
});

// The peer page in a real browser (Debian's headless Chromium) against a
// real hub: chat between two people, support and escalation, errors,
// reconnection (dropped network and hub restart), keyboard-only use and an
// axe-core accessibility check. Screenshots go to docs/screenshots/ when
// HEARTH_SCREENSHOTS=1, else to a temporary directory.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { Hub } from './lib/hub.js';
import { startHubAndBrowser, screenshotsDir, openPeer, online, myName, joinRoom, say, texts, axe, serious, openStaff, focused, tabTo } from './lib/browser.js';

const SHOTS = screenshotsDir();

const CRISIS = 'i have all the pills ready and im taking them tonight when everyone is asleep. goodbye';

let hub;
let browser;
let clinician;
const pages = [];

async function peer(opts) {
  const page = await openPeer(browser, hub, opts);
  pages.push(page);
  return page;
}

before(async () => {
  ({ hub, browser } = await startHubAndBrowser());
  clinician = await openStaff(browser, hub, hub.token('clinician', 'Dr Rowan'));
});

after(async () => {
  for (const p of pages) {
    assert.deepEqual(p.problems, [], 'the page logged no errors');
  }
  await browser?.close();
  await hub?.close();
});

test('the room list shows rooms with live counts, help and a clean accessibility check', async () => {
  const page = await peer();
  const rooms = page.locator('#room-list .room');
  assert.equal(await rooms.count(), 3);
  const all = (await rooms.allTextContents()).join('\n');
  for (const t of ['Bereavement', 'Substance use', 'Anxiety', '0 of 30 here']) assert.match(all, new RegExp(t));
  assert.match(await page.locator('#me-line').textContent(), /your name here is “.+”/);

  // Always-visible urgent help, with resources before any support event.
  const help = page.getByRole('button', { name: 'Need urgent help?' });
  assert.ok(await help.isVisible());
  await help.click();
  assert.equal(await help.getAttribute('aria-expanded'), 'true');
  assert.match(await page.locator('#help').textContent(), /findahelpline\.com/);
  assert.match(await page.locator('#help').textContent(), /999 or 112/, 'en-GB gets the UK emergency number');
  await page.getByRole('button', { name: 'Close' }).click();
  assert.ok(await page.locator('#help').isHidden());

  // Headers: strict CSP, nosniff, content types.
  const res = await page.request.get(hub.url + '/');
  const h = res.headers();
  assert.match(h['content-type'], /^text\/html/);
  assert.match(h['content-security-policy'], /script-src 'self'/);
  assert.doesNotMatch(h['content-security-policy'], /unsafe-inline/);
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.match((await page.request.get(hub.url + '/static/app.js')).headers()['content-type'], /^text\/javascript/);
  assert.match((await page.request.get(hub.url + '/static/app.css')).headers()['content-type'], /^text\/css/);
  const g = await (await page.request.get(hub.url + '/api/rooms/anxiety/guidelines')).json();
  assert.match(g.guidelines, /Welcome/);
  assert.equal((await page.request.get(hub.url + '/api/rooms/nope/guidelines')).status(), 404);

  assert.deepEqual(serious(await axe(page)), [], 'no serious or critical axe violations on the room list');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(SHOTS, 'peer-rooms.png'), animations: 'disabled' });
});

test('two people chat in a room: names, own messages, staff, presence, typing, report', async () => {
  const a = await peer();
  const b = await peer({ locale: 'en-US' });
  const nameA = await myName(a);
  const nameB = await myName(b);

  await joinRoom(a, 'Anxiety');
  // Guidelines came first; now the chat.
  assert.equal(await a.locator('#chat-title').textContent(), 'Anxiety');
  await joinRoom(b, 'Anxiety');
  await a.locator('#presence-summary', { hasText: '2 people here' }).waitFor();

  await say(a, 'Has anyone tried box breathing?');
  const fromA = b.locator('#messages li.msg', { hasText: 'Has anyone tried box breathing?' });
  await fromA.waitFor();
  assert.equal(await fromA.getAttribute('class'), 'msg fresh', 'not own on the other side');
  assert.match(await fromA.locator('.who').textContent(), new RegExp(nameA));
  assert.match(await a.locator('#messages li.own .who').first().textContent(), /\(you\)/);

  // Typing indicator.
  await b.locator('#text').pressSequentially('Yes, it', { delay: 20 });
  await a.locator('#typing', { hasText: `${nameB} is typing…` }).waitFor();
  await b.locator('#text').fill('Yes, it helps me before bed. In for four, hold for four.');
  await b.locator('#text').press('Enter');
  await a.locator('#messages li.msg', { hasText: 'In for four' }).waitFor();

  // A clinician's announcement is marked as staff.
  const ann = await clinician.request({ type: 'announce', room: 'anxiety', text: 'Welcome, both. I am here if you need anything.' });
  assert.equal(ann.type, 'ok', JSON.stringify(ann));
  const staffMsg = a.locator('#messages li.msg.staff', { hasText: 'I am here' });
  await staffMsg.waitFor();
  assert.equal(await staffMsg.locator('.role').textContent(), 'Clinician');

  // Report, with a reason; the author is not told.
  await fromA.getByRole('button', { name: `Report message from ${nameA}` }).click();
  await b.getByRole('dialog').waitFor();
  await b.getByLabel('Spam or advertising').check();
  await b.getByRole('button', { name: 'Send report' }).click();
  await b.locator('#notice', { hasText: 'A moderator will look at it' }).waitFor();
  const reports = await (
    await fetch(hub.url + '/api/staff/reports', { headers: { authorization: `Bearer ${hub.token('moderator', 'Mo')}` } })
  ).json();
  assert.ok(reports.reports.some((r) => r.reason === 'spam' && r.room === 'anxiety'), JSON.stringify(reports));
  assert.ok(await a.locator('#notice').isHidden(), 'the author sees nothing');

  // Live member counts on the room list.
  await b.getByRole('button', { name: 'Back to all rooms' }).click();
  await b.locator('.room[data-room="anxiety"]', { hasText: '2 of 30 here' }).waitFor();
  await b.locator('.room[data-room="anxiety"]', { hasText: "You're in" }).waitFor();

  await a.locator('#text').fill('Thank you, I will try it tonight');
  await a.locator('#text').press('Enter');
  await a.locator('#messages li.own', { hasText: 'I will try it tonight' }).waitFor();
  await a.locator('#text').fill('Do you count out loud?');
  assert.deepEqual(serious(await axe(a)), [], 'no serious or critical axe violations in the chat');
  await a.screenshot({ path: path.join(SHOTS, 'peer-chat.png'), animations: 'disabled' });

  // Leave: others see presence go.
  await b.locator('.room[data-room="anxiety"]').click();
  await b.getByRole('button', { name: 'Leave room' }).click();
  await b.locator('#view-rooms').waitFor();
  await a.locator('#presence-summary', { hasText: 'Just you here' }).waitFor();
});

test('errors are shown as sentences: blocked content, slow mode countdown; deleted messages go', async () => {
  const a = await peer();
  const b = await peer();
  const nameB = await myName(b);
  await joinRoom(a, 'Substance use');
  await joinRoom(b, 'Substance use');

  await a.locator('#text').fill('text me on 07700 900123');
  await a.locator('#text').press('Enter');
  await a.locator('#notice', { hasText: /contact details/i }).waitFor();
  assert.equal(await a.locator('#text').inputValue(), 'text me on 07700 900123', 'the text is kept to edit');

  assert.equal((await clinician.request({ type: 'slow_mode', room: 'substance-use', seconds: 30 })).type, 'ok');
  await say(a, 'One day at a time');
  await a.locator('#text').fill('and another');
  await a.locator('#text').press('Enter');
  await a.locator('#composer-hint', { hasText: /Slow mode: you can send again in \d+ s/ }).waitFor();
  assert.ok(await a.locator('#send').isDisabled());
  assert.equal((await clinician.request({ type: 'slow_mode', room: 'substance-use', seconds: 0 })).type, 'ok');

  const id = await b.locator('#messages li.msg', { hasText: 'One day at a time' }).getAttribute('data-id');
  assert.equal((await clinician.request({ type: 'delete', room: 'substance-use', message: id })).type, 'ok');
  await b.locator('#messages li.msg', { hasText: 'One day at a time' }).waitFor({ state: 'detached' });
  await a.locator('#messages li.msg', { hasText: 'One day at a time' }).waitFor({ state: 'detached' });

  // Muted until a time, then kicked back to the room list.
  const watched = await clinician.request({ type: 'watch', room: 'substance-use' });
  const peerId = watched.members.find((m) => m.name === nameB).id;
  assert.equal((await clinician.request({ type: 'mute', room: 'substance-use', peer: peerId, seconds: 600 })).type, 'ok');
  await b.locator('#text').fill('can I still talk?');
  await b.locator('#text').press('Enter');
  await b.locator('#composer-hint', { hasText: /You are muted here until/ }).waitFor();
  await b.locator('#notice', { hasText: /muted/ }).waitFor();
  assert.ok(await b.locator('#send').isDisabled());
  assert.equal((await clinician.request({ type: 'kick', room: 'substance-use', peer: peerId })).type, 'ok');
  await b.locator('#view-rooms').waitFor();
  await b.locator('#notice', { hasText: /asked you to leave Substance use/ }).waitFor();
  await clinician.request({ type: 'unwatch', room: 'substance-use' });
});

test('a crisis message brings the support panel to the person and an escalation to the clinician', async () => {
  const page = await peer();
  const name = await myName(page);
  await joinRoom(page, 'Bereavement');
  await page.locator('#text').fill(CRISIS);
  await page.locator('#text').press('Enter');

  const panel = page.getByRole('region', { name: "You're not alone" });
  await panel.waitFor();
  const text = await panel.textContent();
  assert.match(text, /Samaritans/, 'resources for en-GB');
  assert.match(text, /116 123/);
  assert.equal(await panel.getAttribute('role'), 'region', 'a calm region, not an alert');
  assert.ok(await page.locator('#notice').isHidden(), 'no error is shown');
  // Held for a moderator: the person sees that, others do not see it yet.
  await page.locator('#messages li.msg.held', { hasText: 'pills' }).waitFor();
  // The urgent-help panel now shows the same resources.
  await page.getByRole('button', { name: 'Need urgent help?' }).click();
  assert.match(await page.locator('#help').textContent(), /Samaritans/);

  const esc = await clinician.waitFor(`f.type === 'escalation' && f.peer && f.peer.name === ${JSON.stringify(name)}`);
  assert.equal(esc.room, 'bereavement');
  assert.ok(['high', 'imminent'].includes(esc.level), esc.level);
  const ack = await clinician.request({ type: 'ack', escalation: esc.id });
  assert.equal(ack.type, 'ok', JSON.stringify(ack));

  // The clinician opens a care room: the person is invited, reads its
  // guidelines and joins; the clinician's words are marked as staff.
  const care = await clinician.request({ type: 'care', escalation: esc.id });
  assert.equal(care.type, 'ok', JSON.stringify(care));
  const invite = page.getByRole('region', { name: 'A private room, just for you' });
  await invite.waitFor();
  assert.match(await invite.textContent(), /Dr Rowan, a clinician/);
  await page.getByRole('button', { name: 'Join the private room' }).click();
  await page.locator('#view-guidelines').waitFor();
  assert.match(await page.locator('#guidelines-text').textContent(), /private/);
  await page.getByRole('button', { name: /I've read these/ }).click();
  await page.locator('#chat-title', { hasText: 'Private room' }).waitFor();
  assert.equal((await clinician.request({ type: 'join', room: care.id })).type, 'joined');
  assert.equal((await clinician.request({ type: 'send', room: care.id, text: "I'm here with you. Are you safe right now?" })).type, 'ok');
  await page.locator('#messages li.msg.staff', { hasText: 'Are you safe' }).waitFor();
  await say(page, 'not really');
});

test('keyboard only: choose a room, accept the guidelines, join and send', async () => {
  const page = await peer();
  const first = await tabTo(page, () => true);
  assert.match(first.text, /Skip to main content/, 'the skip link comes first');
  const room = await tabTo(page, (f) => f.room === 'substance-use');
  assert.notEqual(room.outline, 'none', 'focus is visible');
  await page.keyboard.press('Enter');
  await page.locator('#view-guidelines').waitFor();
  assert.equal((await focused(page)).id, 'guidelines-title', 'focus moves to the guidelines');
  await tabTo(page, (f) => f.id === 'guidelines-accept');
  await page.keyboard.press('Enter');
  await page.locator('#view-chat').waitFor();
  assert.equal((await focused(page)).id, 'text', 'focus lands in the message box');
  await page.waitForFunction(() => !document.querySelector('#send').disabled);
  await page.keyboard.type('Typed with the keyboard alone');
  await page.keyboard.press('Enter');
  await page.locator('#messages li.own', { hasText: 'Typed with the keyboard alone' }).waitFor();
});

test('a dropped connection resumes and re-joins with since: nothing lost, nothing twice', async () => {
  const a = await peer();
  const b = await peer();
  // b's socket goes through a route the test can cut, like a dropped network.
  let blocked = false;
  let live = null;
  await b.routeWebSocket(/\/ws$/, (ws) => {
    if (blocked) {
      ws.close({ code: 1001, reason: 'network down' });
      return;
    }
    const server = ws.connectToServer();
    live = { ws, server };
  });
  await b.reload();
  await online(b);
  const nameB = await myName(b);
  await joinRoom(a, 'Anxiety');
  await joinRoom(b, 'Anxiety');
  await say(a, 'drop-1');
  await b.locator('#messages li', { hasText: 'drop-1' }).waitFor();

  blocked = true;
  live.server.close();
  live.ws.close({ code: 1001, reason: 'network down' });
  await b.waitForFunction(() => document.documentElement.dataset.conn === 'reconnecting');
  assert.equal(await b.locator('#conn').textContent(), 'Reconnecting…');
  await say(a, 'drop-2');
  await say(a, 'drop-3');
  blocked = false;
  await online(b, 20000);
  await b.locator('#messages li', { hasText: 'drop-3' }).waitFor();
  await say(a, 'drop-4');
  await b.locator('#messages li', { hasText: 'drop-4' }).waitFor();

  const seen = (await texts(b)).filter((t) => t.startsWith('drop-'));
  assert.deepEqual(seen, ['drop-1', 'drop-2', 'drop-3', 'drop-4']);
  assert.equal(await myName(b), nameB, 'the same name after resume');
  assert.equal(await b.locator('#messages li.sys').count(), 0, 'no gap to report');
});

test('after the hub restarts on the same port the pages reconnect: no lost messages on screen, no duplicates', async () => {
  const own = await Hub.start();
  try {
    const local = { url: own.url };
    const a = await openPeer(browser, local);
    const b = await openPeer(browser, local);
    pages.push(a, b);
    await joinRoom(a, 'Anxiety');
    await joinRoom(b, 'Anxiety');
    await say(a, 'before-1');
    await say(b, 'before-2');
    await say(a, 'before-3');
    await b.locator('#messages li', { hasText: 'before-3' }).waitFor();

    const exit = await own.restart();
    assert.deepEqual(exit, { code: 0, signal: null }, 'SIGTERM exits cleanly');
    assert.equal(own.url, local.url, 'same port');
    await Promise.all([online(a, 20000), online(b, 20000)]);
    for (const p of [a, b]) await p.waitForFunction(() => !document.querySelector('#send').disabled, null, { timeout: 10000 });

    await say(b, 'after-1');
    await say(a, 'after-2');
    await a.locator('#messages li', { hasText: 'after-1' }).waitFor();
    await b.locator('#messages li', { hasText: 'after-2' }).waitFor();

    const expected = ['before-1', 'before-2', 'before-3', 'after-1', 'after-2'];
    for (const p of [a, b]) {
      assert.deepEqual(await texts(p), expected);
      // Embedded mode keeps no history across a restart: the page says so.
      assert.match(await p.locator('#messages li.sys').first().textContent(), /could not be recovered|afresh/);
    }
  } finally {
    await own.close();
  }
});


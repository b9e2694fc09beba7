// The staff console (/staff) in a real browser against a real hub, with
// peers on the peer page: escalations with a live countdown (ack, resolve
// with a note), the imminent alert, rooms watched side by side, flags,
// held messages released or deleted, reports, mute and kick with
// confirmation, keyboard-only use and an axe-core check. Screenshots go to
// docs/screenshots/ when HEARTH_SCREENSHOTS=1, else to a temporary directory.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { Hub } from './lib/hub.js';
import { startHubAndBrowser, screenshotsDir, openPeer, openConsole, online, myName, joinRoom, say, axe, serious, LAPTOP, focused, tabTo } from './lib/browser.js';

const SHOTS = screenshotsDir();

// Imminent (held for review, escalated) and high (delivered, flagged).
const CRISIS = 'i have all the pills ready and im taking them tonight when everyone is asleep. goodbye';
const HIGH = 'honestly i want to kill myself';

let hub;
let browser;
let api; // a staff token for the HTTP API
const pages = [];

before(async () => {
  ({ hub, browser } = await startHubAndBrowser());
  api = hub.token('clinician', 'Test API');
});

after(async () => {
  for (const p of pages) {
    assert.deepEqual(p.problems, [], 'the page logged no errors');
  }
  await browser?.close();
  await hub?.close();
});

// Each test starts with an empty escalation queue: what a test leaves open
// is resolved through the staff API.
afterEach(async () => {
  for (const e of (await staffApi('GET', '/api/staff/escalations')).escalations) {
    await staffApi('POST', `/api/staff/escalations/${e.id}/resolve`, { note: 'test cleanup' });
  }
});

async function staffApi(method, route, body) {
  const res = await fetch(hub.url + route, {
    method,
    headers: { authorization: `Bearer ${api}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return res.json();
}

async function peer(room, on = hub) {
  const page = await openPeer(browser, on);
  pages.push(page);
  if (room) await joinRoom(page, room);
  return page;
}

async function staffConsole(role, name, on = hub, opts = {}) {
  const page = await openConsole(browser, on, role, name, opts);
  pages.push(page);
  return page;
}

/** Runs `fn(own)` against a hub of its own, closed afterwards. */
async function withOwnHub(fn) {
  const own = await Hub.start();
  try {
    await fn(own);
  } finally {
    await own.close();
  }
}

/** Ticks the room in the console's Watch picker and waits for its panel. */
async function watch(page, title, id) {
  await page.getByRole('checkbox', { name: title }).check();
  const panel = page.locator(`section.panel[data-room="${id}"]`);
  await panel.locator('.status', { hasText: /people|person/ }).waitFor();
  return panel;
}

async function write(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
}

function escalationOf(page, name) {
  return page.locator('#esc-list li.esc', { hasText: name });
}

test('a crisis message: support for the person, a counting-down escalation for the clinician, acknowledged and resolved with a note', async () => {
  const clin = await staffConsole('clinician', 'Dr Ash');
  assert.match(await clin.locator('#who').textContent(), /Dr Ash · Clinician/);
  const p = await peer('Bereavement');
  const name = await myName(p);
  await write(p, CRISIS);
  await p.getByRole('region', { name: "You're not alone" }).waitFor();

  const esc = escalationOf(clin, name);
  await esc.waitFor();
  const id = await esc.getAttribute('data-id');
  assert.equal(await esc.getAttribute('data-level'), 'imminent');
  assert.equal(await esc.getAttribute('data-state'), 'open');
  assert.match(await esc.locator('h3').textContent(), new RegExp(`Imminent ${name} · Bereavement`));
  assert.match(await esc.locator('.flagged-text').textContent(), /pills/, 'the words that raised it');
  assert.match(await esc.locator('.cats').textContent(), /suicide|overdose/);

  // The countdown runs.
  const countdown = clin.locator(`li.esc[data-id="${id}"] .countdown`);
  const first = await countdown.textContent();
  assert.match(first, /^Acknowledge within [01]:\d\d$/);
  await clin.waitForFunction(
    ([sel, was]) => document.querySelector(sel).textContent !== was,
    [`li.esc[data-id="${id}"] .countdown`, first],
    { timeout: 3000 },
  );
  assert.ok((await countdown.textContent()) < first, 'counts down');

  await esc.getByRole('button', { name: `Acknowledge escalation for ${name}` }).click();
  await clin.locator(`li.esc[data-id="${id}"][data-state="acknowledged"]`).waitFor();
  assert.match(await esc.locator('.state').textContent(), /^Acknowledged by Dr Ash at \d/);
  assert.equal(await countdown.textContent(), 'Acknowledged');
  assert.ok(await clin.locator('#alert').isHidden(), 'the imminent alert goes once acknowledged');

  await esc.getByRole('button', { name: `Resolve escalation for ${name}` }).click();
  const dialog = clin.getByRole('dialog', { name: 'Resolve escalation' });
  await dialog.waitFor();
  await dialog.getByLabel(/Note/).fill('Called the person; they are safe with family tonight.');
  await dialog.getByRole('button', { name: 'Resolve' }).click();
  await esc.waitFor({ state: 'detached' });
  assert.ok(await clin.locator('#esc-empty').isVisible(), 'the queue is empty again');

  const record = await staffApi('GET', `/api/staff/escalations/${id}`);
  assert.equal(record.state, 'resolved');
  assert.equal(record.acknowledged.by.name, 'Dr Ash');
  assert.equal(record.resolved.note, 'Called the person; they are safe with family tonight.');
});

test('a moderator watches two rooms side by side: a flagged message, a held one released, another deleted after confirming', async () => {
  const mod = await staffConsole('moderator', 'Sam');
  const anxiety = await watch(mod, 'Anxiety', 'anxiety');
  const substance = await watch(mod, 'Substance use & recovery', 'substance-use');
  const [ba, bs] = [await anxiety.boundingBox(), await substance.boundingBox()];
  assert.ok(Math.abs(ba.y - bs.y) < 2 && bs.x >= ba.x + ba.width, `side by side: ${JSON.stringify([ba, bs])}`);

  const a = await peer('Anxiety');
  const b = await peer('Substance use');
  const c = await peer('Substance use');
  const nameA = await myName(a);
  const nameB = await myName(b);

  // Delivered and flagged: highlighted with its level and categories.
  await say(a, HIGH);
  const flagged = anxiety.locator('li.msg.flagged', { hasText: 'kill myself' });
  await flagged.waitFor();
  assert.equal(await flagged.getAttribute('data-level'), 'high');
  assert.match(await flagged.locator('.flag-line').textContent(), /^Flagged · High · .*suicide/);

  // Held: only staff see it, with its words; released, it reaches the room.
  await write(b, CRISIS);
  await b.locator('#messages li.msg.held').waitFor();
  const held = substance.locator('li.msg.held', { hasText: 'pills' });
  await held.waitFor();
  assert.match(await held.locator('.flag-line').textContent(), /^Held for review · Imminent/);
  assert.match(await held.locator('.who').textContent(), new RegExp(nameB));
  assert.equal(await c.locator('#messages li.msg', { hasText: 'pills' }).count(), 0, 'not published yet');
  await held.getByRole('button', { name: `Release held message from ${nameB}` }).click();
  await c.locator('#messages li.msg', { hasText: 'pills' }).waitFor();
  await substance.locator('li.msg:not(.held)', { hasText: 'pills' }).waitFor();
  assert.equal(await substance.locator('li.msg.held').count(), 0);
  await b.locator('#messages li.msg:not(.held)', { hasText: 'pills' }).waitFor();

  // Another held message, deleted: a confirmation first; cancelling keeps it.
  await write(b, 'goodbye everyone. ' + CRISIS);
  const held2 = substance.locator('li.msg.held', { hasText: 'goodbye everyone' });
  await held2.waitFor();
  await held2.getByRole('button', { name: `Delete held message from ${nameB}` }).click();
  const confirm = mod.getByRole('dialog', { name: 'Delete this message?' });
  await confirm.waitFor();
  assert.match(await confirm.textContent(), /goodbye everyone/);
  assert.equal(await mod.evaluate(() => document.activeElement.textContent), 'Cancel', 'the safe choice has focus');
  await confirm.getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await held2.count(), 1, 'cancel keeps it');
  await held2.getByRole('button', { name: `Delete held message from ${nameB}` }).click();
  await confirm.getByRole('button', { name: 'Delete message' }).click();
  await held2.waitFor({ state: 'detached' });
  await mod.waitForTimeout(300);
  assert.equal(await c.locator('#messages li.msg', { hasText: 'goodbye everyone' }).count(), 0, 'never published');

  // A moderator who starts watching later still sees what waits for review.
  await write(b, 'still waiting. ' + CRISIS);
  await substance.locator('li.msg.held', { hasText: 'still waiting' }).waitFor();
  const late = await staffConsole('moderator', 'Robin');
  const lateRoom = await watch(late, 'Substance use & recovery', 'substance-use');
  await lateRoom.locator('li.msg.held', { hasText: 'still waiting' }).waitFor();
  assert.equal(await lateRoom.locator('li.msg.held').count(), 1);

  // A delivered message deleted from the console goes for everyone.
  await say(a, 'a message to remove');
  const plain = anxiety.locator('li.msg', { hasText: 'a message to remove' });
  await plain.getByRole('button', { name: `Delete message from ${nameA}` }).click();
  await mod.getByRole('dialog', { name: 'Delete this message?' }).getByRole('button', { name: 'Delete message' }).click();
  await a.locator('#messages li.msg', { hasText: 'a message to remove' }).waitFor({ state: 'detached' });
  await plain.waitFor({ state: 'detached' });
});

test("a peer's report reaches the reports queue, and can be dismissed", async () => {
  const mod = await staffConsole('moderator', 'Kit');
  await watch(mod, 'Anxiety', 'anxiety');
  const a = await peer('Anxiety');
  const b = await peer('Anxiety');
  const nameA = await myName(a);
  const nameB = await myName(b);
  await say(b, 'nobody here would even notice if you left');
  const msg = a.locator('#messages li.msg', { hasText: 'nobody here' });
  await msg.getByRole('button', { name: `Report message from ${nameB}` }).click();
  await a.getByLabel('Harassment or bullying').check();
  await a.getByRole('button', { name: 'Send report' }).click();

  const report = mod.locator('#rep-list li.report', { hasText: 'harassment' });
  await report.waitFor();
  const text = await report.textContent();
  assert.match(text, /Anxiety/);
  assert.match(text, new RegExp(`${nameB}: nobody here would even notice`), 'the reported words, from the room');
  assert.match(text, new RegExp(`Reported by ${nameA}`));
  assert.match(await mod.locator('#rep-count').textContent(), /\(1\)/);
  await report.getByRole('button', { name: 'Show in room' }).click();
  assert.equal(await mod.evaluate(() => document.activeElement.dataset.id), await msg.getAttribute('data-id'));
  await report.getByRole('button', { name: /^Dismiss/ }).click();
  await report.waitFor({ state: 'detached' });
  assert.deepEqual((await staffApi('GET', '/api/staff/reports?room=anxiety')).reports, []);
});

test('mute and kick from the console, with a confirmation for the kick; the person sees each', async () => {
  const mod = await staffConsole('moderator', 'Lee');
  const panel = await watch(mod, 'Bereavement', 'bereavement');
  const p = await peer('Bereavement');
  const name = await myName(p);
  // (Peers from earlier tests may still be in the room.)
  await panel.locator('.people summary').click();
  await panel.locator('.members li', { hasText: name }).waitFor();

  await panel.getByRole('button', { name: `Act on ${name}` }).click();
  const dialog = mod.getByRole('dialog', { name: `${name} in Bereavement` });
  await dialog.waitFor();
  assert.deepEqual(serious(await axe(mod)), [], 'no serious or critical axe violations in the person dialog');
  await dialog.getByLabel('Mute for').selectOption({ label: '10 minutes' });
  await dialog.getByRole('button', { name: 'Mute', exact: true }).click();
  await mod.locator('#notice', { hasText: `${name} is muted in Bereavement for 10 minutes.` }).waitFor();
  await write(p, 'can anyone hear me?');
  await p.locator('#composer-hint', { hasText: /You are muted here until/ }).waitFor();

  // Kick: confirmation first; cancelling does nothing.
  await panel.getByRole('button', { name: `Act on ${name}` }).click();
  await dialog.getByRole('button', { name: 'Kick from this room…' }).click();
  const confirm = mod.getByRole('dialog', { name: `Kick ${name}?` });
  await confirm.waitFor();
  await confirm.getByRole('button', { name: 'Cancel' }).click();
  await mod.waitForTimeout(300);
  assert.ok(await p.locator('#view-chat').isVisible(), 'still in the room');
  await panel.getByRole('button', { name: `Act on ${name}` }).click();
  await dialog.getByRole('button', { name: 'Kick from this room…' }).click();
  await confirm.getByRole('button', { name: 'Kick' }).click();
  await p.locator('#notice', { hasText: /asked you to leave Bereavement/ }).waitFor();
  await p.locator('#view-rooms').waitFor();
  await panel.locator('.members li', { hasText: name }).waitFor({ state: 'detached' });
});

// On a hub of its own: a ban puts the banned peer's address on probation,
// and every page in these tests connects from 127.0.0.1.
test('a ban from the console, confirmed, with a reason for the audit log; the person is removed', async () => {
  await withOwnHub(async (own) => {
    const mod = await staffConsole('moderator', 'Lee', own);
    const panel = await watch(mod, 'Bereavement', 'bereavement');
    const p = await peer('Bereavement', own);
    const name = await myName(p);
    await panel.locator('.people summary').click();
    await panel.getByRole('button', { name: `Act on ${name}` }).click();
    const dialog = mod.getByRole('dialog', { name: `${name} in Bereavement` });
    await dialog.getByLabel('Ban for').selectOption({ label: '1 hour' });
    await dialog.getByLabel(/Ban reason/).fill('repeated harassment after warnings');
    await dialog.getByRole('button', { name: 'Ban from all rooms…' }).click();
    const confirm = mod.getByRole('dialog', { name: `Ban ${name} for 1 hour?` });
    await confirm.getByRole('button', { name: 'Ban' }).click();
    await p.locator('#notice', { hasText: /removed you from the rooms/ }).waitFor();
    await panel.locator('.members li', { hasText: name }).waitFor({ state: 'detached' });
    const res = await fetch(own.url + '/api/staff/audit?limit=5', { headers: { authorization: `Bearer ${own.token('moderator', 'Audit')}` } });
    const audit = await res.json();
    assert.ok(
      audit.entries.some((e) => e.action === 'ban' && e.reason === 'repeated harassment after warnings' && e.actor.name === 'Lee'),
      JSON.stringify(audit),
    );
  });
});

test('room settings from the console: slow mode, lock and an announcement, as the peers see them', async () => {
  const mod = await staffConsole('moderator', 'Ari');
  const panel = await watch(mod, 'Substance use & recovery', 'substance-use');
  const p = await peer('Substance use');
  await panel.locator('summary', { hasText: 'Room settings' }).click();
  await panel.getByLabel('Slow mode').selectOption({ label: '30 s' });
  await panel.getByRole('button', { name: 'Set slow mode' }).click();
  await panel.locator('.status', { hasText: 'slow mode 30 s' }).waitFor();
  await say(p, 'one day at a time');
  await write(p, 'and another thing');
  await p.locator('#composer-hint', { hasText: /Slow mode: you can send again in \d+ s/ }).waitFor();

  await panel.getByRole('button', { name: 'Lock room…' }).click();
  await mod.getByRole('dialog', { name: 'Lock Substance use & recovery?' }).getByRole('button', { name: 'Lock room' }).click();
  await panel.locator('.status', { hasText: 'locked' }).waitFor();
  const q = await peer();
  await q.locator('.room[data-room="substance-use"]', { hasText: 'not taking new members' }).waitFor({ timeout: 20000 });
  await panel.getByRole('button', { name: 'Unlock room' }).click();
  await panel.locator('.status', { hasText: 'locked' }).waitFor({ state: 'detached' });

  await panel.getByLabel('Announce to Substance use & recovery').fill('A gentle reminder: be kind to yourselves tonight.');
  await panel.getByRole('button', { name: 'Announce' }).click();
  const ann = p.locator('#messages li.msg.staff', { hasText: 'be kind to yourselves' });
  await ann.waitFor();
  assert.equal(await ann.locator('.role').textContent(), 'Moderator');
  assert.equal(await panel.getByLabel('Announce to Substance use & recovery').inputValue(), '', 'the box is cleared');
  await panel.getByLabel('Slow mode').selectOption({ label: 'Off' });
  await panel.getByRole('button', { name: 'Set slow mode' }).click();
  await panel.locator('.status', { hasText: 'slow mode' }).waitFor({ state: 'detached' });
});

test('a clinician opens a care room from the escalation and talks with the person there', async () => {
  const clin = await staffConsole('clinician', 'Dr Hale');
  const p = await peer('Anxiety');
  const name = await myName(p);
  await write(p, CRISIS);
  const esc = escalationOf(clin, name);
  await esc.getByRole('button', { name: `Open care room with ${name}` }).click();
  const panel = clin.locator('section.panel.care');
  await panel.locator('h3', { hasText: `Care room with ${name}` }).waitFor();
  assert.equal(await clin.evaluate(() => document.activeElement.tagName), 'H3', 'focus moves to the care room');
  await esc.getByRole('button', { name: `Show care room with ${name}` }).waitFor();

  await p.getByRole('button', { name: 'Join the private room' }).click();
  await p.getByRole('button', { name: /I've read these/ }).click();
  await p.locator('#chat-title', { hasText: 'Private room' }).waitFor();
  await panel.getByLabel(`Message to Care room with ${name}`).fill("I'm here with you. Are you safe right now?");
  await panel.getByLabel(`Message to Care room with ${name}`).press('Enter');
  await p.locator('#messages li.msg.staff', { hasText: 'Are you safe' }).waitFor();
  await say(p, 'not really, but talking helps');
  await panel.locator('li.msg', { hasText: 'talking helps' }).waitFor();
  await clin.mouse.move(0, 0);
  await clin.screenshot({ path: path.join(SHOTS, 'staff-care.png'), animations: 'disabled' });
});

test('after the hub restarts the console signs in again by itself, watches the same rooms and keeps the queue', async () => {
  await withOwnHub(async (own) => {
    const clin = await staffConsole('clinician', 'Dr Reed', own);
    const panel = await watch(clin, 'Anxiety', 'anxiety');
    const p = await peer('Anxiety', own);
    const name = await myName(p);
    await write(p, CRISIS);
    await escalationOf(clin, name).waitFor();

    await own.restart();
    await online(clin, 20000);
    await online(p, 20000);
    await p.waitForFunction(() => !document.querySelector('#send').disabled, null, { timeout: 10000 });
    assert.equal(await escalationOf(clin, name).count(), 1, 'the durable escalation is still in the queue, once');
    await say(p, 'back after the restart');
    await panel.locator('li.msg', { hasText: 'back after the restart' }).waitFor();
    assert.ok(await clin.locator('#view-console').isVisible(), 'still signed in');
  });
});

test('keyboard only: sign in, reach the escalation, acknowledge and resolve it', async () => {
  const page = await browser.newContext(LAPTOP).then((c) => c.newPage());
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  pages.push(page);
  await page.goto(hub.url + '/staff');
  assert.equal((await focused(page)).id, 'token', 'the token field has focus on arrival');
  await page.keyboard.type(hub.token('clinician', 'Dr Keys'));
  await page.keyboard.press('Enter');
  await online(page);
  assert.equal((await focused(page)).id, 'console-title', 'focus moves to the console');

  const p = await peer('Anxiety');
  const name = await myName(p);
  await write(p, CRISIS);
  await escalationOf(page, name).waitFor();
  const ack = await tabTo(page, (f) => f.label === `Acknowledge escalation for ${name}`, 40);
  assert.notEqual(ack.outline, 'none', 'focus is visible');
  await page.keyboard.press('Enter');
  await page.locator('li.esc[data-state="acknowledged"]', { hasText: name }).waitFor();
  assert.equal((await focused(page)).label, `Resolve escalation for ${name}`, 'focus moves on to Resolve');
  await page.keyboard.press('Enter');
  await page.getByRole('dialog', { name: 'Resolve escalation' }).waitFor();
  assert.equal((await focused(page)).id, 'resolve-note');
  assert.deepEqual(serious(await axe(page)), [], 'no serious or critical axe violations with the dialog open');
  await page.keyboard.type('Spoke with them in a care room.');
  await page.keyboard.press('Tab');
  assert.equal((await focused(page)).id, 'resolve-ok');
  await page.keyboard.press('Enter');
  await escalationOf(page, name).waitFor({ state: 'detached' });
});

test('a new imminent escalation raises the visible alert, which leads to it (on a laptop whose clock is 10 minutes fast)', async () => {
  // The countdown follows the server's clock, not the laptop's.
  const clin = await staffConsole('clinician', 'Dr Birch', hub, { clockAheadMs: 10 * 60 * 1000 });
  assert.ok(await clin.locator('#alert').isHidden());
  const p = await peer('Anxiety');
  const name = await myName(p);
  await write(p, CRISIS);
  const alert = clin.getByRole('alert').filter({ hasText: 'Imminent risk' });
  await alert.waitFor();
  assert.match(await alert.textContent(), new RegExp(`Imminent risk: ${name} in Anxiety\\. Acknowledge within [01]:\\d\\d\\.`));
  assert.match(await clin.title(), /^\(1\) Hearth/, 'the tab title counts open escalations');
  await alert.getByRole('button', { name: 'Show escalation' }).click();
  assert.equal(await clin.evaluate(() => document.activeElement.getAttribute('aria-label')), `Acknowledge escalation for ${name}`);
  await clin.keyboard.press('Enter');
  await alert.waitFor({ state: 'hidden' });
  assert.equal(await clin.title(), 'Hearth · staff console');

  // A high escalation is announced politely, without the alert.
  const q = await peer('Anxiety');
  const nameQ = await myName(q);
  await say(q, HIGH);
  await escalationOf(clin, nameQ).waitFor();
  await clin.locator('#announcer', { hasText: `New High escalation: ${nameQ} in Anxiety.` }).waitFor({ state: 'attached' });
  assert.ok(await clin.locator('#alert').isHidden());
});

test('the console passes axe-core with an escalation showing (and makes the screenshot)', async () => {
  const clin = await staffConsole('clinician', 'Dr Rowan');
  const anxiety = await watch(clin, 'Anxiety', 'anxiety');
  await watch(clin, 'Bereavement', 'bereavement');
  const a = await peer('Anxiety');
  const b = await peer('Anxiety');
  const c = await peer('Bereavement');
  const d = await peer('Bereavement');
  await say(a, 'Has anyone tried box breathing?');
  await say(b, 'Yes, it helps me before bed. In for four, hold for four.');
  await say(a, HIGH);
  await say(c, 'It has been a year since my dad died and the house is still so quiet.');
  await say(d, 'The first year is the hardest. I still talk to my mum sometimes.');
  await write(c, CRISIS);
  // (Messages held in earlier tests still wait in the room too.)
  await clin.locator('section.panel[data-room="bereavement"] li.msg.held', { hasText: await myName(c) }).waitFor();
  await anxiety.locator('li.msg.flagged:not(.held)', { hasText: 'kill myself' }).waitFor();
  await clin.getByRole('alert').filter({ hasText: 'Imminent risk' }).waitFor();
  await escalationOf(clin, await myName(a)).waitFor();

  assert.deepEqual(serious(await axe(clin)), [], 'no serious or critical axe violations in the console');
  await clin.mouse.move(0, 0);
  await clin.screenshot({ path: path.join(SHOTS, 'staff-console.png'), animations: 'disabled' });
  await clin.emulateMedia({ colorScheme: 'dark' });
  assert.deepEqual(serious(await axe(clin)), [], 'no serious or critical axe violations in the dark theme');
  assert.notEqual(await clin.evaluate(() => getComputedStyle(document.querySelector('#alert')).animationName), 'none');
  await clin.emulateMedia({ colorScheme: 'dark', reducedMotion: 'reduce' });
  assert.equal(await clin.evaluate(() => getComputedStyle(document.querySelector('#alert')).animationName), 'none', 'no pulse for reduced motion');

  // The sign-in page too.
  const fresh = await browser.newContext(LAPTOP).then((x) => x.newPage());
  await fresh.goto(hub.url + '/staff');
  assert.deepEqual(serious(await axe(fresh)), [], 'no serious or critical axe violations on sign-in');
  const h = (await fresh.request.get(hub.url + '/staff')).headers();
  assert.match(h['content-security-policy'], /script-src 'self'/);
  assert.doesNotMatch(h['content-security-policy'], /unsafe-inline/);
  assert.equal(await fresh.evaluate(() => localStorage.length + sessionStorage.length), 0);
  assert.equal(await clin.evaluate(() => localStorage.length + sessionStorage.length), 0, 'the token is kept in memory only');
  await fresh.context().close();
});

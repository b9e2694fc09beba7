// Headless Chromium from Debian's package, driven by playwright-core (no
// browser download), plus helpers that act like a person on the peer page.

import { chromium } from 'playwright-core';
import { createRequire } from 'node:module';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Hub } from './hub.js';

export const CHROMIUM = process.env.HEARTH_CHROMIUM || '/usr/bin/chromium';

// A phone: the page is made for these first.
export const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

/** Where screenshots go: docs/screenshots/ when HEARTH_SCREENSHOTS=1, else a temporary directory. */
export function screenshotsDir() {
  const dir =
    process.env.HEARTH_SCREENSHOTS === '1'
      ? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'docs', 'screenshots')
      : mkdtempSync(path.join(tmpdir(), 'hearth-shots-'));
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A hub and a browser, started side by side. */
export async function startHubAndBrowser() {
  const [h, b] = await Promise.allSettled([Hub.start(), launch()]);
  if (h.status === 'rejected' || b.status === 'rejected') {
    await Promise.allSettled([h.value?.close(), b.value?.close()]);
    throw h.reason || b.reason;
  }
  return { hub: h.value, browser: b.value };
}

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
}

// A laptop: where a moderator watches four rooms and a clinician waits.
export const LAPTOP = { viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 };

/** A new page in its own context (own storage), collecting errors in `page.problems`. */
async function newPage(browser, opts) {
  const context = await browser.newContext(opts);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED|status of 503/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });
  page.problems = problems;
  return page;
}

/** A new person: their own context (own sessionStorage), on the peer page. */
export async function openPeer(browser, hub, { locale = 'en-GB', ...opts } = {}) {
  const page = await newPage(browser, { ...PHONE, locale, ...opts });
  await page.goto(hub.url + '/');
  await online(page);
  return page;
}

/**
 * The staff console at /staff, signed in with a fresh token for `role`;
 * `clockAheadMs` sets the browser's clock wrong by that much.
 */
export async function openConsole(browser, hub, role, name, { clockAheadMs = 0 } = {}) {
  const page = await newPage(browser, { ...LAPTOP, locale: 'en-GB' });
  if (clockAheadMs) await page.clock.setSystemTime(Date.now() + clockAheadMs);
  await page.goto(hub.url + '/staff');
  await page.getByLabel('Staff token').fill(hub.token(role, name));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#view-console').waitFor();
  await online(page);
  return page;
}

export async function online(page, timeout = 15000) {
  await page.waitForFunction(() => document.documentElement.dataset.conn === 'online', null, { timeout });
}

/** The pseudonym the page shows for this person. */
export async function myName(page) {
  const line = await page.locator('#me-line').textContent();
  return /“(.+)”/.exec(line)[1];
}

/** Chooses a room, accepts its guidelines and waits for the chat. */
export async function joinRoom(page, title) {
  await page.getByRole('button', { name: new RegExp(`^${title}`) }).click();
  await page.getByRole('button', { name: /I've read these/ }).click();
  await page.locator('#view-chat').waitFor();
  await page.waitForFunction(() => !document.querySelector('#send').disabled);
}

export async function say(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
  await page.locator('#messages li.msg.own', { hasText: text }).first().waitFor();
}

/** Texts of the messages on screen, in order. */
export function texts(page) {
  return page.locator('#messages li.msg .text').allTextContents();
}

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** axe-core on the page as it is now, WCAG 2.x A and AA rules. */
export async function axe(page) {
  // Through evaluate, which the page's CSP does not govern (an injected
  // <script> would rightly be refused: the page allows no inline script).
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE);
  // Let arrival animations finish: a message fading in is not yet at its
  // final contrast.
  await page.evaluate(() => Promise.all(document.getAnimations().map((a) => a.finished)));
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] } }),
  );
  return result.violations;
}

export function serious(violations) {
  return violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ')}`);
}

/**
 * A staff member's WebSocket, opened from a Chromium page on the hub's
 * origin (Node 20 has no WebSocket client without a flag, and this keeps
 * the test dependencies to playwright-core and axe-core).
 */
export async function openStaff(browser, hub, token) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(hub.url + '/healthz');
  const welcome = await page.evaluate(
    (token) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${location.host}/ws`);
        window.frames_ = [];
        window.ws_ = ws;
        window.ref_ = 100;
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          window.frames_.push(f);
          if (f.type === 'welcome') resolve(f);
          if (f.type === 'error' && f.ref === 1) reject(new Error(f.message));
        };
        ws.onerror = () => reject(new Error('staff socket failed'));
        ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', ref: 1, auth: token }));
      }),
    token,
  );
  const staff = {
    page,
    context,
    welcome,
    /** Sends a frame and resolves with its reply (`ok` or `error`). */
    request: (frame) =>
      page.evaluate(
        (frame) =>
          new Promise((resolve) => {
            const ref = ++window.ref_;
            const seen = window.frames_.length;
            window.ws_.send(JSON.stringify({ ...frame, ref }));
            const poll = setInterval(() => {
              const reply = window.frames_.slice(seen).find((f) => f.ref === ref);
              if (reply) {
                clearInterval(poll);
                resolve(reply);
              }
            }, 20);
          }),
        frame,
      ),
    /** Waits for a frame matching `pred` (a function source over `f`). */
    waitFor: async (pred, timeout = 10000) => {
      const handle = await page.waitForFunction(
        (src) => window.frames_.find(new Function('f', `return (${src})`)),
        pred,
        { timeout, polling: 50 },
      );
      return handle.jsonValue();
    },
  };
  return staff;
}

/** What has keyboard focus: id, data-room, aria-label, text and outline style. */
export function focused(page) {
  return page.evaluate(() => {
    const e = document.activeElement;
    return {
      id: e.id,
      room: e.dataset?.room || '',
      label: e.getAttribute('aria-label') || '',
      text: (e.textContent || '').trim().slice(0, 60),
      outline: getComputedStyle(e).outlineStyle,
    };
  });
}

/** Presses Tab until `pred(focused)` holds (at most `max` times). */
export async function tabTo(page, pred, max = 25) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    const f = await focused(page);
    if (pred(f)) return f;
  }
  throw new Error('could not reach the control with Tab');
}

// Small helpers shared by the peer page (app.js) and the staff console
// (staff.js): only what is truly the same on both. Every piece of text
// from the server goes into the page with textContent, never as HTML.

export const $ = (id) => document.getElementById(id);

/** An element with properties (`class`, `text`, `aria-*`, `data-*`, or any DOM property) and children. */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('aria-') || k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

/** Says `text` to screen readers through the live region `#announcer` (the last five stay). */
export function announce(text) {
  const a = $('announcer');
  a.append(el('p', { text }));
  while (a.childElementCount > 5) a.firstElementChild.remove();
}

export function timeOf(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function roleLabel(role) {
  return role === 'clinician' ? 'Clinician' : role === 'moderator' ? 'Moderator' : '';
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;

/**
 * The wait before reconnect attempt number `attempt` (0-based): exponential
 * with jitter, each wait between half and all of the step, so a restarted
 * server is not hit by every page at once; the first after a restart (1012)
 * is short.
 */
function reconnectDelay(attempt, restarting = false) {
  const step = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
  return (restarting && attempt === 0 ? 250 : step / 2) + Math.random() * (step / 2);
}

/** `ws:` or `wss:` URL of this origin's `/ws`. */
function socketUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws`;
}

/**
 * (Re)connects `link` (an object with `ws`, `pending`, `nextRef`,
 * `attempt` and `reconnectTimer`) to this origin's `/ws`: sends `hello()`
 * once open, hands each JSON object with a string `type` to `onFrame`
 * (anything else is ignored), and when the current socket closes, forgets
 * it and what was pending and calls `onClose(ev)`. Returns false when no
 * socket could be made.
 */
export function connectLink(link, { hello, onFrame, onClose }) {
  clearTimeout(link.reconnectTimer);
  link.reconnectTimer = null;
  let ws;
  try {
    ws = new WebSocket(socketUrl());
  } catch {
    return false;
  }
  link.ws = ws;
  ws.addEventListener('open', () => sendFrame(link, hello(), { kind: 'hello' }));
  ws.addEventListener('message', (ev) => {
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (f && typeof f.type === 'string') onFrame(f);
  });
  ws.addEventListener('close', (ev) => {
    if (link.ws !== ws) return;
    link.ws = null;
    link.pending.clear();
    onClose(ev);
  });
  return true;
}

/** Calls `connect` again after the backoff for `link.attempt`, which counts up. */
export function retryLater(link, connect, restarting = false) {
  const wait = reconnectDelay(link.attempt, restarting);
  link.attempt++;
  clearTimeout(link.reconnectTimer);
  link.reconnectTimer = setTimeout(connect, wait);
}

/**
 * Sends `frame` on `link.ws` with the next `ref` (from `link.nextRef`),
 * remembering `pending` under it in `link.pending` for the reply. Returns
 * the ref, or null when the socket is not open.
 */
export function sendFrame(link, frame, pending) {
  if (!link.ws || link.ws.readyState !== WebSocket.OPEN) return null;
  const ref = link.nextRef++;
  if (pending) link.pending.set(ref, pending);
  link.ws.send(JSON.stringify({ ...frame, ref }));
  return ref;
}

let noticeTimer = null;

/** Shows `text` in `#notice`; a gentle one (information, not an error) goes by itself. */
export function showNotice(text, gentle = false) {
  $('notice-text').textContent = text;
  $('notice').hidden = false;
  $('notice').dataset.kind = gentle ? 'info' : 'error';
  clearTimeout(noticeTimer);
  if (gentle) noticeTimer = setTimeout(hideNotice, 6000);
}

export function hideNotice() {
  $('notice').hidden = true;
}
